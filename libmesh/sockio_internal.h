/* libmesh socket I/O internals: reading a socket in larger chunks than libevent does. */
#ifndef MESH_SOCKIO_INTERNAL_H
#define MESH_SOCKIO_INTERNAL_H

#include <stddef.h>

#include <event2/util.h>

struct evbuffer;

/* libevent 2.1 reads at most 4 KiB per readiness event (EVBUFFER_MAX_READ in
 * buffer.c), so a 16 KiB TLS record cost four loop turns. After libevent's
 * read, read on from fd into in (a socket bufferevent's input), up to room
 * bytes, until the socket has nothing more. Returns 0, 1 at EOF (what came
 * before it is in in), or -1 with errno set on a socket error. */
int mesh__sock_read_more(evutil_socket_t fd, struct evbuffer *in, size_t room);

#endif

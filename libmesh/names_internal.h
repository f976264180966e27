/* libmesh names internals: RFC 1123 checks on counted strings. */
#ifndef MESH_NAMES_INTERNAL_H
#define MESH_NAMES_INTERNAL_H

#include <stddef.h>

/* A label: [a-z0-9-], 1..63, no '-' at either end (a namespace, a Service). */
int mesh__dns_label_ok(const char *s, size_t n);
/* A name: labels joined by '.', 1..253 (a ServiceProfile's FQDN, a trust domain). */
int mesh__dns_name_ok(const char *s, size_t n);

#endif

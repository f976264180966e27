/* libmesh error codes. Codes are frozen: never renumber, only append. */
#ifndef MESH_ERROR_H
#define MESH_ERROR_H

#include <mesh/common.h>

MESH_BEGIN_DECLS

/* Every function that can fail returns 0 or one of these (negative) codes. */
enum {
  MESH_OK = 0,
  MESH_ERR_NOMEM = -1,       /* an allocation failed */
  MESH_ERR_INVALID = -2,     /* an argument is invalid (NULL, out of range) */
  MESH_ERR_PARSE = -3,       /* input is malformed; a diagnostic says where */
  MESH_ERR_NOT_FOUND = -4,   /* the named thing does not exist */
  MESH_ERR_RANGE = -5,       /* a number is out of range or overflows */
  MESH_ERR_IO = -6,          /* a system call failed (see errno) */
  MESH_ERR_LIMIT = -7,       /* a configured limit was exceeded */
  MESH_ERR_UNSUPPORTED = -8, /* valid, but not supported by libmesh */
  MESH_ERR_TLS = -9,         /* a TLS operation failed */
  MESH_ERR_IDENTITY = -10,   /* a peer's identity is missing or not the expected one */
  MESH_ERR_EXPIRED = -11,    /* a certificate or token is expired or not yet valid */
  MESH_ERR_DENIED = -12,     /* refused by policy or by a credential check */
  MESH_ERR_TIMEOUT = -13,    /* an operation did not finish in time */
  MESH_ERR_CONNECT = -14,    /* a connection could not be made */
  MESH_ERR_CLOSED = -15,     /* the peer or the object was closed */
  MESH_ERR_AGAIN = -16,      /* try again later (would block, no budget) */
  MESH_ERR_UNAVAILABLE = -17 /* a needed service or resource is not available */
};

/* A static, human-readable description of an error code. Never NULL;
 * unknown codes give "unknown error". Thread-safe. */
MESH_API const char *mesh_strerror(int err);

/* The runtime version, MESH_VERSION_NUM of the library actually loaded. */
MESH_API uint32_t mesh_version_num(void);
MESH_API const char *mesh_version_string(void);

MESH_END_DECLS

#endif

/* libmesh error strings and the runtime version. */
#include <mesh/error.h>
#include <mesh/version.h>

const char *mesh_strerror(int err) {
  switch (err) {
  case MESH_OK: return "success";
  case MESH_ERR_NOMEM: return "out of memory";
  case MESH_ERR_INVALID: return "invalid argument";
  case MESH_ERR_PARSE: return "malformed input";
  case MESH_ERR_NOT_FOUND: return "not found";
  case MESH_ERR_RANGE: return "value out of range";
  case MESH_ERR_IO: return "input/output error";
  case MESH_ERR_LIMIT: return "limit exceeded";
  case MESH_ERR_UNSUPPORTED: return "not supported";
  case MESH_ERR_TLS: return "TLS error";
  case MESH_ERR_IDENTITY: return "peer identity mismatch";
  case MESH_ERR_EXPIRED: return "expired or not yet valid";
  case MESH_ERR_DENIED: return "permission denied";
  case MESH_ERR_TIMEOUT: return "timed out";
  case MESH_ERR_CONNECT: return "connection failed";
  case MESH_ERR_CLOSED: return "closed";
  case MESH_ERR_AGAIN: return "try again";
  case MESH_ERR_UNAVAILABLE: return "unavailable";
  default: return "unknown error";
  }
}

uint32_t mesh_version_num(void) { return MESH_VERSION_NUM; }
const char *mesh_version_string(void) { return MESH_VERSION_STRING; }

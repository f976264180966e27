/* Fuzz target: meshd's untrusted inputs: the transport header and a peer's l5d-dst-canonical (from the network) and the endpoints file. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <mesh/mesh.h>

#include "proxy_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static mesh_ctx *ctx;
  if (!ctx && mesh_ctx_new(&ctx)) return 0;
  size_t used = 0;
  uint16_t port = 0;
  int h2 = 0;
  int rc = mesh__proxy_header_parse(data, size, &used, &port, &h2);
  if (rc == 0 && (used > size || used < 2 || port == 0)) __builtin_trap();
  /* The input as a header value (up to its first NUL, as HTTP/2 could not carry one). */
  char value[8192], dst[300];
  size_t n = size < sizeof value - 1 ? size : sizeof value - 1;
  memcpy(value, data, n);
  value[n] = 0;
  if (mesh__proxy_inbound_dst(value, NULL, NULL, dst, sizeof dst) == 0 &&
      (strlen(dst) > PROXY_INBOUND_DST_MAX || !strchr(dst, ':')))
    __builtin_trap(); /* a destination is bounded and names its port */
  mesh_diags *d = NULL;
  mesh_proxy_endpoints *e = NULL;
  if (mesh_diags_new(ctx, &d)) return 0;
  if (mesh_proxy_endpoints_parse(ctx, (const char *)data, size, "fuzz", d, &e) == 0) {
    for (size_t i = 0; i < mesh_proxy_endpoints_service_count(e); i++) {
      size_t j;
      if (mesh_proxy_endpoints_find(e, mesh_proxy_endpoints_service(e, i), &j) || j != i)
        __builtin_trap(); /* every key finds itself */
    }
    mesh_proxy_endpoints_unref(e);
  }
  mesh_diags_free(d);
  return 0;
}

/* Fuzz target: meshd's untrusted inputs: the transport header (from the network) and the endpoints file. */
#include <stddef.h>
#include <stdint.h>

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

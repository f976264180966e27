/* Fuzz target: any bytes as a manifest file (YAML or JSON, every kind). */
#include <mesh/mesh.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mesh_ctx *ctx;
  mesh_diags *d;
  mesh_manifest *m;
  if (mesh_ctx_new(&ctx) < 0) return 0;
  if (mesh_diags_new(ctx, &d) == 0) {
    if (mesh_manifest_load_buffer(ctx, "fuzz.yaml", (const char *)data, size, d, &m) == 0) {
      for (size_t i = 0; i < mesh_manifest_count(m); i++) {
        (void)mesh_manifest_name(m, i);
        (void)mesh_manifest_kind(m, i);
      }
      mesh_manifest_free(m);
    }
    for (size_t i = 0; i < mesh_diags_count(d); i++) (void)mesh_diags_text(d, i);
    mesh_diags_free(d);
  }
  mesh_ctx_free(ctx);
  return 0;
}

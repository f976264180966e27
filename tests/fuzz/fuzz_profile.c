/* Fuzz target: any bytes as a ServiceProfile, then matched and classified. */
#include <string.h>

#include <mesh/mesh.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *const paths[] = {"/", "/api/v1/exams/1/questions", "/health", "",
                                      "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t/u/v/w/x/y/z"};
  static const char *const methods[] = {"GET", "POST", "get", ""};
  mesh_ctx *ctx;
  mesh_profile *p;
  if (mesh_ctx_new(&ctx) < 0) return 0;
  if (mesh_profile_parse(ctx, "fuzz.yaml", (const char *)data, size, NULL, &p) == 0) {
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++)
      for (size_t j = 0; j < sizeof methods / sizeof methods[0]; j++) {
        const mesh_route *r = mesh_profile_match(p, methods[j], paths[i], strlen(paths[i]));
        for (uint32_t status = 100; status < 600; status += 37) (void)mesh_route_classify(r, status, -1);
        (void)mesh_route_classify(r, 200, 14);
      }
    mesh_profile_unref(p);
  }
  mesh_ctx_free(ctx);
  return 0;
}

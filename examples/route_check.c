/* route-check: which ServiceProfile route would a request take, and is a status a failure?
 *
 *   route-check PROFILE.yaml METHOD PATH [STATUS]
 *
 * The smallest proxyless use of libmesh: load a profile, match, classify. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mesh/mesh.h>

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s PROFILE.yaml METHOD PATH [STATUS]\n", argv[0]);
    return 2;
  }
  mesh_ctx *ctx = NULL;
  mesh_diags *diags = NULL;
  mesh_manifest *m = NULL;
  int rc = mesh_ctx_new(&ctx);
  if (rc == 0) rc = mesh_diags_new(ctx, &diags);
  if (rc == 0) rc = mesh_manifest_load_file(ctx, argv[1], diags, &m);
  for (size_t i = 0; i < mesh_diags_count(diags); i++) fprintf(stderr, "%s\n", mesh_diags_text(diags, i));
  if (rc < 0) {
    fprintf(stderr, "%s: %s\n", argv[1], mesh_strerror(rc));
    mesh_diags_free(diags);
    mesh_ctx_free(ctx);
    return 1;
  }
  int status = 1;
  for (size_t i = 0; i < mesh_manifest_count(m); i++) {
    const mesh_profile *p = mesh_manifest_profile(m, i);
    if (!p) continue;
    const mesh_route *r = mesh_profile_match(p, argv[2], argv[3], strlen(argv[3]));
    printf("%s/%s: %s %s -> %s", mesh_profile_namespace(p), mesh_profile_name(p), argv[2], argv[3],
           r ? mesh_route_name(r) : "[DEFAULT]");
    if (r) printf(" (timeout %llums%s)", (unsigned long long)mesh_route_timeout_ms(r),
                  mesh_route_is_retryable(r) ? ", retryable" : "");
    if (argc > 4) {
      unsigned code = (unsigned)strtoul(argv[4], NULL, 10);
      printf("; %u is a %s", code, mesh_route_classify(r, code, -1) ? "failure" : "success");
    }
    printf("\n");
    status = 0;
  }
  if (status) fprintf(stderr, "%s: no ServiceProfile found\n", argv[1]);
  mesh_manifest_free(m);
  mesh_diags_free(diags);
  mesh_ctx_free(ctx);
  return status;
}

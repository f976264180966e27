/* Fuzz target: any bytes as a control-plane message: a Get update applied to an endpoint set, or a GetProfile answer compiled into the proxy's profile and matched. */
#include <string.h>

#include <mesh/mesh.h>

#include "discovery_internal.h"
#include "proxy_profiles_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *const paths[] = {"/", "/items/1", "/flaky/30", "", "/a/b/c/d/e/f/g/h"};
  static const char *const methods[] = {"GET", "POST", ""};
  mesh_ctx *ctx;
  if (size == 0 || mesh_ctx_new(&ctx) < 0) return 0;
  /* The first byte picks the stream; the rest is the line. */
  const char *line = (const char *)data + 1;
  size_t len = size - 1;
  if (data[0] & 1) {
    disc_set *s;
    if (mesh__disc_set_new(ctx, &s) == 0) {
      (void)mesh__disc_set_apply(s, line, len, data[0] & 2, NULL);
      (void)mesh__disc_set_apply(s, line, len, 0, NULL); /* the same again, as a diff */
      mesh__disc_set_unref(s);
    }
  } else {
    mesh_profile *p = NULL;
    proxy_profiles *t = NULL;
    char why[256];
    if (mesh__disc_profile_parse(ctx, line, len, &p, why, sizeof why) == 0 && p &&
        mesh__proxy_profiles_one(ctx, p, &t) == 0) {
      for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++)
        for (size_t j = 0; j < sizeof methods / sizeof methods[0]; j++) {
          const mesh_route *r = mesh_profile_match(p, methods[j], paths[i], strlen(paths[i]));
          (void)mesh__proxy_dst_budget(&t->d[0], r);
          for (uint32_t status = 100; status < 600; status += 37) (void)mesh_route_classify(r, status, -1);
        }
      const mesh_split *sp = mesh_profile_dst_overrides(p);
      for (uint32_t x = 0; sp && x < 4; x++) (void)mesh_split_pick(sp, x * 0x9e3779b9u);
      mesh__proxy_profiles_unref(t);
    }
    mesh_profile_unref(p);
  }
  mesh_ctx_free(ctx);
  return 0;
}

/* Fuzz target: an authority (the first line, as a Get or GetProfile path) and manifests (the rest) through the store; the rest also as a WatchWorkload message. */
#include <string.h>

#include <mesh/mesh.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *text = (const char *)data;
  const char *nl = memchr(text, '\n', size);
  size_t alen = nl ? (size_t)(nl - text) : size;
  char authority[1024];
  if (alen >= sizeof authority) alen = sizeof authority - 1;
  memcpy(authority, text, alen);
  authority[alen] = '\0';
  const char *rest = nl ? nl + 1 : text + size;
  size_t rlen = (size_t)(text + size - rest);
  mesh_ctx *ctx;
  if (mesh_ctx_new(&ctx) < 0) return 0;
  mesh_snapshot_builder *b = NULL;
  mesh_snapshot *s = NULL;
  mesh_policy *pol = NULL;
  /* What a proxy reads from mesh-destination's policy stream. */
  if (mesh_policy_compile_message(ctx, rest, rlen, NULL, NULL, &pol) == 0) mesh_policy_unref(pol);
  int rc = mesh_snapshot_builder_new(ctx, NULL, &b);
  if (rc == 0) rc = mesh_snapshot_builder_add(b, "fuzz.yaml", rest, rlen, NULL);
  if (rc == 0) rc = mesh_snapshot_builder_finish(b, NULL, &s); /* consumes b */
  else mesh_snapshot_builder_free(b);
  if (rc == 0) {
    mesh_resolution *r = NULL, *empty = NULL;
    char *out = NULL;
    if (mesh_snapshot_resolve(s, authority, "shop", &r) == 0) {
      for (size_t i = 0; i < mesh_resolution_count(r); i++) (void)mesh_resolution_addr(r, i);
      if (mesh_resolution_json_first(r, &out) == 0) mesh_free_string(ctx, out);
      if (mesh_snapshot_resolve(s, "nope:80", NULL, &empty) == 0 &&
          mesh_resolution_json_diff(empty, r, &out) == 0)
        mesh_free_string(ctx, out);
    }
    if (mesh_snapshot_profile_json(s, authority, "shop", &out) == 0) mesh_free_string(ctx, out);
    for (size_t i = 0; i < mesh_snapshot_count(s); i++)
      if (mesh_snapshot_document_json(s, i, &out) == 0) mesh_free_string(ctx, out);
    /* Every Workload's policy message, fed back as the proxy would. */
    for (size_t i = 0; i < mesh_snapshot_count(s); i++) {
      if (mesh_snapshot_kind(s, i) != MESH_KIND_WORKLOAD ||
          mesh_snapshot_policy_json(s, mesh_snapshot_namespace(s, i), mesh_snapshot_name(s, i),
                                    &out) < 0)
        continue;
      if (mesh_policy_compile_message(ctx, out, strlen(out), NULL, NULL, &pol) == 0)
        mesh_policy_unref(pol);
      mesh_free_string(ctx, out);
    }
    mesh_resolution_free(r);
    mesh_resolution_free(empty);
    mesh_snapshot_unref(s);
  }
  mesh_ctx_free(ctx);
  return 0;
}

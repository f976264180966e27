/* Fuzz target: Identity.Certify requests as the CA reads them, and answers as a workload reads them. */
#include <stdlib.h>
#include <string.h>

#include <mesh/mesh.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NOW 1700000000ull

/* A fixed counter as the random source: the same issuer and token key on
 * every run, so that inputs found once reach as deep again. */
static int fixed_random(void *ud, uint8_t *buf, size_t len) {
  uint64_t *state = ud;
  for (size_t i = 0; i < len; i++) {
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    buf[i] = (uint8_t)(*state >> 56);
  }
  return 0;
}

static mesh_ctx *ctx;
static mesh_ca *anchor, *issuer;
static mesh_key *token_key;

static void setup(void) {
  static uint64_t state = 1;
  if (mesh_ctx_new(&ctx) < 0 || mesh_ctx_set_random(ctx, fixed_random, &state) < 0 ||
      mesh_ca_init(ctx, NULL, NULL, NOW, 0, &anchor, &issuer) < 0 ||
      mesh_key_generate(ctx, &token_key) < 0)
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!ctx) setup();
  char *resp = NULL;
  const char *code = NULL, *why = NULL;
  int rc = mesh_certify_handle(issuer, token_key, "identity.linkerd.cluster.local", NULL, NULL,
                               (const char *)data, size, NOW, &resp, &code, &why);
  /* Every refusal has a class; every success an answer that reads back. */
  if (rc < 0 && !code) __builtin_trap();
  if (rc == 0) {
    mesh_certs *chain = NULL;
    if (!resp || mesh_certify_response_parse(ctx, resp, strlen(resp), &chain, NULL, &why) != 0)
      __builtin_trap();
    mesh_certs_free(chain);
    mesh_free_string(ctx, resp);
  }
  mesh_certs *chain = NULL;
  uint64_t until = 0;
  why = NULL;
  rc = mesh_certify_response_parse(ctx, (const char *)data, size, &chain, &until, &why);
  if (rc == MESH_ERR_PARSE && !why) __builtin_trap();
  if (rc == 0 && (!chain || mesh_certs_count(chain) < 1)) __builtin_trap();
  mesh_certs_free(chain);
  return 0;
}

/* Test helper for identity_openssl.sh: makes (and checks) what libmesh's identity module produces, as files. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mesh/mesh.h>

static const char *dir;

static void die(const char *what, int rc, const char *why) {
  fprintf(stderr, "identity_tool: %s: %s%s%s\n", what, mesh_strerror(rc), why ? ": " : "",
          why ? why : "");
  exit(1);
}

static void put(const char *name, const char *text) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
    fprintf(stderr, "identity_tool: %s: %s\n", path, strerror(errno));
    exit(1);
  }
}

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "identity_tool: %s: %s\n", path, strerror(errno));
    exit(1);
  }
  static char buf[1 << 20];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  *len = n;
  char *copy = malloc(n + 1);
  if (!copy) exit(1);
  memcpy(copy, buf, n + 1);
  return copy;
}

/* A leaf for production/frontend from issuer; writes <prefix>-leaf.pem,
 * <prefix>-chain.pem (the issuer chain) and <prefix>-leaf.key. */
static void issue(mesh_ctx *ctx, const mesh_ca *issuer, uint64_t now, const char *prefix,
                  int write_csr) {
  mesh_identity *id;
  mesh_key *key;
  mesh_csr *csr;
  mesh_certs *leaf;
  const char *why = NULL;
  int rc = mesh_identity_parse(ctx, "frontend.production.serviceaccount.identity.linkerd.cluster.local",
                               NULL, &why, &id);
  if (rc) die("identity", rc, why);
  if ((rc = mesh_key_generate(ctx, &key))) die("key", rc, NULL);
  if ((rc = mesh_csr_new(key, id, &csr))) die("csr", rc, NULL);
  if ((rc = mesh_ca_issue(issuer, csr, id, now, &why, &leaf))) die("issue", rc, why);
  char name[256];
  snprintf(name, sizeof name, "%s-leaf.pem", prefix);
  put(name, mesh_certs_pem(leaf, 0));
  snprintf(name, sizeof name, "%s-chain.pem", prefix);
  put(name, mesh_certs_count(leaf) > 1 ? mesh_certs_bundle_pem(leaf, 1) : "");
  snprintf(name, sizeof name, "%s-leaf.key", prefix);
  put(name, mesh_key_pem(key));
  if (write_csr) {
    snprintf(name, sizeof name, "%s.csr", prefix);
    put(name, mesh_csr_pem(csr));
  }
  mesh_certs_free(leaf);
  mesh_csr_free(csr);
  mesh_key_free(key);
  mesh_identity_free(id);
}

/* init DIR NOW: two trust domains' worth of anchors, issuers and leaves, and a token. */
static int cmd_init(mesh_ctx *ctx, uint64_t now) {
  const char *names[] = {"main", "other"};
  for (int i = 0; i < 2; i++) {
    mesh_ca *anchor, *issuer;
    int rc = mesh_ca_init(ctx, NULL, NULL, now, 0, &anchor, &issuer);
    if (rc) die("ca init", rc, NULL);
    char name[64];
    snprintf(name, sizeof name, "%s-anchor.pem", names[i]);
    put(name, mesh_certs_pem(mesh_ca_certs(anchor), 0));
    snprintf(name, sizeof name, "%s-issuer.pem", names[i]);
    put(name, mesh_certs_bundle_pem(mesh_ca_certs(issuer), 0));
    snprintf(name, sizeof name, "%s-issuer.key", names[i]);
    put(name, mesh_key_pem(mesh_ca_key(issuer)));
    issue(ctx, issuer, now, names[i], i == 0);
    mesh_ca_free(issuer);
    mesh_ca_free(anchor);
  }
  mesh_key *tk;
  int rc = mesh_key_generate(ctx, &tk);
  if (rc) die("token key", rc, NULL);
  char tok[MESH_TOKEN_MAX_LEN + 1];
  rc = mesh_token_mint(tk, "production", "frontend", "identity.linkerd.cluster.local", now,
                       now + 600, tok, sizeof tok, NULL);
  if (rc) die("token", rc, NULL);
  put("token.jwt", tok);
  put("token.pub.pem", mesh_key_public_pem(tk));
  put("token.key", mesh_key_pem(tk));
  mesh_key_free(tk);
  return 0;
}

/* issue DIR NOW CHAIN KEY PREFIX: a leaf from an issuer made elsewhere. */
static int cmd_issue(mesh_ctx *ctx, uint64_t now, const char *chain_path, const char *key_path,
                     const char *prefix) {
  size_t cl, kl;
  char *chain = slurp(chain_path, &cl), *key = slurp(key_path, &kl);
  mesh_ca *ca;
  const char *why = NULL;
  int rc = mesh_ca_new(ctx, chain, cl, key, kl, &why, &ca);
  if (rc) die("load issuer", rc, why);
  issue(ctx, ca, now, prefix, 0);
  mesh_ca_free(ca);
  free(chain);
  free(key);
  return 0;
}

/* verify NOW ANCHORS CHAIN: verify a chain made elsewhere; print the peer's identity. */
static int cmd_verify(mesh_ctx *ctx, uint64_t now, const char *anchors_path, const char *chain_path) {
  size_t al, cl;
  char *a = slurp(anchors_path, &al), *c = slurp(chain_path, &cl);
  mesh_certs *anchors, *chain;
  mesh_identity *id;
  const char *why = NULL;
  int rc = mesh_certs_parse(ctx, a, al, &why, &anchors);
  if (rc) die("anchors", rc, why);
  if ((rc = mesh_certs_parse(ctx, c, cl, &why, &chain))) die("chain", rc, why);
  if ((rc = mesh_certs_verify_peer(chain, anchors, now, NULL, &why, &id))) die("verify", rc, why);
  printf("%s %s\n", mesh_identity_dns(id), mesh_identity_uri(id));
  mesh_identity_free(id);
  mesh_certs_free(chain);
  mesh_certs_free(anchors);
  free(a);
  free(c);
  return 0;
}

/* verify-token NOW PUBKEY TOKEN NS SA AUD: verify a token made elsewhere. */
static int cmd_verify_token(mesh_ctx *ctx, uint64_t now, char **argv) {
  size_t kl, tl;
  char *k = slurp(argv[0], &kl), *t = slurp(argv[1], &tl);
  while (tl > 0 && (t[tl - 1] == '\n' || t[tl - 1] == '\r')) t[--tl] = '\0';
  mesh_key *key;
  mesh_identity *id;
  const char *why = NULL;
  int rc = mesh_key_parse(ctx, k, kl, &why, &key);
  if (rc) die("key", rc, why);
  if ((rc = mesh_identity_new(ctx, argv[2], argv[3], NULL, NULL, &why, &id))) die("identity", rc, why);
  if ((rc = mesh_token_verify(key, t, tl, argv[4], now, id, &why))) die("token", rc, why);
  printf("token ok\n");
  mesh_identity_free(id);
  mesh_key_free(key);
  free(k);
  free(t);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: identity_tool init|issue|verify|verify-token DIR NOW ...\n");
    return 2;
  }
  dir = argv[2];
  uint64_t now = strtoull(argv[3], NULL, 10);
  mesh_ctx *ctx;
  if (mesh_ctx_new(&ctx)) return 1;
  int rc = 2;
  if (!strcmp(argv[1], "init"))
    rc = cmd_init(ctx, now);
  else if (!strcmp(argv[1], "issue") && argc == 7)
    rc = cmd_issue(ctx, now, argv[4], argv[5], argv[6]);
  else if (!strcmp(argv[1], "verify") && argc == 6)
    rc = cmd_verify(ctx, now, argv[4], argv[5]);
  else if (!strcmp(argv[1], "verify-token") && argc == 9)
    rc = cmd_verify_token(ctx, now, argv + 4);
  else
    fprintf(stderr, "identity_tool: bad command line\n");
  mesh_ctx_free(ctx);
  return rc;
}

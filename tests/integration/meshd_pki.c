/* Test helper for meshd: one trust anchor and identity directories (leaf.crt, key.pem, ca.crt) as `meshctl identity certify --out-dir` writes them. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <mesh/mesh.h>

static void die(const char *what, int rc, const char *why) {
  fprintf(stderr, "meshd_pki: %s: %s%s%s\n", what, mesh_strerror(rc), why ? ": " : "", why ? why : "");
  exit(2);
}

static void put(const char *dir, const char *name, const char *text, mode_t mode) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
    fprintf(stderr, "meshd_pki: %s: %s\n", path, strerror(errno));
    exit(2);
  }
  chmod(path, mode);
}

int main(int argc, char **argv) {
  /* DIR NAME NS SA [NAME NS SA ...]: DIR/NAME/{leaf.crt,key.pem,ca.crt} for sa.ns */
  if (argc < 5 || (argc - 2) % 3 != 0) {
    fprintf(stderr, "usage: meshd_pki DIR NAME NAMESPACE SERVICEACCOUNT [NAME NAMESPACE SERVICEACCOUNT...]\n");
    return 2;
  }
  mesh_ctx *ctx;
  mesh_ca *anchor, *issuer;
  int rc;
  uint64_t now = (uint64_t)time(NULL);
  if ((rc = mesh_ctx_new(&ctx))) die("ctx", rc, NULL);
  if ((rc = mesh_ca_init(ctx, NULL, NULL, now, 0, &anchor, &issuer))) die("ca", rc, NULL);
  const char *ca = mesh_certs_pem(mesh_ca_certs(anchor), 0);
  put(argv[1], "ca.crt", ca, 0644);
  for (int i = 2; i + 2 < argc; i += 3) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s", argv[1], argv[i]);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
      fprintf(stderr, "meshd_pki: %s: %s\n", dir, strerror(errno));
      return 2;
    }
    mesh_key *k;
    mesh_identity *id;
    mesh_csr *csr;
    mesh_certs *certs;
    const char *why = NULL;
    if ((rc = mesh_key_generate(ctx, &k))) die("key", rc, NULL);
    if ((rc = mesh_identity_new(ctx, argv[i + 1], argv[i + 2], NULL, NULL, &why, &id)))
      die("identity", rc, why);
    if ((rc = mesh_csr_new(k, id, &csr))) die("csr", rc, NULL);
    if ((rc = mesh_ca_issue(issuer, csr, id, now, &why, &certs))) die("issue", rc, why);
    put(dir, "leaf.crt", mesh_certs_bundle_pem(certs, 0), 0644);
    /* Tests run the proxy as another user (nobody) too: readable on purpose. */
    put(dir, "key.pem", mesh_key_pem(k), 0644);
    put(dir, "ca.crt", ca, 0644);
    printf("%s %s\n", argv[i], mesh_identity_dns(id));
    mesh_certs_free(certs);
    mesh_csr_free(csr);
    mesh_identity_free(id);
    mesh_key_free(k);
  }
  mesh_ca_free(issuer);
  mesh_ca_free(anchor);
  mesh_ctx_free(ctx);
  return 0;
}

/* Unit tests for certify: Identity.Certify requests and answers, each error class, bounds, allocation failures. */
#include <jansson.h>

#include "testutil.h"

/* A fixed wall-clock time (2023-11-14T22:13:20Z): results must not depend on the real clock. */
#define NOW 1700000000ull
#define DAY 86400ull
#define AUD "identity.linkerd.cluster.local"
#define DNS_ID "frontend.production.serviceaccount.identity.linkerd.cluster.local"
#define URI_ID "spiffe://cluster.local/ns/production/sa/frontend"

/* A trust anchor, an issuer under it, a token key pair and a workload. */
typedef struct {
  mesh_ctx *ctx;
  mesh_ca *anchor, *issuer;
  mesh_key *token_key, *token_pub, *key;
  mesh_identity *id;
  char token[MESH_TOKEN_MAX_LEN];
} world;

static void world_make_in(world *w, mesh_ctx *ctx) {
  memset(w, 0, sizeof *w);
  w->ctx = ctx;
  ck_assert_int_eq(mesh_ca_init(ctx, NULL, NULL, NOW, 0, &w->anchor, &w->issuer), 0);
  ck_assert_int_eq(mesh_key_generate(ctx, &w->token_key), 0);
  const char *pub = mesh_key_public_pem(w->token_key);
  ck_assert_int_eq(mesh_key_parse(ctx, pub, strlen(pub), NULL, &w->token_pub), 0);
  ck_assert_int_eq(mesh_key_generate(ctx, &w->key), 0);
  ck_assert_int_eq(mesh_identity_new(ctx, "production", "frontend", NULL, NULL, NULL, &w->id), 0);
  ck_assert_int_eq(mesh_token_mint(w->token_key, "production", "frontend", AUD, NOW, NOW + 3600,
                                   w->token, sizeof w->token, NULL),
                   0);
}

static void world_make(world *w) {
  mesh_ctx *ctx = NULL;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  world_make_in(w, ctx);
}

static void world_free_objects(world *w) {
  mesh_identity_free(w->id);
  mesh_key_free(w->key);
  mesh_key_free(w->token_pub);
  mesh_key_free(w->token_key);
  mesh_ca_free(w->issuer);
  mesh_ca_free(w->anchor);
}

static void world_free(world *w) {
  world_free_objects(w);
  mesh_ctx_free(w->ctx);
}

/* A request JSON text from parts (csr: a PEM, or NULL for one made here). */
static char *request(world *w, const char *identity, const char *token, const char *csr_pem) {
  mesh_csr *csr = NULL;
  if (!csr_pem) {
    ck_assert_int_eq(mesh_csr_new(w->key, w->id, &csr), 0);
    csr_pem = mesh_csr_pem(csr);
  }
  json_t *j = json_pack("{s:s, s:s, s:s}", "identity", identity, "token", token,
                        "certificate_signing_request", csr_pem);
  char *s = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  mesh_csr_free(csr);
  ck_assert_ptr_nonnull(s);
  return s;
}

/* Runs the handler on text; returns its result, with the class and reason. */
static int handle(world *w, const char *text, size_t len, uint64_t now, const char **code,
                  const char **why, char **resp) {
  *code = NULL;
  *why = NULL;
  *resp = NULL;
  return mesh_certify_handle(w->issuer, w->token_pub, AUD, NULL, NULL, text, len, now, resp, code,
                             why);
}

static void expect(world *w, const char *text, uint64_t now, int want_rc, const char *want_code,
                   const char *why_part) {
  const char *code, *why;
  char *resp;
  int rc = handle(w, text, strlen(text), now, &code, &why, &resp);
  ck_assert_msg(rc == want_rc, "rc %d (%s), expected %d; why: %s", rc, mesh_strerror(rc), want_rc,
                why ? why : "(none)");
  ck_assert_ptr_null(resp);
  ck_assert_str_eq(code, want_code);
  if (why_part) {
    ck_assert_msg(why && strstr(why, why_part), "reason \"%s\" lacks \"%s\"", why ? why : "(none)",
                  why_part);
  }
}

/* ---- The happy path ------------------------------------------------------ */

static void certify_ok(world *w, const char *identity) {
  char *req = NULL;
  if (identity) req = request(w, identity, w->token, NULL);
  else ck_assert_int_eq(mesh_certify_request(w->key, w->id, w->token, &req), 0);
  const char *code, *why;
  char *resp = NULL;
  int rc = handle(w, req, strlen(req), NOW, &code, &why, &resp);
  ck_assert_msg(rc == 0, "rc %d, %s: %s", rc, code, why ? why : "");
  ck_assert_ptr_null(code);
  if (identity) free(req);
  else mesh_free_string(w->ctx, req);

  mesh_certs *chain = NULL;
  uint64_t until = 0;
  ck_assert_int_eq(mesh_certify_response_parse(w->ctx, resp, strlen(resp), &chain, &until, &why),
                   0);
  ck_assert_uint_eq(mesh_certs_count(chain), 2);
  ck_assert_uint_eq(until, NOW + DAY);
  ck_assert_uint_eq(mesh_certs_not_after(chain, 0), NOW + DAY);
  mesh_identity *got = NULL;
  ck_assert_int_eq(
      mesh_certs_verify_peer(chain, mesh_ca_certs(w->anchor), NOW + 60, w->id, &why, &got), 0);
  ck_assert_str_eq(mesh_identity_dns(got), DNS_ID);
  ck_assert_str_eq(mesh_identity_uri(got), URI_ID);
  /* The leaf is for the workload's own key: a TLS configuration takes the pair. */
  mesh_tls_opts *o = NULL;
  mesh_tls_config *cfg = NULL;
  const char *bundle = mesh_certs_bundle_pem(chain, 0), *key = mesh_key_pem(w->key),
             *anchors = mesh_certs_bundle_pem(mesh_ca_certs(w->anchor), 0);
  ck_assert_int_eq(mesh_tls_opts_new(w->ctx, &o), 0);
  ck_assert_int_eq(mesh_tls_opts_set_credentials(o, bundle, strlen(bundle), key, strlen(key)), 0);
  ck_assert_int_eq(mesh_tls_opts_set_anchors(o, anchors, strlen(anchors)), 0);
  ck_assert_int_eq(mesh_tls_config_new(o, &why, &cfg), 0);
  mesh_tls_config_unref(cfg);
  mesh_tls_opts_free(o);
  /* The text form agrees with the number. */
  json_t *j = json_loads(resp, 0, NULL);
  ck_assert_str_eq(json_string_value(json_object_get(j, "valid_until_rfc3339")),
                   "2023-11-15T22:13:20Z");
  ck_assert_uint_eq(json_array_size(json_object_get(j, "intermediate_certificates")), 1);
  json_decref(j);
  mesh_identity_free(got);
  mesh_certs_free(chain);
  mesh_free_string(w->ctx, resp);
}

START_TEST(happy_path) {
  world w;
  world_make(&w);
  certify_ok(&w, NULL);   /* mesh_certify_request's own request */
  certify_ok(&w, DNS_ID); /* either form of the name */
  certify_ok(&w, URI_ID);
  world_free(&w);
}
END_TEST

START_TEST(request_shape) {
  world w;
  world_make(&w);
  char *req = NULL;
  ck_assert_int_eq(mesh_certify_request(w.key, w.id, w.token, &req), 0);
  json_t *j = json_loads(req, 0, NULL);
  ck_assert_ptr_nonnull(j);
  ck_assert_str_eq(json_string_value(json_object_get(j, "identity")), DNS_ID);
  ck_assert_str_eq(json_string_value(json_object_get(j, "token")), w.token);
  const char *pem = json_string_value(json_object_get(j, "certificate_signing_request"));
  ck_assert_ptr_nonnull(strstr(pem, "BEGIN CERTIFICATE REQUEST"));
  json_decref(j);
  mesh_free_string(w.ctx, req);
  req = NULL;
  ck_assert_int_eq(mesh_certify_request(NULL, w.id, w.token, &req), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_certify_request(w.key, NULL, w.token, &req), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_certify_request(w.key, w.id, NULL, &req), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_certify_request(w.key, w.id, w.token, NULL), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_certify_request(w.token_pub, w.id, w.token, &req), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_certify_request(w.key, w.id, "", &req), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_certify_request(w.key, w.id, "a b", &req), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_certify_request(w.key, w.id, "a\"b", &req), MESH_ERR_PARSE);
  char big[MESH_TOKEN_MAX_LEN + 2];
  memset(big, 'a', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  ck_assert_int_eq(mesh_certify_request(w.key, w.id, big, &req), MESH_ERR_LIMIT);
  ck_assert_ptr_null(req);
  world_free(&w);
}
END_TEST

/* ---- invalid_argument ------------------------------------------------------ */

START_TEST(invalid_argument) {
  world w;
  world_make(&w);
  const char *IA = MESH_CERTIFY_CODE_INVALID_ARGUMENT;
  expect(&w, "", NOW, MESH_ERR_PARSE, IA, "not a JSON object");
  expect(&w, "{", NOW, MESH_ERR_PARSE, IA, "not a JSON object");
  expect(&w, "[]", NOW, MESH_ERR_PARSE, IA, "not a JSON object");
  expect(&w, "null", NOW, MESH_ERR_PARSE, IA, "not a JSON object");
  expect(&w, "\x01\xff garbage", NOW, MESH_ERR_PARSE, IA, "not a JSON object");
  expect(&w, "{}", NOW, MESH_ERR_PARSE, IA, "\"identity\"");
  expect(&w, "{\"identity\":\"" DNS_ID "\"}", NOW, MESH_ERR_PARSE, IA, "\"token\"");
  expect(&w, "{\"identity\":\"" DNS_ID "\",\"token\":\"x\"}", NOW, MESH_ERR_PARSE, IA,
         "\"certificate_signing_request\"");
  expect(&w, "{\"identity\":7,\"token\":\"x\",\"certificate_signing_request\":\"x\"}", NOW,
         MESH_ERR_PARSE, IA, "\"identity\"");
  expect(&w, "{\"identity\":\"\",\"token\":\"x\",\"certificate_signing_request\":\"x\"}", NOW,
         MESH_ERR_PARSE, IA, "\"identity\"");
  /* Duplicate keys could make two readers see two requests; NULs could cut a name short. */
  expect(&w, "{\"identity\":\"a\",\"identity\":\"b\"}", NOW, MESH_ERR_PARSE, IA, NULL);
  expect(&w,
         "{\"identity\":\"" DNS_ID "\\u0000x\",\"token\":\"x\",\"certificate_signing_request\":\"x\"}",
         NOW, MESH_ERR_PARSE, IA, NULL);
  char *req = request(&w, "not an identity", w.token, NULL);
  expect(&w, req, NOW, MESH_ERR_PARSE, IA, NULL);
  free(req);
  req = request(&w, DNS_ID, w.token, "-----BEGIN CERTIFICATE REQUEST-----\njunk\n");
  expect(&w, req, NOW, MESH_ERR_PARSE, IA, NULL);
  free(req);

  /* A CSR for another workload, with a good token for this one. */
  mesh_identity *other = NULL;
  mesh_csr *csr = NULL;
  ck_assert_int_eq(mesh_identity_new(w.ctx, "production", "backend", NULL, NULL, NULL, &other), 0);
  ck_assert_int_eq(mesh_csr_new(w.key, other, &csr), 0);
  req = request(&w, DNS_ID, w.token, mesh_csr_pem(csr));
  expect(&w, req, NOW, MESH_ERR_IDENTITY, IA, NULL);
  free(req);
  mesh_csr_free(csr);
  mesh_identity_free(other);

  /* Over 64 KiB: refused before parsing, whatever it holds. */
  size_t n = MESH_CERTIFY_REQUEST_MAX + 1;
  char *big = malloc(n + 1);
  memset(big, ' ', n);
  big[n] = '\0';
  big[0] = '{';
  big[n - 1] = '}';
  expect(&w, big, NOW, MESH_ERR_LIMIT, IA, "64 KiB");
  /* Exactly 64 KiB of whitespace around a good request is still read. */
  req = request(&w, DNS_ID, w.token, NULL);
  size_t rl = strlen(req);
  memset(big, ' ', MESH_CERTIFY_REQUEST_MAX);
  memcpy(big, req, rl);
  big[MESH_CERTIFY_REQUEST_MAX] = '\0';
  const char *code, *why;
  char *resp;
  ck_assert_int_eq(handle(&w, big, MESH_CERTIFY_REQUEST_MAX, NOW, &code, &why, &resp), 0);
  mesh_free_string(w.ctx, resp);
  free(req);
  free(big);

  ck_assert_int_eq(mesh_certify_handle(w.issuer, w.token_pub, AUD, NULL, NULL, "{}", 2, NOW, NULL,
                                       NULL, NULL),
                   MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_certify_handle(w.issuer, w.token_pub, AUD, NULL, NULL, NULL, 2, NOW, &resp,
                                       NULL, NULL),
                   MESH_ERR_INVALID);
  world_free(&w);
}
END_TEST

/* ---- unauthenticated ------------------------------------------------------- */

START_TEST(unauthenticated) {
  world w;
  world_make(&w);
  const char *UA = MESH_CERTIFY_CODE_UNAUTHENTICATED;
  char tok[MESH_TOKEN_MAX_LEN], *req;

  /* Forged: signed by a key that is not the service's. */
  mesh_key *forger = NULL;
  ck_assert_int_eq(mesh_key_generate(w.ctx, &forger), 0);
  ck_assert_int_eq(
      mesh_token_mint(forger, "production", "frontend", AUD, NOW, NOW + 3600, tok, sizeof tok, NULL),
      0);
  req = request(&w, DNS_ID, tok, NULL);
  expect(&w, req, NOW, MESH_ERR_DENIED, UA, NULL);
  free(req);
  mesh_key_free(forger);

  /* A good token with its signature tampered with. */
  snprintf(tok, sizeof tok, "%s", w.token);
  char *last = strrchr(tok, '.') + 5;
  *last = *last == 'A' ? 'B' : 'A';
  req = request(&w, DNS_ID, tok, NULL);
  expect(&w, req, NOW, MESH_ERR_DENIED, UA, NULL);
  free(req);

  /* Expired. */
  ck_assert_int_eq(mesh_token_mint(w.token_key, "production", "frontend", AUD, NOW - 7200,
                                   NOW - 3600, tok, sizeof tok, NULL),
                   0);
  req = request(&w, DNS_ID, tok, NULL);
  expect(&w, req, NOW, MESH_ERR_EXPIRED, UA, NULL);
  free(req);

  /* For another audience. */
  ck_assert_int_eq(mesh_token_mint(w.token_key, "production", "frontend", "someone-else", NOW,
                                   NOW + 3600, tok, sizeof tok, NULL),
                   0);
  req = request(&w, DNS_ID, tok, NULL);
  expect(&w, req, NOW, MESH_ERR_DENIED, UA, NULL);
  free(req);

  /* For another service account, or another namespace. */
  ck_assert_int_eq(mesh_token_mint(w.token_key, "production", "backend", AUD, NOW, NOW + 3600, tok,
                                   sizeof tok, NULL),
                   0);
  req = request(&w, DNS_ID, tok, NULL);
  expect(&w, req, NOW, MESH_ERR_IDENTITY, UA, NULL);
  free(req);
  ck_assert_int_eq(mesh_token_mint(w.token_key, "staging", "frontend", AUD, NOW, NOW + 3600, tok,
                                   sizeof tok, NULL),
                   0);
  req = request(&w, URI_ID, tok, NULL);
  expect(&w, req, NOW, MESH_ERR_IDENTITY, UA, NULL);
  free(req);

  /* Not a token at all. */
  req = request(&w, DNS_ID, "a.b.c", NULL);
  expect(&w, req, NOW, MESH_ERR_PARSE, UA, NULL);
  free(req);
  world_free(&w);
}
END_TEST

/* ---- unavailable and failed_precondition ---------------------------------- */

START_TEST(unavailable) {
  world w;
  world_make(&w);
  char *req = request(&w, DNS_ID, w.token, NULL), *resp = NULL;
  const char *code = NULL, *why = NULL;
  ck_assert_int_eq(mesh_certify_handle(NULL, w.token_pub, AUD, NULL, NULL, req, strlen(req), NOW,
                                       &resp, &code, &why),
                   MESH_ERR_UNAVAILABLE);
  ck_assert_str_eq(code, MESH_CERTIFY_CODE_UNAVAILABLE);
  ck_assert_str_eq(why, "no issuer is loaded");
  code = NULL;
  ck_assert_int_eq(mesh_certify_handle(w.issuer, NULL, AUD, NULL, NULL, req, strlen(req), NOW,
                                       &resp, &code, &why),
                   MESH_ERR_UNAVAILABLE);
  ck_assert_str_eq(code, MESH_CERTIFY_CODE_UNAVAILABLE);
  ck_assert_ptr_null(resp);
  /* The issuer (365 days) has expired; so has the token, but the issuer is
   * what the caller cannot fix. */
  expect(&w, req, NOW + 400 * DAY, MESH_ERR_EXPIRED, MESH_CERTIFY_CODE_UNAVAILABLE, "issuer");
  /* Not yet valid (a clock far behind). */
  expect(&w, req, NOW - 10 * DAY, MESH_ERR_EXPIRED, MESH_CERTIFY_CODE_UNAVAILABLE, "issuer");
  free(req);
  world_free(&w);
}
END_TEST

START_TEST(failed_precondition) {
  world w;
  world_make(&w);
  const char *FP = MESH_CERTIFY_CODE_FAILED_PRECONDITION;
  char *req = request(&w, "spiffe://example.org/ns/production/sa/frontend", w.token, NULL);
  expect(&w, req, NOW, MESH_ERR_IDENTITY, FP, "trust domain");
  free(req);
  req = request(&w, "frontend.production.serviceaccount.identity.mesh.cluster.local", w.token, NULL);
  expect(&w, req, NOW, MESH_ERR_IDENTITY, FP, "control plane");
  free(req);
  /* A service of another trust domain and control plane, with its own names. */
  mesh_identity *id = NULL;
  ck_assert_int_eq(mesh_identity_new(w.ctx, "production", "frontend", "mesh", "example.org", NULL,
                                     &id),
                   0);
  mesh_csr *csr = NULL;
  ck_assert_int_eq(mesh_csr_new(w.key, id, &csr), 0);
  req = request(&w, "spiffe://example.org/ns/production/sa/frontend", w.token, mesh_csr_pem(csr));
  char *resp = NULL;
  const char *code = NULL, *why = NULL;
  int rc = mesh_certify_handle(w.issuer, w.token_pub, AUD, "example.org", "mesh", req, strlen(req),
                               NOW, &resp, &code, &why);
  ck_assert_msg(rc == 0, "%s", why ? why : "");
  mesh_certs *chain = NULL;
  ck_assert_int_eq(mesh_certify_response_parse(w.ctx, resp, strlen(resp), &chain, NULL, &why), 0);
  ck_assert_int_eq(
      mesh_certs_verify_peer(chain, mesh_ca_certs(w.anchor), NOW + 1, id, &why, NULL), 0);
  mesh_certs_free(chain);
  mesh_free_string(w.ctx, resp);
  free(req);
  mesh_csr_free(csr);
  mesh_identity_free(id);
  world_free(&w);
}
END_TEST

/* ---- Reading answers ----------------------------------------------------- */

static void parse_fails(world *w, const char *text, int want, const char *why_part) {
  mesh_certs *chain = NULL;
  uint64_t until = 7;
  const char *why = NULL;
  int rc = mesh_certify_response_parse(w->ctx, text, strlen(text), &chain, &until, &why);
  ck_assert_msg(rc == want, "rc %d, expected %d (%s)", rc, want, why ? why : "");
  ck_assert_ptr_null(chain);
  ck_assert_uint_eq(until, 7);
  if (why_part)
    ck_assert_msg(why && strstr(why, why_part), "reason \"%s\" lacks \"%s\"", why ? why : "",
                  why_part);
}

START_TEST(response_errors) {
  world w;
  world_make(&w);
  const char *leaf_ca = mesh_certs_pem(mesh_ca_certs(w.issuer), 0);
  /* A real leaf, to build broken answers around it. */
  char *req = request(&w, DNS_ID, w.token, NULL), *resp = NULL;
  const char *code, *why;
  ck_assert_int_eq(handle(&w, req, strlen(req), NOW, &code, &why, &resp), 0);
  free(req);
  json_t *good = json_loads(resp, 0, NULL);
  const char *leaf = json_string_value(json_object_get(good, "leaf_certificate"));
  mesh_free_string(w.ctx, resp);

  parse_fails(&w, "", MESH_ERR_PARSE, "JSON object");
  parse_fails(&w, "[1]", MESH_ERR_PARSE, "JSON object");
  parse_fails(&w, "{\"valid_until\":1}", MESH_ERR_PARSE, "leaf_certificate");
  char *t;
  json_t *j = json_pack("{s:s}", "leaf_certificate", leaf);
  t = json_dumps(j, 0);
  parse_fails(&w, t, MESH_ERR_PARSE, "valid_until");
  free(t);
  json_decref(j);
  j = json_pack("{s:s, s:I, s:i}", "leaf_certificate", leaf, "valid_until",
                (json_int_t)(NOW + DAY), "intermediate_certificates", 3);
  t = json_dumps(j, 0);
  parse_fails(&w, t, MESH_ERR_PARSE, "intermediate_certificates");
  free(t);
  json_decref(j);
  j = json_pack("{s:s, s:I, s:[i]}", "leaf_certificate", leaf, "valid_until",
                (json_int_t)(NOW + DAY), "intermediate_certificates", 3);
  t = json_dumps(j, 0);
  parse_fails(&w, t, MESH_ERR_PARSE, "intermediate_certificates");
  free(t);
  json_decref(j);
  /* valid_until beyond the leaf's own end. */
  j = json_pack("{s:s, s:I, s:[]}", "leaf_certificate", leaf, "valid_until",
                (json_int_t)(NOW + 2 * DAY), "intermediate_certificates");
  t = json_dumps(j, 0);
  parse_fails(&w, t, MESH_ERR_PARSE, "notAfter");
  free(t);
  json_decref(j);
  /* A CA where the leaf goes. */
  j = json_pack("{s:s, s:I}", "leaf_certificate", leaf_ca, "valid_until", (json_int_t)NOW);
  t = json_dumps(j, 0);
  parse_fails(&w, t, MESH_ERR_PARSE, "CA");
  free(t);
  json_decref(j);
  /* Two certificates in the leaf field, none in the intermediates. */
  char *two = malloc(strlen(leaf) + strlen(leaf_ca) + 1);
  strcpy(two, leaf);
  strcat(two, leaf_ca);
  j = json_pack("{s:s, s:I, s:[]}", "leaf_certificate", two, "valid_until", (json_int_t)NOW,
                "intermediate_certificates");
  t = json_dumps(j, 0);
  parse_fails(&w, t, MESH_ERR_PARSE, "exactly one");
  free(t);
  json_decref(j);
  free(two);
  /* Garbage PEM. */
  parse_fails(&w, "{\"leaf_certificate\":\"junk\",\"valid_until\":1}", MESH_ERR_PARSE, NULL);
  /* Over 1 MiB. */
  size_t n = MESH_CERTIFY_RESPONSE_MAX + 1;
  char *big = malloc(n + 1);
  memset(big, ' ', n);
  big[n] = '\0';
  parse_fails(&w, big, MESH_ERR_LIMIT, "1 MiB");
  free(big);
  /* Intermediates absent: a leaf alone is a valid (if short) answer. */
  j = json_pack("{s:s, s:I}", "leaf_certificate", leaf, "valid_until", (json_int_t)NOW);
  t = json_dumps(j, 0);
  mesh_certs *chain = NULL;
  ck_assert_int_eq(mesh_certify_response_parse(w.ctx, t, strlen(t), &chain, NULL, &why), 0);
  ck_assert_uint_eq(mesh_certs_count(chain), 1);
  mesh_certs_free(chain);
  free(t);
  json_decref(j);
  ck_assert_int_eq(mesh_certify_response_parse(NULL, "{}", 2, &chain, NULL, NULL),
                   MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_certify_response_parse(w.ctx, "{}", 2, NULL, NULL, NULL),
                   MESH_ERR_INVALID);
  json_decref(good);
  world_free(&w);
}
END_TEST

/* ---- Allocation failures ------------------------------------------------- */

/* Every allocation of the handler, the request builder and the answer reader
 * fails in turn: each must then report MESH_ERR_NOMEM (class internal) and
 * leave no block behind. The world is made first with failures off. */
START_TEST(allocation_failures) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  world w;
  world_make_in(&w, ctx);
  char *req = request(&w, DNS_ID, w.token, NULL);
  long points = 0;
  for (long n = 0;; n++, points++) {
    long base = a.live;
    a.calls = 0;
    a.fail_after = n;
    char *resp = NULL;
    const char *code = NULL, *why = NULL;
    int rc = mesh_certify_handle(w.issuer, w.token_pub, AUD, NULL, NULL, req, strlen(req), NOW,
                                 &resp, &code, &why);
    a.fail_after = -1;
    if (rc == 0) {
      mesh_free_string(ctx, resp);
      ck_assert_int_eq(a.live, base);
      break;
    }
    ck_assert_msg(rc == MESH_ERR_NOMEM, "failure point %ld: rc %d (%s)", n, rc, why ? why : "");
    ck_assert_str_eq(code, MESH_CERTIFY_CODE_INTERNAL);
    ck_assert_msg(a.live == base, "failure point %ld: %ld blocks leaked", n, a.live - base);
  }
  ck_assert_int_gt(points, 5);

  for (long n = 0;; n++) {
    long base = a.live;
    a.calls = 0;
    a.fail_after = n;
    char *out = NULL;
    int rc = mesh_certify_request(w.key, w.id, w.token, &out);
    a.fail_after = -1;
    if (rc == 0) {
      mesh_free_string(ctx, out);
      break;
    }
    ck_assert_msg(rc == MESH_ERR_NOMEM, "failure point %ld: rc %d", n, rc);
    ck_assert_int_eq(a.live, base);
  }

  char *resp = NULL;
  const char *code, *why;
  ck_assert_int_eq(handle(&w, req, strlen(req), NOW, &code, &why, &resp), 0);
  for (long n = 0;; n++) {
    long base = a.live;
    a.calls = 0;
    a.fail_after = n;
    mesh_certs *chain = NULL;
    int rc = mesh_certify_response_parse(ctx, resp, strlen(resp), &chain, NULL, &why);
    a.fail_after = -1;
    if (rc == 0) {
      mesh_certs_free(chain);
      ck_assert_int_eq(a.live, base);
      break;
    }
    ck_assert_msg(rc == MESH_ERR_NOMEM, "failure point %ld: rc %d", n, rc);
    ck_assert_int_eq(a.live, base);
  }
  mesh_free_string(ctx, resp);
  free(req);
  world_free_objects(&w);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
}
END_TEST

/* ---- Bootstrap TLS -------------------------------------------------------- */

/* A workload reaches the identity service before it has a certificate: a
 * TLS configuration with trust anchors only is a client-only one. */
START_TEST(client_only_tls_config) {
  world w;
  world_make(&w);
  const char *anchors = mesh_certs_bundle_pem(mesh_ca_certs(w.anchor), 0);
  mesh_tls_opts *o = NULL;
  mesh_tls_config *cfg = NULL;
  const char *why = NULL;
  ck_assert_int_eq(mesh_tls_opts_new(w.ctx, &o), 0);
  ck_assert_int_eq(mesh_tls_opts_set_anchors(o, anchors, strlen(anchors)), 0);
  ck_assert_int_eq(mesh_tls_config_new(o, &why, &cfg), 0);
  ck_assert_ptr_null(mesh_tls_config_identity(cfg));
  ck_assert_uint_eq(mesh_tls_config_not_after(cfg), 0);
  mesh_tls_config_unref(cfg);
  /* A chain without its key is still a mistake. */
  const char *chain = mesh_certs_bundle_pem(mesh_ca_certs(w.issuer), 0);
  ck_assert_int_eq(mesh_tls_opts_set_credentials(o, chain, strlen(chain), NULL, 0),
                   MESH_ERR_INVALID);
  mesh_tls_opts_free(o);
  world_free(&w);
}
END_TEST

static Suite *make_suite(void) {
  Suite *s = suite_create("certify");
  TCase *tc = tcase_create("certify");
  tcase_add_test(tc, happy_path);
  tcase_add_test(tc, request_shape);
  tcase_add_test(tc, invalid_argument);
  tcase_add_test(tc, unauthenticated);
  tcase_add_test(tc, unavailable);
  tcase_add_test(tc, failed_precondition);
  tcase_add_test(tc, response_errors);
  tcase_add_test(tc, allocation_failures);
  tcase_add_test(tc, client_only_tls_config);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return test_main(make_suite()); }

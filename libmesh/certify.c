/* libmesh certify: Identity.Certify requests and answers, checked and issued as pure functions over bytes. */
#include <string.h>
#include <time.h>

#include <jansson.h>

#include <mesh/certify.h>
#include <mesh/error.h>

#include "ctx_internal.h"
#include "identity_internal.h"

static const char R_NO_ISSUER[] = "no issuer is loaded";
static const char R_NO_TOKEN_KEY[] = "no token verification key is loaded";
static const char R_ISSUER_DATES[] = "the issuer certificate is expired or not yet valid";
static const char R_REQ_LONG[] = "request is larger than 64 KiB";
static const char R_REQ_JSON[] = "request is not a JSON object";
static const char R_REQ_IDENTITY[] = "request lacks \"identity\" (a non-empty string)";
static const char R_REQ_TOKEN[] = "request lacks \"token\" (a non-empty string)";
static const char R_REQ_CSR[] = "request lacks \"certificate_signing_request\" (a PEM string)";
static const char R_TRUST_DOMAIN[] = "the identity is not in this service's trust domain";
static const char R_CP_NS[] = "the identity names another control plane namespace";
static const char R_RESP_LONG[] = "response is larger than 1 MiB";
static const char R_RESP_JSON[] = "response is not a JSON object";
static const char R_RESP_LEAF[] = "response lacks \"leaf_certificate\" (a PEM string)";
static const char R_RESP_INTER[] =
    "response's \"intermediate_certificates\" is not an array of PEM strings";
static const char R_RESP_VALID[] = "response lacks \"valid_until\" (seconds since the epoch)";
static const char R_RESP_COUNT[] = "a certificate field of the response holds not exactly one certificate";
static const char R_RESP_CA[] = "the response's leaf certificate is a CA certificate";
static const char R_RESP_AFTER[] = "the response's valid_until is after the leaf's notAfter";

static int fail(const char **why, const char *reason, const char **code, const char *cls,
                int err) {
  if (why) *why = reason;
  if (code) *code = cls;
  return err;
}

/* The class of an error from the token check. */
static const char *token_class(int rc) {
  return rc == MESH_ERR_NOMEM || rc == MESH_ERR_TLS || rc == MESH_ERR_UNSUPPORTED
             ? MESH_CERTIFY_CODE_INTERNAL
             : MESH_CERTIFY_CODE_UNAUTHENTICATED;
}

/* The class of an error from mesh_csr_parse or mesh_ca_issue. */
static const char *issue_class(int rc) {
  switch (rc) {
  case MESH_ERR_EXPIRED: return MESH_CERTIFY_CODE_UNAVAILABLE;
  case MESH_ERR_NOMEM:
  case MESH_ERR_TLS: return MESH_CERTIFY_CODE_INTERNAL;
  default: return MESH_CERTIFY_CODE_INVALID_ARGUMENT;
  }
}

static void rfc3339(uint64_t t, char buf[32]) {
  time_t tt = (time_t)t;
  struct tm tm;
  if (!gmtime_r(&tt, &tm) || !strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm))
    snprintf(buf, 32, "@%llu", (unsigned long long)t);
}

/* A string field: NULL when absent, empty or mistyped. Strings hold no NUL:
 * jansson refuses "\u0000" unless told JSON_ALLOW_NUL. */
static const char *str_field(json_t *o, const char *name, size_t *len) {
  json_t *v = json_object_get(o, name);
  if (!json_is_string(v) || json_string_length(v) == 0) return NULL;
  *len = json_string_length(v);
  return json_string_value(v);
}

/* j serialised compactly into a fresh allocation of ctx; consumes j. */
static int dump(mesh_ctx *ctx, json_t *j, char **ret) {
  if (!j) return MESH_ERR_NOMEM;
  size_t n = json_dumpb(j, NULL, 0, JSON_COMPACT);
  char *s = n ? mesh__malloc(ctx, n + 1) : NULL;
  if (s && json_dumpb(j, s, n, JSON_COMPACT) != n) {
    mesh__free(ctx, s);
    s = NULL;
  }
  json_decref(j);
  if (!s) return MESH_ERR_NOMEM;
  s[n] = '\0';
  *ret = s;
  return 0;
}

static json_t *load(const char *buf, size_t len, int *nomem) {
  json_error_t je;
  json_t *j = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
  *nomem = !j && json_error_code(&je) == json_error_out_of_memory;
  if (j && !json_is_object(j)) {
    json_decref(j);
    j = NULL;
  }
  return j;
}

/* The answer for a freshly issued chain. */
static int answer(mesh_ctx *ctx, const mesh_certs *chain, char **ret) {
  json_t *inter = json_array();
  for (size_t i = 1; inter && i < mesh_certs_count(chain); i++) {
    if (json_array_append_new(inter, json_string(mesh_certs_pem(chain, i))) != 0) {
      json_decref(inter);
      inter = NULL;
    }
  }
  if (!inter) return MESH_ERR_NOMEM;
  uint64_t until = mesh_certs_not_after(chain, 0);
  char text[32];
  rfc3339(until, text);
  /* "o" steals inter, also when json_pack fails. */
  return dump(ctx,
              json_pack("{s:s, s:o, s:I, s:s}", "leaf_certificate", mesh_certs_pem(chain, 0),
                        "intermediate_certificates", inter, "valid_until", (json_int_t)until,
                        "valid_until_rfc3339", text),
              ret);
}

int mesh_certify_handle(const mesh_ca *ca, const mesh_key *token_pubkey, const char *audience,
                        const char *trust_domain, const char *cp_ns, const char *request_json,
                        size_t len, uint64_t now_s, char **response_json, const char **error_code,
                        const char **why) {
  if (!response_json || (!request_json && len)) return MESH_ERR_INVALID;
  const char *UNAVAILABLE = MESH_CERTIFY_CODE_UNAVAILABLE,
             *INVALID = MESH_CERTIFY_CODE_INVALID_ARGUMENT;
  /* Cheap refusals first, so that a service without an issuer (or flooded
   * with junk) spends nothing on parsing. */
  if (!ca) return fail(why, R_NO_ISSUER, error_code, UNAVAILABLE, MESH_ERR_UNAVAILABLE);
  if (!token_pubkey || !audience)
    return fail(why, R_NO_TOKEN_KEY, error_code, UNAVAILABLE, MESH_ERR_UNAVAILABLE);
  const mesh_certs *issuer = mesh_ca_certs(ca);
  if (now_s < mesh_certs_not_before(issuer, 0) || now_s > mesh_certs_not_after(issuer, 0))
    return fail(why, R_ISSUER_DATES, error_code, UNAVAILABLE, MESH_ERR_EXPIRED);
  if (len > MESH_CERTIFY_REQUEST_MAX)
    return fail(why, R_REQ_LONG, error_code, INVALID, MESH_ERR_LIMIT);

  mesh_ctx *ctx = mesh_ca_key(ca)->ctx;
  int nomem = 0, rc;
  json_t *req = load(request_json, len, &nomem);
  if (!req)
    return nomem ? fail(why, NULL, error_code, MESH_CERTIFY_CODE_INTERNAL, MESH_ERR_NOMEM)
                 : fail(why, R_REQ_JSON, error_code, INVALID, MESH_ERR_PARSE);
  mesh_identity *id = NULL;
  mesh_csr *csr = NULL;
  mesh_certs *chain = NULL;
  size_t name_len = 0, tok_len = 0, csr_len = 0;
  const char *name = str_field(req, "identity", &name_len);
  const char *tok = str_field(req, "token", &tok_len);
  const char *pem = str_field(req, "certificate_signing_request", &csr_len);
  const char *w = NULL;
  if (!name) rc = fail(why, R_REQ_IDENTITY, error_code, INVALID, MESH_ERR_PARSE);
  else if (!tok) rc = fail(why, R_REQ_TOKEN, error_code, INVALID, MESH_ERR_PARSE);
  else if (!pem) rc = fail(why, R_REQ_CSR, error_code, INVALID, MESH_ERR_PARSE);
  else if ((rc = mesh_identity_parse(ctx, name, cp_ns, &w, &id)) < 0)
    rc = fail(why, w, error_code, rc == MESH_ERR_NOMEM ? MESH_CERTIFY_CODE_INTERNAL : INVALID, rc);
  else if (strcmp(mesh_identity_trust_domain(id),
                  trust_domain ? trust_domain : MESH_IDENTITY_DEFAULT_TRUST_DOMAIN))
    rc = fail(why, R_TRUST_DOMAIN, error_code, MESH_CERTIFY_CODE_FAILED_PRECONDITION,
              MESH_ERR_IDENTITY);
  else if (strcmp(mesh_identity_cp_ns(id), cp_ns ? cp_ns : MESH_IDENTITY_DEFAULT_CP_NS))
    rc = fail(why, R_CP_NS, error_code, MESH_CERTIFY_CODE_FAILED_PRECONDITION, MESH_ERR_IDENTITY);
  /* The token before the CSR: an unauthenticated caller reaches no more
   * parsing than the token's own. */
  else if ((rc = mesh_token_verify(token_pubkey, tok, tok_len, audience, now_s, id, &w)) < 0)
    rc = fail(why, w, error_code, token_class(rc), rc);
  else if ((rc = mesh_csr_parse(ctx, pem, csr_len, &w, &csr)) < 0)
    rc = fail(why, w, error_code, issue_class(rc), rc);
  else if ((rc = mesh_ca_issue(ca, csr, id, now_s, &w, &chain)) < 0)
    rc = fail(why, w, error_code, issue_class(rc), rc);
  else if ((rc = answer(ctx, chain, response_json)) < 0)
    rc = fail(why, NULL, error_code, MESH_CERTIFY_CODE_INTERNAL, rc);
  mesh_certs_free(chain);
  mesh_csr_free(csr);
  mesh_identity_free(id);
  json_decref(req);
  return rc;
}

int mesh_certify_request(const mesh_key *key, const mesh_identity *id, const char *token,
                         char **request_json) {
  if (!key || !id || !token || !request_json || !mesh_key_pem(key)) return MESH_ERR_INVALID;
  size_t n = strlen(token);
  if (n > MESH_TOKEN_MAX_LEN) return MESH_ERR_LIMIT;
  /* A JWS is base64url segments and dots; anything else would only be
   * refused by the service, after a round trip. */
  for (size_t i = 0; i < n; i++) {
    char c = token[i];
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
          c == '-' || c == '_' || c == '.'))
      return MESH_ERR_PARSE;
  }
  if (n == 0) return MESH_ERR_PARSE;
  mesh_csr *csr = NULL;
  int rc = mesh_csr_new(key, id, &csr);
  if (rc < 0) return rc;
  rc = dump(key->ctx,
            json_pack("{s:s, s:s, s:s}", "identity", mesh_identity_dns(id), "token", token,
                      "certificate_signing_request", mesh_csr_pem(csr)),
            request_json);
  mesh_csr_free(csr);
  return rc;
}

/* Appends one PEM field to buf at *o (with a newline when it lacks one). */
static void put_pem(char *buf, size_t *o, const char *s, size_t n) {
  memcpy(buf + *o, s, n);
  *o += n;
  if (n && s[n - 1] != '\n') buf[(*o)++] = '\n';
}

int mesh_certify_response_parse(mesh_ctx *ctx, const char *response_json, size_t len,
                                 mesh_certs **leaf_chain, uint64_t *valid_until,
                                 const char **why) {
  if (!ctx || !leaf_chain || (!response_json && len)) return MESH_ERR_INVALID;
  if (len > MESH_CERTIFY_RESPONSE_MAX) return fail(why, R_RESP_LONG, NULL, NULL, MESH_ERR_LIMIT);
  int nomem = 0;
  json_t *resp = load(response_json, len, &nomem);
  if (!resp) return nomem ? MESH_ERR_NOMEM : fail(why, R_RESP_JSON, NULL, NULL, MESH_ERR_PARSE);
  int rc = MESH_ERR_PARSE;
  char *bundle = NULL;
  mesh_certs *chain = NULL, *alone = NULL;
  size_t leaf_len = 0, total, idx, n_inter, o = 0;
  const char *w = NULL;
  const char *leaf = str_field(resp, "leaf_certificate", &leaf_len);
  json_t *inter = json_object_get(resp, "intermediate_certificates"), *v,
         *until = json_object_get(resp, "valid_until");
  if (!leaf) {
    fail(why, R_RESP_LEAF, NULL, NULL, 0);
    goto done;
  }
  if (!json_is_integer(until) || json_integer_value(until) < 0) {
    fail(why, R_RESP_VALID, NULL, NULL, 0);
    goto done;
  }
  /* Absent means none, as in proto3. */
  if (inter && !json_is_array(inter)) {
    fail(why, R_RESP_INTER, NULL, NULL, 0);
    goto done;
  }
  total = leaf_len + 1;
  json_array_foreach(inter, idx, v) {
    if (!json_is_string(v) || json_string_length(v) == 0) {
      fail(why, R_RESP_INTER, NULL, NULL, 0);
      goto done;
    }
    total += json_string_length(v) + 1; /* bounded by len: no overflow */
  }
  n_inter = inter ? json_array_size(inter) : 0;
  bundle = mesh__malloc(ctx, total + 1);
  if (!bundle) {
    rc = MESH_ERR_NOMEM;
    goto done;
  }
  put_pem(bundle, &o, leaf, leaf_len);
  json_array_foreach(inter, idx, v) put_pem(bundle, &o, json_string_value(v), json_string_length(v));
  bundle[o] = '\0';
  rc = mesh_certs_parse(ctx, bundle, o, &w, &chain);
  if (rc < 0) {
    if (why && w) *why = w;
    goto done;
  }
  /* Each field must hold exactly one certificate, so that a count match
   * proves it (the leaf field cannot smuggle a second leaf in front). */
  rc = MESH_ERR_PARSE;
  int one = mesh_certs_parse(ctx, leaf, leaf_len, &w, &alone);
  size_t leaf_count = one == 0 ? mesh_certs_count(alone) : 0;
  mesh_certs_free(alone);
  if (one == MESH_ERR_NOMEM) {
    rc = one;
    goto done;
  }
  if (leaf_count != 1 || mesh_certs_count(chain) != 1 + n_inter) {
    fail(why, R_RESP_COUNT, NULL, NULL, 0);
    goto done;
  }
  if (mesh_certs_is_ca(chain, 0)) {
    fail(why, R_RESP_CA, NULL, NULL, 0);
    goto done;
  }
  if ((uint64_t)json_integer_value(until) > mesh_certs_not_after(chain, 0)) {
    fail(why, R_RESP_AFTER, NULL, NULL, 0);
    goto done;
  }
  if (valid_until) *valid_until = (uint64_t)json_integer_value(until);
  *leaf_chain = chain;
  chain = NULL;
  rc = 0;
done:
  mesh_certs_free(chain);
  mesh__free(ctx, bundle);
  json_decref(resp);
  return rc;
}

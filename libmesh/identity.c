/* libmesh identity names (DNS and SPIFFE forms), the renewal schedule, the DRBG and keys. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <mbedtls/asn1.h>
#include <mbedtls/bignum.h>
#include <mbedtls/ecp.h>
#include <mbedtls/error.h>
#include <mbedtls/md.h>
#include <mbedtls/pem.h>
#include <mbedtls/x509.h>
#include <mbedtls/platform_util.h>

#include <mesh/error.h>
#include "ctx_internal.h"
#include "identity_internal.h"
#include "names_internal.h"

/* ---- Reasons ------------------------------------------------------------ */

/* Static, so that callers (and ctypes) can keep them without freeing. */
static const char R_EMPTY[] = "identity is empty";
static const char R_DNS_LONG[] = "DNS identity is longer than 253 bytes";
static const char R_DNS_CASE[] = "DNS identity must be lowercase";
static const char R_DNS_CHAR[] = "DNS identity has a character outside [a-z0-9.-]";
static const char R_DNS_EMPTY_LABEL[] =
    "DNS identity has an empty label (leading, trailing or doubled dot)";
static const char R_DNS_SHAPE[] =
    "DNS identity must be <sa>.<ns>.serviceaccount.identity.<control-plane-ns>.<trust-domain>";
static const char R_DNS_FORM_LONG[] =
    "identity's DNS form would be longer than 253 bytes";
static const char R_SA[] = "service account is not a DNS-1123 label "
                           "(1-63 of [a-z0-9-], starting and ending alphanumeric)";
static const char R_NS[] = "namespace is not a DNS-1123 label "
                           "(1-63 of [a-z0-9-], starting and ending alphanumeric)";
static const char R_CP[] = "control-plane namespace is not a DNS-1123 label "
                           "(1-63 of [a-z0-9-], starting and ending alphanumeric)";
static const char R_TD_DNS[] =
    "trust domain is not a lowercase DNS name (labels of [a-z0-9-], 1-63 bytes each)";
static const char R_URI_LONG[] = "SPIFFE ID is longer than 2048 bytes";
static const char R_URI_SCHEME[] = "SPIFFE ID must start with spiffe://";
static const char R_URI_SCHEME_CASE[] = "SPIFFE ID scheme must be lowercase 'spiffe'";
static const char R_URI_QUERY[] = "SPIFFE ID must not carry a query or a fragment";
static const char R_URI_NO_TD[] = "SPIFFE ID has no trust domain";
static const char R_URI_USERINFO[] = "SPIFFE ID must not carry user info";
static const char R_URI_PORT[] = "SPIFFE ID must not carry a port";
static const char R_URI_TD_CHAR[] =
    "SPIFFE trust domain must be lowercase letters, digits, '.', '-' or '_'";
static const char R_URI_TD_NOT_DNS[] =
    "SPIFFE trust domain is not a DNS name, so the identity has no DNS form";
static const char R_URI_SEG_EMPTY[] = "SPIFFE ID path has an empty segment";
static const char R_URI_SEG_DOT[] = "SPIFFE ID path segment is '.' or '..'";
static const char R_URI_SEG_CHAR[] =
    "SPIFFE ID path segment has a character outside [A-Za-z0-9._-]";
static const char R_URI_SHAPE[] = "SPIFFE ID path must be /ns/<namespace>/sa/<service-account>";

static const char DNS_MIDDLE[] = "serviceaccount.identity.";
static const char SPIFFE[] = "spiffe://";

/* ---- Parsing, without allocation -------------------------------------- */

typedef struct {
  const char *p;
  size_t n;
} span;

typedef struct {
  span sa, ns, cp, td;
} parts;

static int lower_alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

static int span_is(span s, const char *lit) { return s.n == strlen(lit) && !memcmp(s.p, lit, s.n); }

static size_t dns_form_len(const parts *pp) {
  return pp->sa.n + 1 + pp->ns.n + 1 + strlen(DNS_MIDDLE) + pp->cp.n + 1 + pp->td.n;
}

static int fail(const char **why, const char *reason) {
  if (why) *why = reason;
  return MESH_ERR_PARSE;
}

static int parse_dns(const char *s, size_t n, parts *out, const char **why) {
  if (n > MESH_IDENTITY_DNS_MAX) return fail(why, R_DNS_LONG);
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (c >= 'A' && c <= 'Z') return fail(why, R_DNS_CASE);
    if (!lower_alnum(c) && c != '-' && c != '.') return fail(why, R_DNS_CHAR);
  }
  if (s[0] == '.' || s[n - 1] == '.') return fail(why, R_DNS_EMPTY_LABEL);
  for (size_t i = 0; i + 1 < n; i++)
    if (s[i] == '.' && s[i + 1] == '.') return fail(why, R_DNS_EMPTY_LABEL);
  /* The first five labels are fixed in number; the trust domain is the rest. */
  span label[5];
  size_t start = 0, k = 0;
  for (size_t i = 0; i < n && k < 5; i++) {
    if (s[i] != '.') continue;
    label[k].p = s + start;
    label[k].n = i - start;
    k++;
    start = i + 1;
  }
  if (k < 5) return fail(why, R_DNS_SHAPE);
  span td = {s + start, n - start};
  if (!span_is(label[2], "serviceaccount") || !span_is(label[3], "identity"))
    return fail(why, R_DNS_SHAPE);
  if (!mesh__dns_label_ok(label[0].p, label[0].n)) return fail(why, R_SA);
  if (!mesh__dns_label_ok(label[1].p, label[1].n)) return fail(why, R_NS);
  if (!mesh__dns_label_ok(label[4].p, label[4].n)) return fail(why, R_CP);
  if (!mesh__dns_name_ok(td.p, td.n)) return fail(why, R_TD_DNS);
  out->sa = label[0];
  out->ns = label[1];
  out->cp = label[4];
  out->td = td;
  return 0;
}

static int spiffe_td_char(char c) { return lower_alnum(c) || c == '.' || c == '-' || c == '_'; }

static int spiffe_seg_char(char c) {
  return lower_alnum(c) || (c >= 'A' && c <= 'Z') || c == '.' || c == '-' || c == '_';
}

static int parse_spiffe(const char *s, size_t n, const char *cp_ns, parts *out, const char **why) {
  if (n > MESH_IDENTITY_SPIFFE_MAX) return fail(why, R_URI_LONG);
  size_t sl = strlen(SPIFFE);
  if (n < sl || strncasecmp(s, SPIFFE, sl) != 0) return fail(why, R_URI_SCHEME);
  if (memcmp(s, SPIFFE, sl) != 0) return fail(why, R_URI_SCHEME_CASE);
  if (memchr(s, '?', n) || memchr(s, '#', n)) return fail(why, R_URI_QUERY);
  const char *end = s + n, *auth = s + sl;
  const char *slash = memchr(auth, '/', (size_t)(end - auth));
  const char *auth_end = slash ? slash : end;
  if (auth_end == auth) return fail(why, R_URI_NO_TD);
  for (const char *c = auth; c < auth_end; c++) {
    if (*c == '@') return fail(why, R_URI_USERINFO);
  }
  for (const char *c = auth; c < auth_end; c++) {
    if (*c == ':') return fail(why, R_URI_PORT);
    if (!spiffe_td_char(*c)) return fail(why, R_URI_TD_CHAR);
  }
  /* The generic SPIFFE rules on every segment first, then Linkerd's shape. */
  span seg[4];
  size_t k = 0;
  const char *p = auth_end;
  while (p < end) {
    const char *q = p + 1;
    while (q < end && *q != '/') q++;
    span sg = {p + 1, (size_t)(q - p - 1)};
    if (sg.n == 0) return fail(why, R_URI_SEG_EMPTY);
    if (span_is(sg, ".") || span_is(sg, "..")) return fail(why, R_URI_SEG_DOT);
    for (size_t i = 0; i < sg.n; i++)
      if (!spiffe_seg_char(sg.p[i])) return fail(why, R_URI_SEG_CHAR);
    if (k < 4) seg[k] = sg;
    k++;
    p = q;
  }
  if (k != 4 || !span_is(seg[0], "ns") || !span_is(seg[2], "sa")) return fail(why, R_URI_SHAPE);
  if (!mesh__dns_label_ok(seg[1].p, seg[1].n)) return fail(why, R_NS);
  if (!mesh__dns_label_ok(seg[3].p, seg[3].n)) return fail(why, R_SA);
  span td = {auth, (size_t)(auth_end - auth)};
  if (!mesh__dns_name_ok(td.p, td.n)) return fail(why, R_URI_TD_NOT_DNS);
  span cp = {cp_ns, strlen(cp_ns)};
  if (!mesh__dns_label_ok(cp.p, cp.n)) return fail(why, R_CP);
  out->ns = seg[1];
  out->sa = seg[3];
  out->td = td;
  out->cp = cp;
  if (dns_form_len(out) > MESH_IDENTITY_DNS_MAX) return fail(why, R_DNS_FORM_LONG);
  return 0;
}

static int parse_parts(const char *s, size_t n, const char *cp_ns, parts *out, const char **why) {
  if (n == 0) return fail(why, R_EMPTY);
  /* DNS names never hold ':' or '/', so either marks a URI. */
  if (memchr(s, ':', n) || memchr(s, '/', n))
    return parse_spiffe(s, n, cp_ns ? cp_ns : MESH_IDENTITY_DEFAULT_CP_NS, out, why);
  return parse_dns(s, n, out, why);
}

/* ---- Identity objects -------------------------------------------------- */

static char *put(char **cur, const char *s, size_t n) {
  char *d = *cur;
  memcpy(d, s, n);
  d[n] = '\0';
  *cur += n + 1;
  return d;
}

/* One allocation holds the struct and every string, so that an identity
 * costs one allocation and cannot be half-built. */
static int build(mesh_ctx *ctx, const parts *pp, const char **why, mesh_identity **ret) {
  size_t dns_n = dns_form_len(pp);
  if (dns_n > MESH_IDENTITY_DNS_MAX) return fail(why, R_DNS_FORM_LONG);
  size_t uri_n = strlen(SPIFFE) + pp->td.n + 4 + pp->ns.n + 4 + pp->sa.n;
  size_t total = sizeof(mesh_identity) + pp->ns.n + pp->sa.n + pp->cp.n + pp->td.n + dns_n +
                 uri_n + 6;
  mesh_identity *id = mesh__malloc(ctx, total);
  if (!id) return MESH_ERR_NOMEM;
  char *cur = (char *)(id + 1);
  id->ctx = ctx;
  id->ns = put(&cur, pp->ns.p, pp->ns.n);
  id->sa = put(&cur, pp->sa.p, pp->sa.n);
  id->cp_ns = put(&cur, pp->cp.p, pp->cp.n);
  id->trust_domain = put(&cur, pp->td.p, pp->td.n);
  char *d = cur;
  cur += dns_n + 1;
  memcpy(d, pp->sa.p, pp->sa.n);
  d += pp->sa.n;
  *d++ = '.';
  memcpy(d, pp->ns.p, pp->ns.n);
  d += pp->ns.n;
  *d++ = '.';
  memcpy(d, DNS_MIDDLE, strlen(DNS_MIDDLE));
  d += strlen(DNS_MIDDLE);
  memcpy(d, pp->cp.p, pp->cp.n);
  d += pp->cp.n;
  *d++ = '.';
  memcpy(d, pp->td.p, pp->td.n);
  d[pp->td.n] = '\0';
  id->dns = cur - dns_n - 1;
  char *u = cur;
  memcpy(u, SPIFFE, strlen(SPIFFE));
  u += strlen(SPIFFE);
  memcpy(u, pp->td.p, pp->td.n);
  u += pp->td.n;
  memcpy(u, "/ns/", 4);
  u += 4;
  memcpy(u, pp->ns.p, pp->ns.n);
  u += pp->ns.n;
  memcpy(u, "/sa/", 4);
  u += 4;
  memcpy(u, pp->sa.p, pp->sa.n);
  u[pp->sa.n] = '\0';
  id->uri = cur;
  *ret = id;
  return 0;
}

int mesh__identity_parse_n(mesh_ctx *ctx, const char *name, size_t len, const char *cp_ns,
                           const char **why, mesh_identity **ret) {
  parts pp;
  int rc = parse_parts(name, len, cp_ns, &pp, why);
  if (rc) return rc;
  return build(ctx, &pp, why, ret);
}

int mesh_identity_parse(mesh_ctx *ctx, const char *name, const char *cp_ns, const char **why,
                        mesh_identity **ret) {
  if (!ctx || !name || !ret) return MESH_ERR_INVALID;
  return mesh__identity_parse_n(ctx, name, strlen(name), cp_ns, why, ret);
}

int mesh_identity_new(mesh_ctx *ctx, const char *ns, const char *sa, const char *cp_ns,
                      const char *trust_domain, const char **why, mesh_identity **ret) {
  if (!ctx || !ns || !sa || !ret) return MESH_ERR_INVALID;
  if (!cp_ns) cp_ns = MESH_IDENTITY_DEFAULT_CP_NS;
  if (!trust_domain) trust_domain = MESH_IDENTITY_DEFAULT_TRUST_DOMAIN;
  parts pp = {{sa, strlen(sa)}, {ns, strlen(ns)}, {cp_ns, strlen(cp_ns)},
              {trust_domain, strlen(trust_domain)}};
  if (!mesh__dns_label_ok(pp.ns.p, pp.ns.n)) return fail(why, R_NS);
  if (!mesh__dns_label_ok(pp.sa.p, pp.sa.n)) return fail(why, R_SA);
  if (!mesh__dns_label_ok(pp.cp.p, pp.cp.n)) return fail(why, R_CP);
  if (!mesh__dns_name_ok(pp.td.p, pp.td.n)) return fail(why, R_TD_DNS);
  return build(ctx, &pp, why, ret);
}

void mesh_identity_free(mesh_identity *id) {
  if (id) mesh__free(id->ctx, id);
}

const char *mesh_identity_ns(const mesh_identity *id) { return id ? id->ns : NULL; }
const char *mesh_identity_sa(const mesh_identity *id) { return id ? id->sa : NULL; }
const char *mesh_identity_cp_ns(const mesh_identity *id) { return id ? id->cp_ns : NULL; }
const char *mesh_identity_trust_domain(const mesh_identity *id) {
  return id ? id->trust_domain : NULL;
}
const char *mesh_identity_dns(const mesh_identity *id) { return id ? id->dns : NULL; }
const char *mesh_identity_uri(const mesh_identity *id) { return id ? id->uri : NULL; }

int mesh_identity_equal(const mesh_identity *a, const mesh_identity *b) {
  if (!a || !b) return 0;
  return !strcmp(a->trust_domain, b->trust_domain) && !strcmp(a->ns, b->ns) &&
         !strcmp(a->sa, b->sa);
}

int mesh_identity_match(const mesh_identity *id, const char *name, const char **why) {
  if (!id || !name) return MESH_ERR_INVALID;
  parts pp;
  int rc = parse_parts(name, strlen(name), id->cp_ns, &pp, why);
  if (rc) return rc;
  if (span_is(pp.td, id->trust_domain) && span_is(pp.ns, id->ns) && span_is(pp.sa, id->sa))
    return 0;
  return MESH_ERR_IDENTITY;
}

/* ---- Renewal schedule ---------------------------------------------------- */

uint64_t mesh_identity_renew_at(uint64_t not_before_s, uint64_t not_after_s, uint64_t now_s) {
  uint64_t delay = MESH_IDENTITY_RENEW_MIN_S;
  if (not_after_s > now_s && not_after_s > not_before_s) {
    uint64_t rem = not_after_s - now_s;
    delay = rem / 10 * 7 + rem % 10 * 7 / 10; /* 0.7 * rem, exact and without overflow */
    if (delay < MESH_IDENTITY_RENEW_MIN_S) delay = MESH_IDENTITY_RENEW_MIN_S;
    if (delay > MESH_IDENTITY_RENEW_MAX_S) delay = MESH_IDENTITY_RENEW_MAX_S;
  }
  return now_s > UINT64_MAX - delay ? UINT64_MAX : now_s + delay;
}

uint64_t mesh_identity_retry_delay_ms(uint32_t attempt, uint64_t now_s, uint64_t not_after_s,
                                      uint32_t rnd) {
  uint64_t d = MESH_IDENTITY_RETRY_MAX_MS;
  if (attempt < 32) {
    d = (uint64_t)MESH_IDENTITY_RETRY_BASE_MS << attempt;
    if (d > MESH_IDENTITY_RETRY_MAX_MS) d = MESH_IDENTITY_RETRY_MAX_MS;
  }
  /* Equal jitter: spread the fleet out, but never retry in a hot loop. */
  uint64_t half = d / 2;
  uint64_t delay = half + (uint64_t)rnd % (d - half + 1);
  if (not_after_s > now_s) {
    uint64_t left = not_after_s - now_s;
    left = left > UINT64_MAX / 1000 ? UINT64_MAX : left * 1000;
    if (delay > left) delay = left;
  }
  return delay;
}

/* ---- Randomness and mbedTLS errors ------------------------------------- */

static int rng_entropy(void *p, unsigned char *buf, size_t len) {
  mesh__rng *r = p;
  int rc = mesh_ctx_random(r->ctx, buf, len);
  if (rc) {
    r->err = rc;
    return MBEDTLS_ERR_CTR_DRBG_ENTROPY_SOURCE_FAILED;
  }
  return 0;
}

int mesh__rng_init(mesh__rng *r, mesh_ctx *ctx) {
  static const unsigned char pers[] = "libmesh identity";
  r->ctx = ctx;
  r->err = 0;
  mbedtls_ctr_drbg_init(&r->drbg);
  int rc = mbedtls_ctr_drbg_seed(&r->drbg, rng_entropy, r, pers, sizeof pers - 1);
  if (rc) {
    int err = r->err ? r->err : mesh__tls_err(rc, MESH_ERR_TLS);
    mbedtls_ctr_drbg_free(&r->drbg);
    return err;
  }
  return 0;
}

void mesh__rng_free(mesh__rng *r) { mbedtls_ctr_drbg_free(&r->drbg); }

int mesh__rng_random(void *r, unsigned char *buf, size_t len) {
  return mbedtls_ctr_drbg_random(&((mesh__rng *)r)->drbg, buf, len);
}

int mesh__tls_err(int e, int otherwise) {
  if (e >= 0) return otherwise;
  int high = (-e) & 0xFF80, low = (-e) & 0x007F;
  if (high == -MBEDTLS_ERR_PK_ALLOC_FAILED || high == -MBEDTLS_ERR_X509_ALLOC_FAILED ||
      high == -MBEDTLS_ERR_ECP_ALLOC_FAILED || high == -MBEDTLS_ERR_MD_ALLOC_FAILED ||
      high == -MBEDTLS_ERR_PEM_ALLOC_FAILED || low == -MBEDTLS_ERR_ASN1_ALLOC_FAILED ||
      low == -MBEDTLS_ERR_MPI_ALLOC_FAILED)
    return MESH_ERR_NOMEM;
  return otherwise;
}

/* ---- Keys ------------------------------------------------------------- */

static const char R_KEY_PARSE[] = "not a PEM or DER private or public key";
static const char R_KEY_ENCRYPTED[] = "encrypted private keys are not supported";
static const char R_KEY_TYPE[] = "key must be ECDSA P-256 or P-384, or RSA of 2048 bits or more";
static const char R_KEY_LONG[] = "key is larger than 64 KiB";

#define KEY_MAX_BYTES 65536u
#define KEY_PEM_CAP 16384u

int mesh__key_is_p256(const mbedtls_pk_context *pk) {
  return mbedtls_pk_can_do(pk, MBEDTLS_PK_ECKEY) &&
         mbedtls_pk_ec(*pk)->grp.id == MBEDTLS_ECP_DP_SECP256R1;
}

static int key_type_ok(const mbedtls_pk_context *pk) {
  if (mbedtls_pk_can_do(pk, MBEDTLS_PK_ECKEY)) {
    mbedtls_ecp_group_id g = mbedtls_pk_ec(*pk)->grp.id;
    return g == MBEDTLS_ECP_DP_SECP256R1 || g == MBEDTLS_ECP_DP_SECP384R1;
  }
  return mbedtls_pk_get_type(pk) == MBEDTLS_PK_RSA && mbedtls_pk_get_bitlen(pk) >= 2048;
}

/* RFC 7638: SHA-256 over the JWK's required members in lexical order. */
static int key_thumbprint(mbedtls_pk_context *pk, char out[48]) {
  out[0] = '\0';
  if (!mesh__key_is_p256(pk)) return 0;
  const mbedtls_ecp_keypair *ec = mbedtls_pk_ec(*pk);
  unsigned char x[32], y[32], hash[32];
  if (mbedtls_mpi_write_binary(&ec->Q.X, x, 32) || mbedtls_mpi_write_binary(&ec->Q.Y, y, 32))
    return MESH_ERR_TLS;
  char xs[48], ys[48], jwk[160];
  mesh__b64url_encode(x, 32, xs, sizeof xs);
  mesh__b64url_encode(y, 32, ys, sizeof ys);
  int n = snprintf(jwk, sizeof jwk, "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"%s\",\"y\":\"%s\"}",
                   xs, ys);
  if (mbedtls_md(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), (const unsigned char *)jwk,
                 (size_t)n, hash))
    return MESH_ERR_TLS;
  mesh__b64url_encode(hash, sizeof hash, out, 48);
  return 0;
}

int mesh__key_wrap(mesh_ctx *ctx, mbedtls_pk_context *pk, int has_private, mesh_key **ret) {
  unsigned char buf[KEY_PEM_CAP];
  mesh_key *k = mesh__calloc(ctx, 1, sizeof *k);
  if (!k) return MESH_ERR_NOMEM;
  k->ctx = ctx;
  int rc = key_thumbprint(pk, k->kid);
  if (rc) goto fail;
  if (has_private) {
    rc = mbedtls_pk_write_key_pem(pk, buf, sizeof buf);
    if (rc) {
      rc = mesh__tls_err(rc, MESH_ERR_TLS);
      goto fail;
    }
    k->pem = mesh__strdup(ctx, (const char *)buf);
    mbedtls_platform_zeroize(buf, sizeof buf);
    if (!k->pem) {
      rc = MESH_ERR_NOMEM;
      goto fail;
    }
  }
  rc = mbedtls_pk_write_pubkey_pem(pk, buf, sizeof buf);
  if (rc) {
    rc = mesh__tls_err(rc, MESH_ERR_TLS);
    goto fail;
  }
  k->pub_pem = mesh__strdup(ctx, (const char *)buf);
  if (!k->pub_pem) {
    rc = MESH_ERR_NOMEM;
    goto fail;
  }
  k->pk = *pk; /* the context is a handle to its key data: moving it is safe */
  mbedtls_pk_init(pk);
  *ret = k;
  return 0;
fail:
  if (k->pem) {
    mbedtls_platform_zeroize(k->pem, strlen(k->pem));
    mesh__free(ctx, k->pem);
  }
  mesh__free(ctx, k->pub_pem);
  mesh__free(ctx, k);
  return rc;
}

int mesh_key_generate(mesh_ctx *ctx, mesh_key **ret) {
  if (!ctx || !ret) return MESH_ERR_INVALID;
  mbedtls_pk_context pk;
  mbedtls_pk_init(&pk);
  int rc = mbedtls_pk_setup(&pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
  if (rc) {
    rc = mesh__tls_err(rc, MESH_ERR_TLS);
    goto out;
  }
  mesh__rng rng;
  rc = mesh__rng_init(&rng, ctx);
  if (rc) goto out;
  rc = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(pk), mesh__rng_random, &rng);
  if (rc) rc = rng.err ? rng.err : mesh__tls_err(rc, MESH_ERR_TLS);
  mesh__rng_free(&rng);
  if (!rc) rc = mesh__key_wrap(ctx, &pk, 1, ret);
out:
  mbedtls_pk_free(&pk);
  return rc;
}

int mesh_key_parse(mesh_ctx *ctx, const char *buf, size_t len, const char **why, mesh_key **ret) {
  if (!ctx || !buf || !ret) return MESH_ERR_INVALID;
  if (len > KEY_MAX_BYTES) {
    if (why) *why = R_KEY_LONG;
    return MESH_ERR_LIMIT;
  }
  /* mbedTLS takes PEM only NUL-terminated (the NUL counted in the length). */
  unsigned char *copy = mesh__malloc(ctx, len + 1);
  if (!copy) return MESH_ERR_NOMEM;
  memcpy(copy, buf, len);
  copy[len] = '\0';
  size_t n = memmem(buf, len, "-----BEGIN", 10) ? len + 1 : len;
  mbedtls_pk_context pk;
  mbedtls_pk_init(&pk);
  int has_private = 1;
  int rc = mbedtls_pk_parse_key(&pk, copy, n, NULL, 0);
  if (rc == MBEDTLS_ERR_PK_PASSWORD_REQUIRED || rc == MBEDTLS_ERR_PK_PASSWORD_MISMATCH) {
    fail(why, R_KEY_ENCRYPTED);
    rc = MESH_ERR_UNSUPPORTED;
    goto out;
  }
  if (rc) {
    mbedtls_pk_free(&pk);
    mbedtls_pk_init(&pk);
    has_private = 0;
    rc = mbedtls_pk_parse_public_key(&pk, copy, n);
  }
  if (rc) {
    int e = mesh__tls_err(rc, MESH_ERR_PARSE);
    if (e == MESH_ERR_PARSE) fail(why, R_KEY_PARSE);
    rc = e;
    goto out;
  }
  if (!key_type_ok(&pk)) {
    fail(why, R_KEY_TYPE);
    rc = MESH_ERR_UNSUPPORTED;
    goto out;
  }
  rc = mesh__key_wrap(ctx, &pk, has_private, ret);
out:
  mbedtls_pk_free(&pk);
  mbedtls_platform_zeroize(copy, len + 1);
  mesh__free(ctx, copy);
  return rc;
}

void mesh_key_free(mesh_key *k) {
  if (!k) return;
  if (k->pem) {
    mbedtls_platform_zeroize(k->pem, strlen(k->pem));
    mesh__free(k->ctx, k->pem);
  }
  mesh__free(k->ctx, k->pub_pem);
  mbedtls_pk_free(&k->pk);
  mesh__free(k->ctx, k);
}

const char *mesh_key_pem(const mesh_key *k) { return k ? k->pem : NULL; }
const char *mesh_key_public_pem(const mesh_key *k) { return k ? k->pub_pem : NULL; }
const char *mesh_key_id(const mesh_key *k) { return k ? k->kid : NULL; }

mbedtls_pk_context *mesh__key_pk(const mesh_key *k) { return (mbedtls_pk_context *)&k->pk; }

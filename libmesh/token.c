/* libmesh identity tokens: compact JWS (ES256) that prove a workload's namespace and service account. */
#include <string.h>

#include <jansson.h>
#include <mbedtls/bignum.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/md.h>

#include <mesh/error.h>
#include "ctx_internal.h"
#include "identity_internal.h"
#include "names_internal.h"

/* ---- base64url ---------------------------------------------------------- */

static const char B64URL[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t mesh__b64url_encode(const unsigned char *in, size_t n, char *out, size_t cap) {
  size_t need = n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0);
  if (cap < need + 1) return (size_t)-1;
  size_t o = 0, i = 0;
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
    out[o++] = B64URL[v >> 18 & 63];
    out[o++] = B64URL[v >> 12 & 63];
    out[o++] = B64URL[v >> 6 & 63];
    out[o++] = B64URL[v & 63];
  }
  if (n - i == 1) {
    uint32_t v = (uint32_t)in[i] << 16;
    out[o++] = B64URL[v >> 18 & 63];
    out[o++] = B64URL[v >> 12 & 63];
  } else if (n - i == 2) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
    out[o++] = B64URL[v >> 18 & 63];
    out[o++] = B64URL[v >> 12 & 63];
    out[o++] = B64URL[v >> 6 & 63];
  }
  out[o] = '\0';
  return o;
}

static int b64url_val(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

/* Strict: no padding, no whitespace, and the unused bits of the last
 * character must be zero, so that every value has one encoding. */
size_t mesh__b64url_decode(const char *in, size_t n, unsigned char *out, size_t cap) {
  if (n % 4 == 1) return (size_t)-1;
  size_t need = n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0);
  if (need > cap) return (size_t)-1;
  size_t o = 0;
  for (size_t i = 0; i < n; i += 4) {
    size_t k = n - i < 4 ? n - i : 4;
    uint32_t v = 0;
    for (size_t j = 0; j < 4; j++) {
      int d = j < k ? b64url_val(in[i + j]) : 0;
      if (d < 0) return (size_t)-1;
      v = v << 6 | (uint32_t)d;
    }
    out[o++] = (unsigned char)(v >> 16);
    if (k == 2 && (v & 0xFFFF)) return (size_t)-1;
    if (k >= 3) out[o++] = (unsigned char)(v >> 8);
    if (k == 3 && (v & 0xFF)) return (size_t)-1;
    if (k == 4) out[o++] = (unsigned char)v;
  }
  return o;
}

/* ---- Reasons ------------------------------------------------------------ */

static const char R_TOK_LONG[] = "token is longer than 8192 bytes";
static const char R_TOK_SHAPE[] = "token is not three non-empty base64url segments separated by '.'";
static const char R_TOK_HEADER[] = "token header is not base64url-encoded JSON object";
static const char R_TOK_ALG[] = "token algorithm is not ES256";
static const char R_TOK_TYP[] = "token type is not JWT";
static const char R_TOK_CRIT[] = "token has critical header parameters";
static const char R_TOK_KID[] = "token was signed by another key (key id does not match)";
static const char R_TOK_SIGLEN[] = "token signature is not 64 bytes of base64url (ES256 r||s)";
static const char R_TOK_SIG[] = "token signature does not verify";
static const char R_TOK_CLAIMS[] =
    "token claims are not a JSON object with string ns, sa, aud and integer exp, iat";
static const char R_TOK_EXPIRED[] = "token has expired";
static const char R_TOK_FUTURE[] = "token was issued in the future";
static const char R_TOK_AUD[] = "token audience does not match";
static const char R_TOK_ID[] = "token names another namespace or service account than the CSR";

static int fail(const char **why, const char *reason, int err) {
  if (why) *why = reason;
  return err;
}

/* ---- Signing and verifying -------------------------------------------- */

#define SIG_B64_LEN 86 /* 64 bytes */

static int aud_ok(const char *aud) {
  size_t n = strlen(aud);
  if (n == 0 || n > 256) return 0;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)aud[i] < 0x20 || (unsigned char)aud[i] > 0x7e) return 0;
  return 1;
}

/* b64url(json) appended at out[*o]. */
static int put_json(json_t *j, char *out, size_t cap, size_t *o) {
  if (!j) return MESH_ERR_NOMEM;
  char *s = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  if (!s) return MESH_ERR_NOMEM;
  size_t n = mesh__b64url_encode((const unsigned char *)s, strlen(s), out + *o, cap - *o);
  /* Freed by jansson's own allocator, which the application may have replaced. */
  json_malloc_t jm;
  json_free_t jf;
  json_get_alloc_funcs(&jm, &jf);
  jf(s);
  if (n == (size_t)-1) return MESH_ERR_LIMIT;
  *o += n;
  return 0;
}

int mesh_token_mint(const mesh_key *key, const char *ns, const char *sa, const char *aud,
                    uint64_t iat_s, uint64_t exp_s, char *buf, size_t cap, size_t *ret_len) {
  if (!key || !ns || !sa || !aud || !buf || !key->pem) return MESH_ERR_INVALID;
  if (!mesh__key_is_p256(&key->pk)) return MESH_ERR_UNSUPPORTED;
  if (!mesh__dns_label_ok(ns, strlen(ns)) || !mesh__dns_label_ok(sa, strlen(sa)) || !aud_ok(aud))
    return MESH_ERR_PARSE;
  if (exp_s <= iat_s || exp_s > (uint64_t)INT64_MAX) return MESH_ERR_RANGE;

  char tok[MESH_TOKEN_MAX_LEN + 1];
  size_t o = 0;
  int rc = put_json(json_pack("{s:s, s:s, s:s}", "alg", "ES256", "typ", "JWT", "kid", key->kid),
                    tok, sizeof tok, &o);
  if (rc) return rc;
  tok[o++] = '.';
  rc = put_json(json_pack("{s:s, s:s, s:s, s:I, s:I}", "ns", ns, "sa", sa, "aud", aud, "exp",
                          (json_int_t)exp_s, "iat", (json_int_t)iat_s),
                tok, sizeof tok, &o);
  if (rc) return rc;

  unsigned char hash[32], sig[64];
  if (mbedtls_md(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), (const unsigned char *)tok, o, hash))
    return MESH_ERR_TLS;
  /* A private copy of the group: mbedTLS may cache tables in it, and the
   * key may be shared between threads. */
  mbedtls_ecp_group grp;
  mbedtls_mpi r, s;
  mbedtls_ecp_group_init(&grp);
  mbedtls_mpi_init(&r);
  mbedtls_mpi_init(&s);
  mesh__rng rng;
  rc = mesh__rng_init(&rng, key->ctx);
  if (rc) goto out;
  const mbedtls_ecp_keypair *ec = mbedtls_pk_ec(key->pk);
  /* Deterministic ECDSA (RFC 6979): the DRBG only blinds the computation. */
  int e = mbedtls_ecp_group_load(&grp, MBEDTLS_ECP_DP_SECP256R1);
  if (!e)
    e = mbedtls_ecdsa_sign_det_ext(&grp, &r, &s, &ec->d, hash, sizeof hash, MBEDTLS_MD_SHA256,
                                   mesh__rng_random, &rng);
  /* JWS wants r||s, each 32 bytes big-endian, not the DER that X.509 uses. */
  if (!e) e = mbedtls_mpi_write_binary(&r, sig, 32);
  if (!e) e = mbedtls_mpi_write_binary(&s, sig + 32, 32);
  if (e) rc = rng.err ? rng.err : mesh__tls_err(e, MESH_ERR_TLS);
  mesh__rng_free(&rng);
  if (rc) goto out;
  if (o + 1 + SIG_B64_LEN > MESH_TOKEN_MAX_LEN || o + 1 + SIG_B64_LEN + 1 > cap) {
    rc = MESH_ERR_LIMIT;
    goto out;
  }
  tok[o++] = '.';
  o += mesh__b64url_encode(sig, sizeof sig, tok + o, sizeof tok - o);
  memcpy(buf, tok, o + 1);
  if (ret_len) *ret_len = o;
out:
  mbedtls_ecp_group_free(&grp);
  mbedtls_mpi_free(&r);
  mbedtls_mpi_free(&s);
  return rc;
}

/* Decode a base64url JSON object; NULL with *err set when it is not one. */
static json_t *decode_json(const char *seg, size_t n, int *err) {
  unsigned char raw[MESH_TOKEN_MAX_LEN];
  size_t len = mesh__b64url_decode(seg, n, raw, sizeof raw);
  *err = MESH_ERR_PARSE;
  if (len == (size_t)-1) return NULL;
  json_error_t je;
  json_t *j = json_loadb((const char *)raw, len, JSON_REJECT_DUPLICATES, &je);
  if (!j) {
    if (json_error_code(&je) == json_error_out_of_memory) *err = MESH_ERR_NOMEM;
    return NULL;
  }
  if (!json_is_object(j)) {
    json_decref(j);
    return NULL;
  }
  return j;
}

static int check_header(const mesh_key *key, const char *seg, size_t n, const char **why) {
  int err;
  json_t *h = decode_json(seg, n, &err);
  if (!h) return err == MESH_ERR_PARSE ? fail(why, R_TOK_HEADER, err) : err;
  int rc = 0;
  json_t *alg = json_object_get(h, "alg"), *typ = json_object_get(h, "typ"),
         *kid = json_object_get(h, "kid");
  if (!json_is_string(alg) || strcmp(json_string_value(alg), "ES256"))
    rc = fail(why, R_TOK_ALG, MESH_ERR_DENIED);
  else if (typ && (!json_is_string(typ) || strcmp(json_string_value(typ), "JWT")))
    rc = fail(why, R_TOK_TYP, MESH_ERR_PARSE);
  else if (json_object_get(h, "crit"))
    rc = fail(why, R_TOK_CRIT, MESH_ERR_DENIED);
  else if (kid && (!json_is_string(kid) || strcmp(json_string_value(kid), key->kid)))
    rc = fail(why, R_TOK_KID, MESH_ERR_DENIED);
  json_decref(h);
  return rc;
}

static int check_signature(const mesh_key *key, const char *token, size_t signed_len,
                           const char *seg, size_t n, const char **why) {
  unsigned char sig[64], hash[32];
  if (n != SIG_B64_LEN || mesh__b64url_decode(seg, n, sig, sizeof sig) != sizeof sig)
    return fail(why, R_TOK_SIGLEN, MESH_ERR_PARSE);
  if (mbedtls_md(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), (const unsigned char *)token,
                 signed_len, hash))
    return MESH_ERR_TLS;
  mbedtls_ecp_group grp;
  mbedtls_mpi r, s;
  mbedtls_ecp_group_init(&grp);
  mbedtls_mpi_init(&r);
  mbedtls_mpi_init(&s);
  int rc = mbedtls_ecp_group_load(&grp, MBEDTLS_ECP_DP_SECP256R1);
  if (!rc) rc = mbedtls_mpi_read_binary(&r, sig, 32);
  if (!rc) rc = mbedtls_mpi_read_binary(&s, sig + 32, 32);
  if (rc) {
    rc = mesh__tls_err(rc, MESH_ERR_TLS);
  } else {
    const mbedtls_ecp_keypair *ec = mbedtls_pk_ec(key->pk);
    int e = mbedtls_ecdsa_verify(&grp, hash, sizeof hash, &ec->Q, &r, &s);
    if (e) rc = mesh__tls_err(e, MESH_ERR_DENIED);
    if (rc == MESH_ERR_DENIED) fail(why, R_TOK_SIG, rc);
  }
  mbedtls_ecp_group_free(&grp);
  mbedtls_mpi_free(&r);
  mbedtls_mpi_free(&s);
  return rc;
}

static int aud_matches(json_t *a, const char *aud) {
  if (json_is_string(a)) return !strcmp(json_string_value(a), aud);
  size_t i;
  json_t *v;
  json_array_foreach(a, i, v) {
    if (json_is_string(v) && !strcmp(json_string_value(v), aud)) return 1;
  }
  return 0;
}

static int aud_shape_ok(json_t *a) {
  if (json_is_string(a)) return 1;
  if (!json_is_array(a) || json_array_size(a) == 0) return 0;
  size_t i;
  json_t *v;
  json_array_foreach(a, i, v) {
    if (!json_is_string(v)) return 0;
  }
  return 1;
}

static int check_claims(const char *seg, size_t n, const char *aud, uint64_t now_s,
                        const mesh_identity *claimed, const char **why) {
  int err;
  json_t *c = decode_json(seg, n, &err);
  if (!c) return err == MESH_ERR_PARSE ? fail(why, R_TOK_CLAIMS, err) : err;
  json_t *ns = json_object_get(c, "ns"), *sa = json_object_get(c, "sa"),
         *au = json_object_get(c, "aud"), *exp = json_object_get(c, "exp"),
         *iat = json_object_get(c, "iat");
  int rc = 0;
  if (!json_is_string(ns) || !json_is_string(sa) || !aud_shape_ok(au) || !json_is_integer(exp) ||
      !json_is_integer(iat) || json_integer_value(exp) < 0 || json_integer_value(iat) < 0)
    rc = fail(why, R_TOK_CLAIMS, MESH_ERR_PARSE);
  else if (now_s >= (uint64_t)json_integer_value(exp))
    rc = fail(why, R_TOK_EXPIRED, MESH_ERR_EXPIRED);
  else if ((uint64_t)json_integer_value(iat) > now_s + MESH_TOKEN_CLOCK_SKEW_S)
    rc = fail(why, R_TOK_FUTURE, MESH_ERR_EXPIRED);
  else if (!aud_matches(au, aud))
    rc = fail(why, R_TOK_AUD, MESH_ERR_DENIED);
  else if (strcmp(json_string_value(ns), claimed->ns) || strcmp(json_string_value(sa), claimed->sa))
    rc = fail(why, R_TOK_ID, MESH_ERR_IDENTITY);
  json_decref(c);
  return rc;
}

int mesh_token_verify(const mesh_key *key, const char *token, size_t len, const char *aud,
                      uint64_t now_s, const mesh_identity *claimed, const char **why) {
  if (!key || !token || !aud || !claimed) return MESH_ERR_INVALID;
  if (!mesh__key_is_p256(&key->pk)) return MESH_ERR_UNSUPPORTED;
  if (len > MESH_TOKEN_MAX_LEN) return fail(why, R_TOK_LONG, MESH_ERR_LIMIT);
  if (now_s > UINT64_MAX - MESH_TOKEN_CLOCK_SKEW_S) return MESH_ERR_RANGE;
  const char *d1 = memchr(token, '.', len);
  const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
  if (!d1 || !d2 || d1 == token || d2 == d1 + 1 || d2 + 1 == token + len ||
      memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token)))
    return fail(why, R_TOK_SHAPE, MESH_ERR_PARSE);
  /* The header says how to check the signature; the claims are read only
   * once the signature holds, so forged input reaches as little code as
   * possible. */
  int rc = check_header(key, token, (size_t)(d1 - token), why);
  if (rc) return rc;
  rc = check_signature(key, token, (size_t)(d2 - token), d2 + 1, len - (size_t)(d2 + 1 - token),
                       why);
  if (rc) return rc;
  return check_claims(d1 + 1, (size_t)(d2 - d1 - 1), aud, now_s, claimed, why);
}

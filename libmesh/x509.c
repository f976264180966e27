/* libmesh identity X.509: CSRs, certificate bundles, chain verification and the CA. */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include <mbedtls/asn1.h>
#include <mbedtls/asn1write.h>
#include <mbedtls/bignum.h>
#include <mbedtls/md.h>
#include <mbedtls/oid.h>
#include <mbedtls/pem.h>
#include <mbedtls/platform.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/x509_crt.h>
#include <mbedtls/x509_csr.h>

#include <mesh/error.h>
#include "ctx_internal.h"
#include "identity_internal.h"

#define OID_LEN(o) MBEDTLS_OID_SIZE(o)
#define SEQ (MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE)
#define SET (MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SET)
/* The largest certificate or CSR we write: a leaf is ~700 bytes, a CA
 * certificate signed by RSA-4096 under 2 KiB. */
#define DER_CAP 8192u
/* Largest X.509 time (RFC 5280 4.1.2.5: 99991231235959Z means "no end"). */
#define TIME_MAX 253402300799ull

static int fail(const char **why, const char *reason, int err) {
  if (why) *why = reason;
  return err;
}

/* ---- Time ------------------------------------------------------------- */

/* Howard Hinnant's days_from_civil / civil_from_days: exact, no time zone. */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400;
  unsigned yoe = (unsigned)(y - era * 400);
  unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d) {
  z += 719468;
  int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  unsigned doe = (unsigned)(z - era * 146097);
  unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  unsigned mp = (5 * doy + 2) / 153;
  *d = doy - (153 * mp + 2) / 5 + 1;
  *m = mp < 10 ? mp + 3 : mp - 9;
  *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static uint64_t x509_epoch(const mbedtls_x509_time *t) {
  int64_t days = days_from_civil(t->year, (unsigned)t->mon, (unsigned)t->day);
  int64_t s = days * 86400 + t->hour * 3600 + t->min * 60 + t->sec;
  return s < 0 ? 0 : (uint64_t)s;
}

/* "YYYYMMDDhhmmss", as mbedtls_x509write_crt_set_validity wants it. */
static void x509_timestr(uint64_t t, char out[40]) {
  if (t > TIME_MAX) t = TIME_MAX;
  int64_t y;
  unsigned m, d;
  civil_from_days((int64_t)(t / 86400), &y, &m, &d);
  unsigned rem = (unsigned)(t % 86400);
  snprintf(out, 40, "%04u%02u%02u%02u%02u%02u", (unsigned)y, m, d, rem / 3600, rem / 60 % 60,
           rem % 60);
}

static uint64_t sat_add(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

/* ---- DER walking -------------------------------------------------------- */

/* Find extension `oid` in an Extensions SEQUENCE spanning exactly [p, end).
 * 1 found, 0 absent, MESH_ERR_PARSE when malformed or repeated (RFC 5280
 * forbids repeating an extension, and a second SAN would be a way around
 * the checks below). */
static int ext_find(unsigned char *p, const unsigned char *end, const char *oid, size_t oid_len,
                    unsigned char **val, size_t *val_len, int *critical) {
  size_t len;
  if (mbedtls_asn1_get_tag(&p, end, &len, SEQ) || p + len != end) return MESH_ERR_PARSE;
  int found = 0;
  while (p < end) {
    size_t elen, olen, vlen;
    if (mbedtls_asn1_get_tag(&p, end, &elen, SEQ)) return MESH_ERR_PARSE;
    unsigned char *eend = p + elen;
    if (mbedtls_asn1_get_tag(&p, eend, &olen, MBEDTLS_ASN1_OID)) return MESH_ERR_PARSE;
    unsigned char *o = p;
    p += olen;
    int crit = 0;
    if (p < eend && *p == MBEDTLS_ASN1_BOOLEAN && mbedtls_asn1_get_bool(&p, eend, &crit))
      return MESH_ERR_PARSE;
    if (mbedtls_asn1_get_tag(&p, eend, &vlen, MBEDTLS_ASN1_OCTET_STRING) || p + vlen != eend)
      return MESH_ERR_PARSE;
    if (olen == oid_len && !memcmp(o, oid, olen)) {
      if (found) return MESH_ERR_PARSE;
      found = 1;
      *val = p;
      *val_len = vlen;
      if (critical) *critical = crit;
    }
    p = eend;
  }
  return found;
}

/* One GeneralName (RFC 5280 4.2.1.6). */
typedef struct {
  int type; /* MESH_SAN_* */
  const unsigned char *p;
  size_t n;
} gname;

/* Open a GeneralNames SEQUENCE spanning [*p, end). */
static int san_open(unsigned char **p, const unsigned char *end) {
  size_t len;
  if (mbedtls_asn1_get_tag(p, end, &len, SEQ) || *p + len != end || len == 0)
    return MESH_ERR_PARSE;
  return 0;
}

/* The next name: 1, 0 at the end, MESH_ERR_PARSE. */
static int san_next(unsigned char **p, const unsigned char *end, gname *g) {
  if (*p >= end) return 0;
  unsigned char tag = **p;
  (*p)++;
  /* Every GeneralName is context-specific with a one-byte tag number. */
  if ((tag & 0xC0) != MBEDTLS_ASN1_CONTEXT_SPECIFIC || (tag & 0x1F) == 0x1F) return MESH_ERR_PARSE;
  size_t n;
  if (mbedtls_asn1_get_len(p, end, &n)) return MESH_ERR_PARSE;
  int num = tag & 0x1F, constructed = (tag & MBEDTLS_ASN1_CONSTRUCTED) != 0;
  switch (num) {
  case 1: g->type = MESH_SAN_EMAIL; break;
  case 2: g->type = MESH_SAN_DNS; break;
  case 6: g->type = MESH_SAN_URI; break;
  case 7: g->type = MESH_SAN_IP; break;
  default: g->type = MESH_SAN_OTHER; break;
  }
  if (g->type != MESH_SAN_OTHER && constructed) return MESH_ERR_PARSE;
  g->p = *p;
  g->n = n;
  *p += n;
  return 1;
}

typedef struct {
  int ndns, nuri, nother;
  gname dns, uri;
} san_summary;

static int san_summarize(unsigned char *p, size_t len, san_summary *s) {
  memset(s, 0, sizeof *s);
  const unsigned char *end = p + len;
  if (san_open(&p, end)) return MESH_ERR_PARSE;
  gname g;
  int rc;
  while ((rc = san_next(&p, end, &g)) == 1) {
    if (g.type == MESH_SAN_DNS) {
      if (s->ndns++ == 0) s->dns = g;
    } else if (g.type == MESH_SAN_URI) {
      if (s->nuri++ == 0) s->uri = g;
    } else {
      s->nother++;
    }
  }
  return rc;
}

/* ---- Identity from SANs ------------------------------------------------- */

static const char R_NO_SAN[] = "certificate has no DNS or URI SAN naming a workload";
static const char R_MULTI_DNS[] = "certificate has more than one DNS SAN";
static const char R_MULTI_URI[] = "certificate has more than one URI SAN";
static const char R_SAN_DNS_NOT_ID[] = "DNS SAN is not a workload identity";
static const char R_SAN_URI_NOT_ID[] = "URI SAN is not a workload SPIFFE ID";
static const char R_SAN_DISAGREE[] = "DNS SAN and URI SAN name different workloads";
static const char R_SAN_MALFORMED[] = "subjectAltName extension is malformed";
static const char R_CERT_IS_CA[] = "certificate is a CA: it names no workload";
static const char R_EXT_MALFORMED[] = "certificate extensions are malformed";

/* The identity in a DNS and/or URI SAN, which must agree. */
static int identity_from_summary(mesh_ctx *ctx, const san_summary *s, const char **why,
                                 mesh_identity **ret) {
  if (s->ndns > 1) return fail(why, R_MULTI_DNS, MESH_ERR_IDENTITY);
  if (s->nuri > 1) return fail(why, R_MULTI_URI, MESH_ERR_IDENTITY);
  if (!s->ndns && !s->nuri) return fail(why, R_NO_SAN, MESH_ERR_IDENTITY);
  mesh_identity *a = NULL, *b = NULL;
  int rc;
  if (s->ndns) {
    rc = mesh__identity_parse_n(ctx, (const char *)s->dns.p, s->dns.n, NULL, NULL, &a);
    if (rc == MESH_ERR_PARSE) return fail(why, R_SAN_DNS_NOT_ID, MESH_ERR_IDENTITY);
    if (rc) return rc;
  }
  if (s->nuri) {
    rc = mesh__identity_parse_n(ctx, (const char *)s->uri.p, s->uri.n, a ? a->cp_ns : NULL, NULL,
                                &b);
    if (rc) {
      mesh_identity_free(a);
      return rc == MESH_ERR_PARSE ? fail(why, R_SAN_URI_NOT_ID, MESH_ERR_IDENTITY) : rc;
    }
  }
  if (a && b && !mesh_identity_equal(a, b)) {
    mesh_identity_free(a);
    mesh_identity_free(b);
    return fail(why, R_SAN_DISAGREE, MESH_ERR_IDENTITY);
  }
  if (a) {
    mesh_identity_free(b);
    *ret = a;
  } else {
    *ret = b;
  }
  return 0;
}

int mesh__identity_from_crt(mesh_ctx *ctx, const mbedtls_x509_crt *crt, const char **why,
                            mesh_identity **ret) {
  if (crt->ca_istrue) return fail(why, R_CERT_IS_CA, MESH_ERR_IDENTITY);
  unsigned char *val = NULL;
  size_t vlen = 0;
  int rc = 0;
  if (crt->v3_ext.len)
    rc = ext_find(crt->v3_ext.p, crt->v3_ext.p + crt->v3_ext.len, MBEDTLS_OID_SUBJECT_ALT_NAME,
                  OID_LEN(MBEDTLS_OID_SUBJECT_ALT_NAME), &val, &vlen, NULL);
  if (rc < 0) return fail(why, R_EXT_MALFORMED, MESH_ERR_IDENTITY);
  if (rc == 0) return fail(why, R_NO_SAN, MESH_ERR_IDENTITY);
  san_summary s;
  if (san_summarize(val, vlen, &s) < 0) return fail(why, R_SAN_MALFORMED, MESH_ERR_IDENTITY);
  return identity_from_summary(ctx, &s, why, ret);
}

/* ---- Writing extensions -------------------------------------------------- */

/* mbedTLS 2.28 has no SAN writer: GeneralNames { [2] dns, [6] uri }. The
 * ASN.1 writer works backwards from the end of buf. */
static int write_san(const char *dns, const char *uri, unsigned char *buf, size_t cap,
                     unsigned char **out, size_t *out_len) {
  unsigned char *p = buf + cap;
  size_t len = 0;
  int ret;
  MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_raw_buffer(&p, buf, (const unsigned char *)uri,
                                                          strlen(uri)));
  MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_len(&p, buf, strlen(uri)));
  MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONTEXT_SPECIFIC | 6));
  MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_raw_buffer(&p, buf, (const unsigned char *)dns,
                                                          strlen(dns)));
  MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_len(&p, buf, strlen(dns)));
  MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONTEXT_SPECIFIC | 2));
  MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_len(&p, buf, len));
  MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_tag(&p, buf, SEQ));
  *out = p;
  *out_len = len;
  return 0;
}

/* extKeyUsage: serverAuth, clientAuth (mbedTLS 2.28 has no writer for it). */
static int write_eku(unsigned char *buf, size_t cap, unsigned char **out, size_t *out_len) {
  unsigned char *p = buf + cap;
  size_t len = 0;
  int ret;
  MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_oid(&p, buf, MBEDTLS_OID_CLIENT_AUTH,
                                                   OID_LEN(MBEDTLS_OID_CLIENT_AUTH)));
  MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_oid(&p, buf, MBEDTLS_OID_SERVER_AUTH,
                                                   OID_LEN(MBEDTLS_OID_SERVER_AUTH)));
  MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_len(&p, buf, len));
  MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_tag(&p, buf, SEQ));
  *out = p;
  *out_len = len;
  return 0;
}

/* authorityKeyIdentifier { [0] keyIdentifier }. Written from the issuer's
 * own subjectKeyIdentifier, because OpenSSL refuses a chain whose AKI does
 * not match the issuer's SKI (mbedTLS's writer would recompute it). */
static int write_aki(const unsigned char *kid, size_t kid_len, unsigned char *buf, size_t cap,
                     unsigned char **out, size_t *out_len) {
  unsigned char *p = buf + cap;
  size_t len = 0;
  int ret;
  MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_raw_buffer(&p, buf, kid, kid_len));
  MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_len(&p, buf, kid_len));
  MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONTEXT_SPECIFIC | 0));
  MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_len(&p, buf, len));
  MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_tag(&p, buf, SEQ));
  *out = p;
  *out_len = len;
  return 0;
}

/* RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits, the way
 * mbedtls_x509write_crt_set_subject_key_identifier computes it. */
static int key_id_of(mbedtls_pk_context *pk, unsigned char out[20]) {
  unsigned char buf[MBEDTLS_MPI_MAX_SIZE * 2 + 20];
  unsigned char *p = buf + sizeof buf;
  int len = mbedtls_pk_write_pubkey(&p, buf, pk);
  if (len < 0) return mesh__tls_err(len, MESH_ERR_TLS);
  if (mbedtls_md(mbedtls_md_info_from_type(MBEDTLS_MD_SHA1), p, (size_t)len, out))
    return MESH_ERR_TLS;
  return 0;
}

/* ---- PEM -------------------------------------------------------------- */

static char *pem_of(mesh_ctx *ctx, const char *header, const char *footer,
                    const unsigned char *der, size_t len) {
  size_t cap = len / 3 * 4 + len / 48 + 128;
  char *out = mesh__malloc(ctx, cap);
  if (!out) return NULL;
  size_t olen;
  if (mbedtls_pem_write_buffer(header, footer, der, len, (unsigned char *)out, cap, &olen)) {
    mesh__free(ctx, out);
    return NULL;
  }
  return out;
}

#define PEM_CRT_BEGIN "-----BEGIN CERTIFICATE-----\n"
#define PEM_CRT_END "-----END CERTIFICATE-----\n"
#define PEM_CSR_BEGIN "-----BEGIN CERTIFICATE REQUEST-----\n"
#define PEM_CSR_END "-----END CERTIFICATE REQUEST-----\n"

/* A NUL-terminated copy, because mbedTLS recognises PEM only that way.
 * *n is the length to hand to mbedTLS: the NUL counts for PEM, not DER. */
static unsigned char *pem_input(mesh_ctx *ctx, const char *buf, size_t len, size_t *n) {
  unsigned char *copy = mesh__malloc(ctx, len + 1);
  if (!copy) return NULL;
  memcpy(copy, buf, len);
  copy[len] = '\0';
  *n = memmem(buf, len, "-----BEGIN", 10) ? len + 1 : len;
  return copy;
}

/* ---- CSRs ------------------------------------------------------------- */

struct mesh_csr {
  mesh_ctx *ctx;
  unsigned char *der;
  size_t der_len;
  char *pem;
  /* Views into der. */
  unsigned char *cri, *subject, *san, *sig;
  size_t cri_len, subject_len, san_len, sig_len;
  mbedtls_md_type_t md;
  mbedtls_pk_context pk;
};

static const char R_CSR_PEM[] = "not a PEM or DER certificate signing request";
static const char R_CSR_DER[] = "certificate signing request is malformed DER";
static const char R_CSR_LONG[] = "certificate signing request is larger than 16 KiB";
static const char R_CSR_VERSION[] = "certificate signing request version must be 1";
static const char R_CSR_KEY_BAD[] = "certificate signing request's public key is malformed";
static const char R_CSR_ATTR[] = "certificate signing request carries an attribute "
                                 "other than one extensionRequest";
static const char R_CSR_EXT[] = "certificate signing request's extensions are malformed or repeated";
static const char R_CSR_SIGALG[] = "certificate signing request must be signed with ECDSA "
                                   "and SHA-256, SHA-384 or SHA-512";
static const char R_CSR_KEYTYPE[] = "workload keys must be ECDSA P-256";
static const char R_CSR_SIG[] = "certificate signing request signature does not verify";
static const char R_CSR_NO_SAN[] = "certificate signing request has no subjectAltName";
static const char R_CSR_SANS[] = "certificate signing request must carry exactly two SANs: "
                                 "one DNS and one URI identity";
static const char R_CSR_WRONG_ID[] =
    "certificate signing request names another identity than the one proved";
static const char R_CSR_SUBJECT[] =
    "certificate signing request subject must be empty or exactly CN=<DNS identity>";

static int csr_parse_der(mesh_csr *c, const char **why) {
  unsigned char *p = c->der;
  const unsigned char *end = p + c->der_len;
  size_t len;
  if (mbedtls_asn1_get_tag(&p, end, &len, SEQ) || p + len != end)
    return fail(why, R_CSR_DER, MESH_ERR_PARSE);
  c->cri = p;
  if (mbedtls_asn1_get_tag(&p, end, &len, SEQ)) return fail(why, R_CSR_DER, MESH_ERR_PARSE);
  unsigned char *cri_end = p + len;
  c->cri_len = (size_t)(cri_end - c->cri);
  int version;
  if (mbedtls_asn1_get_int(&p, cri_end, &version)) return fail(why, R_CSR_DER, MESH_ERR_PARSE);
  if (version != 0) return fail(why, R_CSR_VERSION, MESH_ERR_PARSE);
  /* Parsed by hand: mbedTLS 2.28 refuses an empty subject, which PKCS#10 allows. */
  if (mbedtls_asn1_get_tag(&p, cri_end, &len, SEQ)) return fail(why, R_CSR_DER, MESH_ERR_PARSE);
  c->subject = p;
  c->subject_len = len;
  p += len;
  int rc = mbedtls_pk_parse_subpubkey(&p, cri_end, &c->pk);
  if (rc) {
    rc = mesh__tls_err(rc, MESH_ERR_PARSE);
    return rc == MESH_ERR_PARSE ? fail(why, R_CSR_KEY_BAD, rc) : rc;
  }
  if (mbedtls_asn1_get_tag(&p, cri_end, &len,
                           MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_ASN1_CONSTRUCTED | 0) ||
      p + len != cri_end)
    return fail(why, R_CSR_DER, MESH_ERR_PARSE);
  /* Attributes: mbedTLS 2.28 skips them, so extensionRequest is read here. */
  int seen_ext = 0;
  while (p < cri_end) {
    size_t alen, olen, slen;
    if (mbedtls_asn1_get_tag(&p, cri_end, &alen, SEQ)) return fail(why, R_CSR_DER, MESH_ERR_PARSE);
    unsigned char *aend = p + alen;
    if (mbedtls_asn1_get_tag(&p, aend, &olen, MBEDTLS_ASN1_OID))
      return fail(why, R_CSR_DER, MESH_ERR_PARSE);
    int is_ext = olen == OID_LEN(MBEDTLS_OID_PKCS9_CSR_EXT_REQ) &&
                 !memcmp(p, MBEDTLS_OID_PKCS9_CSR_EXT_REQ, olen);
    p += olen;
    if (!is_ext || seen_ext) return fail(why, R_CSR_ATTR, MESH_ERR_PARSE);
    seen_ext = 1;
    if (mbedtls_asn1_get_tag(&p, aend, &slen, SET) || p + slen != aend)
      return fail(why, R_CSR_DER, MESH_ERR_PARSE);
    int found = ext_find(p, aend, MBEDTLS_OID_SUBJECT_ALT_NAME,
                         OID_LEN(MBEDTLS_OID_SUBJECT_ALT_NAME), &c->san, &c->san_len, NULL);
    if (found < 0) return fail(why, R_CSR_EXT, MESH_ERR_PARSE);
    p = aend;
  }
  mbedtls_x509_buf sig_oid, sig_params, sig;
  memset(&sig_params, 0, sizeof sig_params);
  if (mbedtls_x509_get_alg(&p, end, &sig_oid, &sig_params) || mbedtls_x509_get_sig(&p, end, &sig) ||
      p != end)
    return fail(why, R_CSR_DER, MESH_ERR_PARSE);
  mbedtls_pk_type_t pk_alg;
  void *opts = NULL;
  if (mbedtls_x509_get_sig_alg(&sig_oid, &sig_params, &c->md, &pk_alg, &opts))
    return fail(why, R_CSR_SIGALG, MESH_ERR_UNSUPPORTED);
  mbedtls_free(opts);
  if (pk_alg != MBEDTLS_PK_ECDSA ||
      (c->md != MBEDTLS_MD_SHA256 && c->md != MBEDTLS_MD_SHA384 && c->md != MBEDTLS_MD_SHA512))
    return fail(why, R_CSR_SIGALG, MESH_ERR_UNSUPPORTED);
  if (!mesh__key_is_p256(&c->pk)) return fail(why, R_CSR_KEYTYPE, MESH_ERR_UNSUPPORTED);
  c->sig = sig.p;
  c->sig_len = sig.len;
  return 0;
}

static int csr_from_der(mesh_ctx *ctx, const unsigned char *der, size_t len, const char **why,
                        mesh_csr **ret) {
  mesh_csr *c = mesh__calloc(ctx, 1, sizeof *c);
  if (!c) return MESH_ERR_NOMEM;
  c->ctx = ctx;
  mbedtls_pk_init(&c->pk);
  int rc = MESH_ERR_NOMEM;
  c->der = mesh__malloc(ctx, len);
  if (!c->der) goto fail;
  memcpy(c->der, der, len);
  c->der_len = len;
  rc = csr_parse_der(c, why);
  if (rc) goto fail;
  c->pem = pem_of(ctx, PEM_CSR_BEGIN, PEM_CSR_END, der, len);
  if (!c->pem) {
    rc = MESH_ERR_NOMEM;
    goto fail;
  }
  *ret = c;
  return 0;
fail:
  mesh_csr_free(c);
  return rc;
}

int mesh_csr_parse(mesh_ctx *ctx, const char *buf, size_t len, const char **why, mesh_csr **ret) {
  if (!ctx || !buf || !ret) return MESH_ERR_INVALID;
  if (len > MESH_CSR_MAX_BYTES) return fail(why, R_CSR_LONG, MESH_ERR_LIMIT);
  if (!memmem(buf, len, "-----BEGIN", 10)) {
    if (len == 0 || (unsigned char)buf[0] != SEQ) return fail(why, R_CSR_PEM, MESH_ERR_PARSE);
    return csr_from_der(ctx, (const unsigned char *)buf, len, why, ret);
  }
  size_t n;
  unsigned char *copy = pem_input(ctx, buf, len, &n);
  if (!copy) return MESH_ERR_NOMEM;
  mbedtls_pem_context pem;
  mbedtls_pem_init(&pem);
  size_t used;
  int rc = mbedtls_pem_read_buffer(&pem, "-----BEGIN CERTIFICATE REQUEST-----",
                                   "-----END CERTIFICATE REQUEST-----", copy, NULL, 0, &used);
  if (rc == MBEDTLS_ERR_PEM_NO_HEADER_FOOTER_PRESENT)
    rc = mbedtls_pem_read_buffer(&pem, "-----BEGIN NEW CERTIFICATE REQUEST-----",
                                 "-----END NEW CERTIFICATE REQUEST-----", copy, NULL, 0, &used);
  if (rc) {
    rc = mesh__tls_err(rc, MESH_ERR_PARSE);
    if (rc == MESH_ERR_PARSE) fail(why, R_CSR_PEM, rc);
  } else {
    rc = csr_from_der(ctx, pem.buf, pem.buflen, why, ret);
  }
  mbedtls_pem_free(&pem);
  mesh__free(ctx, copy);
  return rc;
}

void mesh_csr_free(mesh_csr *c) {
  if (!c) return;
  mbedtls_pk_free(&c->pk);
  mesh__free(c->ctx, c->der);
  mesh__free(c->ctx, c->pem);
  mesh__free(c->ctx, c);
}

const char *mesh_csr_pem(const mesh_csr *c) { return c ? c->pem : NULL; }

const uint8_t *mesh_csr_der(const mesh_csr *c, size_t *len) {
  if (!c) return NULL;
  if (len) *len = c->der_len;
  return c->der;
}

int mesh_csr_new(const mesh_key *key, const mesh_identity *id, mesh_csr **ret) {
  if (!key || !id || !ret || !key->pem) return MESH_ERR_INVALID;
  mbedtls_pk_context *pk = mesh__key_pk(key);
  if (!mesh__key_is_p256(pk)) return MESH_ERR_UNSUPPORTED;
  mesh_ctx *ctx = key->ctx;
  unsigned char san_buf[1024], *san;
  size_t san_len;
  if (write_san(id->dns, id->uri, san_buf, sizeof san_buf, &san, &san_len)) return MESH_ERR_TLS;
  unsigned char *der = mesh__malloc(ctx, DER_CAP);
  if (!der) return MESH_ERR_NOMEM;
  char subject[8 + MESH_IDENTITY_DNS_MAX];
  snprintf(subject, sizeof subject, "CN=%s", id->dns);
  mbedtls_x509write_csr w;
  mbedtls_x509write_csr_init(&w);
  mbedtls_x509write_csr_set_key(&w, pk);
  mbedtls_x509write_csr_set_md_alg(&w, MBEDTLS_MD_SHA256);
  int rc = mbedtls_x509write_csr_set_subject_name(&w, subject);
  if (!rc)
    rc = mbedtls_x509write_csr_set_extension(&w, MBEDTLS_OID_SUBJECT_ALT_NAME,
                                             OID_LEN(MBEDTLS_OID_SUBJECT_ALT_NAME), san, san_len);
  if (rc) {
    rc = mesh__tls_err(rc, MESH_ERR_TLS);
    goto out;
  }
  mesh__rng rng;
  rc = mesh__rng_init(&rng, ctx);
  if (rc) goto out;
  int n = mbedtls_x509write_csr_der(&w, der, DER_CAP, mesh__rng_random, &rng);
  mesh__rng_free(&rng);
  if (n < 0) {
    rc = rng.err ? rng.err : mesh__tls_err(n, MESH_ERR_TLS);
    goto out;
  }
  rc = csr_from_der(ctx, der + DER_CAP - n, (size_t)n, NULL, ret);
out:
  mbedtls_x509write_csr_free(&w);
  mesh__free(ctx, der);
  return rc;
}

/* Empty, or exactly one RDN holding one commonName equal to dns. */
static int csr_subject_ok(const mesh_csr *c, const char *dns) {
  if (c->subject_len == 0) return 1;
  unsigned char *p = c->subject;
  const unsigned char *end = p + c->subject_len;
  size_t len;
  if (mbedtls_asn1_get_tag(&p, end, &len, SET) || p + len != end) return 0;
  if (mbedtls_asn1_get_tag(&p, end, &len, SEQ) || p + len != end) return 0;
  if (mbedtls_asn1_get_tag(&p, end, &len, MBEDTLS_ASN1_OID) || len != OID_LEN(MBEDTLS_OID_AT_CN) ||
      memcmp(p, MBEDTLS_OID_AT_CN, len))
    return 0;
  p += len;
  if (p >= end) return 0;
  int tag = *p++;
  if (tag != MBEDTLS_ASN1_UTF8_STRING && tag != MBEDTLS_ASN1_PRINTABLE_STRING &&
      tag != MBEDTLS_ASN1_IA5_STRING)
    return 0;
  if (mbedtls_asn1_get_len(&p, end, &len) || p + len != end) return 0;
  return len == strlen(dns) && !memcmp(p, dns, len);
}

static int gname_is(const gname *g, const char *s) {
  return g->n == strlen(s) && !memcmp(g->p, s, g->n);
}

int mesh_csr_verify(const mesh_csr *c, const mesh_identity *id, const char **why) {
  if (!c || !id) return MESH_ERR_INVALID;
  const mbedtls_md_info_t *mi = mbedtls_md_info_from_type(c->md);
  unsigned char hash[MBEDTLS_MD_MAX_SIZE];
  if (!mi || mbedtls_md(mi, c->cri, c->cri_len, hash)) return MESH_ERR_TLS;
  mbedtls_pk_context *pk = (mbedtls_pk_context *)&c->pk;
  if (mbedtls_pk_verify(pk, c->md, hash, mbedtls_md_get_size(mi), c->sig, c->sig_len))
    return fail(why, R_CSR_SIG, MESH_ERR_DENIED);
  if (!c->san) return fail(why, R_CSR_NO_SAN, MESH_ERR_IDENTITY);
  san_summary s;
  if (san_summarize(c->san, c->san_len, &s) < 0) return fail(why, R_SAN_MALFORMED, MESH_ERR_PARSE);
  if (s.ndns != 1 || s.nuri != 1 || s.nother) return fail(why, R_CSR_SANS, MESH_ERR_IDENTITY);
  if (!gname_is(&s.dns, id->dns) || !gname_is(&s.uri, id->uri))
    return fail(why, R_CSR_WRONG_ID, MESH_ERR_IDENTITY);
  if (!csr_subject_ok(c, id->dns)) return fail(why, R_CSR_SUBJECT, MESH_ERR_IDENTITY);
  return 0;
}

int mesh_csr_identity(const mesh_csr *c, const char **why, mesh_identity **ret) {
  if (!c || !ret) return MESH_ERR_INVALID;
  if (!c->san) return fail(why, R_CSR_NO_SAN, MESH_ERR_IDENTITY);
  san_summary s;
  if (san_summarize(c->san, c->san_len, &s) < 0) return fail(why, R_SAN_MALFORMED, MESH_ERR_PARSE);
  if (s.ndns != 1 || s.nuri != 1 || s.nother) return fail(why, R_CSR_SANS, MESH_ERR_IDENTITY);
  return identity_from_summary(c->ctx, &s, why, ret);
}

/* ---- Certificate bundles ------------------------------------------------ */

typedef struct {
  int type;
  char *value;
} san_entry;

typedef struct {
  const mbedtls_x509_crt *crt;
  char *pem, *subject, *issuer, *serial;
  size_t bundle_off;
  uint64_t not_before, not_after;
  int is_ca;
  int32_t pathlen;
  size_t nsan;
  san_entry *san;
} cert_info;

struct mesh_certs {
  mesh_ctx *ctx;
  mbedtls_x509_crt chain;
  size_t n;
  cert_info *info;
  char *bundle;
};

static const char R_CERTS_LONG[] = "certificate bundle is larger than 1 MiB";
static const char R_CERTS_MANY[] = "certificate bundle holds more than 64 certificates";
static const char R_CERTS_NONE[] = "no PEM or DER certificate found";
static const char R_CERTS_BAD[] = "a certificate in the bundle is malformed";
static const char R_CERTS_DN[] = "a certificate's name is too long to show";

static mesh_certs *certs_new(mesh_ctx *ctx) {
  mesh_certs *c = mesh__calloc(ctx, 1, sizeof *c);
  if (!c) return NULL;
  c->ctx = ctx;
  mbedtls_x509_crt_init(&c->chain);
  return c;
}

static int dn_string(mesh_ctx *ctx, const mbedtls_x509_name *dn, char **out) {
  char buf[4096];
  int n = mbedtls_x509_dn_gets(buf, sizeof buf, dn);
  if (n < 0) return MESH_ERR_LIMIT; /* only "buffer too small" can fail here */
  *out = mesh__strndup(ctx, buf, (size_t)n);
  return *out ? 0 : MESH_ERR_NOMEM;
}

static int info_sans(mesh_ctx *ctx, const mbedtls_x509_crt *crt, cert_info *ci) {
  if (!crt->v3_ext.len) return 0;
  unsigned char *val;
  size_t vlen;
  int rc = ext_find(crt->v3_ext.p, crt->v3_ext.p + crt->v3_ext.len, MBEDTLS_OID_SUBJECT_ALT_NAME,
                    OID_LEN(MBEDTLS_OID_SUBJECT_ALT_NAME), &val, &vlen, NULL);
  if (rc <= 0) return rc;
  unsigned char *p = val;
  const unsigned char *end = val + vlen;
  if (san_open(&p, end)) return MESH_ERR_PARSE;
  size_t count = 0;
  gname g;
  while ((rc = san_next(&p, end, &g)) == 1) count++;
  if (rc < 0) return rc;
  ci->san = mesh__calloc(ctx, count, sizeof *ci->san);
  if (!ci->san) return MESH_ERR_NOMEM;
  p = val;
  san_open(&p, end);
  for (size_t j = 0; j < count && san_next(&p, end, &g) == 1; j++) {
    char text[INET6_ADDRSTRLEN] = "";
    const char *s = text;
    size_t n = 0;
    if (g.type == MESH_SAN_IP && (g.n == 4 || g.n == 16)) {
      inet_ntop(g.n == 4 ? AF_INET : AF_INET6, g.p, text, sizeof text);
      n = strlen(text);
    } else if (g.type != MESH_SAN_OTHER && g.type != MESH_SAN_IP) {
      s = (const char *)g.p;
      n = g.n;
    }
    ci->san[j].type = g.type;
    ci->san[j].value = mesh__strndup(ctx, s, n);
    ci->nsan = j + 1;
    if (!ci->san[j].value) return MESH_ERR_NOMEM;
  }
  return 0;
}

/* Derive everything the accessors return, so that they never allocate. */
static int certs_finish(mesh_certs *c, const char **why) {
  size_t n = 0;
  for (const mbedtls_x509_crt *x = &c->chain; x && x->raw.p; x = x->next) n++;
  if (n == 0) return fail(why, R_CERTS_NONE, MESH_ERR_PARSE);
  if (n > MESH_CERTS_MAX) return fail(why, R_CERTS_MANY, MESH_ERR_LIMIT);
  c->info = mesh__calloc(c->ctx, n, sizeof *c->info);
  if (!c->info) return MESH_ERR_NOMEM;
  c->n = n;
  size_t total = 1, i = 0;
  for (const mbedtls_x509_crt *x = &c->chain; i < n; x = x->next, i++) {
    cert_info *ci = &c->info[i];
    ci->crt = x;
    ci->not_before = x509_epoch(&x->valid_from);
    ci->not_after = x509_epoch(&x->valid_to);
    ci->is_ca = x->ca_istrue ? 1 : 0;
    /* mbedTLS stores pathLenConstraint + 1, and 0 for "none". */
    ci->pathlen = x->max_pathlen > 0 ? (int32_t)(x->max_pathlen - 1) : -1;
    ci->pem = pem_of(c->ctx, PEM_CRT_BEGIN, PEM_CRT_END, x->raw.p, x->raw.len);
    if (!ci->pem) return MESH_ERR_NOMEM;
    char serial[128];
    int sn = mbedtls_x509_serial_gets(serial, sizeof serial, &x->serial);
    ci->serial = mesh__strdup(c->ctx, sn < 0 ? "" : serial);
    if (!ci->serial) return MESH_ERR_NOMEM;
    int rc = dn_string(c->ctx, &x->subject, &ci->subject);
    if (!rc) rc = dn_string(c->ctx, &x->issuer, &ci->issuer);
    if (rc == MESH_ERR_LIMIT) return fail(why, R_CERTS_DN, rc);
    if (rc) return rc;
    rc = info_sans(c->ctx, x, ci);
    if (rc == MESH_ERR_PARSE) return fail(why, R_SAN_MALFORMED, rc);
    if (rc) return rc;
    ci->bundle_off = total - 1;
    total += strlen(ci->pem);
  }
  c->bundle = mesh__malloc(c->ctx, total);
  if (!c->bundle) return MESH_ERR_NOMEM;
  for (i = 0; i < n; i++) memcpy(c->bundle + c->info[i].bundle_off, c->info[i].pem, strlen(c->info[i].pem));
  c->bundle[total - 1] = '\0';
  return 0;
}

void mesh_certs_free(mesh_certs *c) {
  if (!c) return;
  for (size_t i = 0; c->info && i < c->n; i++) {
    cert_info *ci = &c->info[i];
    mesh__free(c->ctx, ci->pem);
    mesh__free(c->ctx, ci->subject);
    mesh__free(c->ctx, ci->issuer);
    mesh__free(c->ctx, ci->serial);
    for (size_t j = 0; j < ci->nsan; j++) mesh__free(c->ctx, ci->san[j].value);
    mesh__free(c->ctx, ci->san);
  }
  mesh__free(c->ctx, c->info);
  mesh__free(c->ctx, c->bundle);
  mbedtls_x509_crt_free(&c->chain);
  mesh__free(c->ctx, c);
}

int mesh_certs_parse(mesh_ctx *ctx, const char *buf, size_t len, const char **why,
                     mesh_certs **ret) {
  if (!ctx || !buf || !ret) return MESH_ERR_INVALID;
  if (len > MESH_CERTS_MAX_BYTES) return fail(why, R_CERTS_LONG, MESH_ERR_LIMIT);
  mesh_certs *c = certs_new(ctx);
  if (!c) return MESH_ERR_NOMEM;
  size_t n;
  unsigned char *copy = pem_input(ctx, buf, len, &n);
  int rc = MESH_ERR_NOMEM;
  if (!copy) goto out;
  rc = n > len ? mbedtls_x509_crt_parse(&c->chain, copy, n)
               : mbedtls_x509_crt_parse_der(&c->chain, copy, n);
  mesh__free(ctx, copy);
  if (rc != 0) {
    /* > 0: that many PEM blocks failed. A partly read bundle is not trusted. */
    int none = rc == MBEDTLS_ERR_X509_CERT_UNKNOWN_FORMAT ||
               (n == len && (len == 0 || (unsigned char)buf[0] != SEQ));
    const char *reason = none ? R_CERTS_NONE : R_CERTS_BAD;
    rc = rc > 0 ? MESH_ERR_PARSE : mesh__tls_err(rc, MESH_ERR_PARSE);
    if (rc == MESH_ERR_PARSE) fail(why, reason, rc);
    goto out;
  }
  rc = certs_finish(c, why);
out:
  if (rc) {
    mesh_certs_free(c);
    return rc;
  }
  *ret = c;
  return 0;
}

size_t mesh_certs_count(const mesh_certs *c) { return c ? c->n : 0; }

static const cert_info *info_at(const mesh_certs *c, size_t i) {
  return c && i < c->n ? &c->info[i] : NULL;
}

const char *mesh_certs_pem(const mesh_certs *c, size_t i) {
  const cert_info *ci = info_at(c, i);
  return ci ? ci->pem : NULL;
}

const char *mesh_certs_bundle_pem(const mesh_certs *c, size_t from) {
  const cert_info *ci = info_at(c, from);
  return ci ? c->bundle + ci->bundle_off : NULL;
}

const char *mesh_certs_subject(const mesh_certs *c, size_t i) {
  const cert_info *ci = info_at(c, i);
  return ci ? ci->subject : NULL;
}

const char *mesh_certs_issuer(const mesh_certs *c, size_t i) {
  const cert_info *ci = info_at(c, i);
  return ci ? ci->issuer : NULL;
}

const char *mesh_certs_serial(const mesh_certs *c, size_t i) {
  const cert_info *ci = info_at(c, i);
  return ci ? ci->serial : NULL;
}

uint64_t mesh_certs_not_before(const mesh_certs *c, size_t i) {
  const cert_info *ci = info_at(c, i);
  return ci ? ci->not_before : 0;
}

uint64_t mesh_certs_not_after(const mesh_certs *c, size_t i) {
  const cert_info *ci = info_at(c, i);
  return ci ? ci->not_after : 0;
}

int mesh_certs_is_ca(const mesh_certs *c, size_t i) {
  const cert_info *ci = info_at(c, i);
  return ci ? ci->is_ca : 0;
}

int32_t mesh_certs_pathlen(const mesh_certs *c, size_t i) {
  const cert_info *ci = info_at(c, i);
  return ci ? ci->pathlen : -1;
}

size_t mesh_certs_san_count(const mesh_certs *c, size_t i) {
  const cert_info *ci = info_at(c, i);
  return ci ? ci->nsan : 0;
}

int mesh_certs_san_type(const mesh_certs *c, size_t i, size_t j) {
  const cert_info *ci = info_at(c, i);
  return ci && j < ci->nsan ? ci->san[j].type : -1;
}

const char *mesh_certs_san_value(const mesh_certs *c, size_t i, size_t j) {
  const cert_info *ci = info_at(c, i);
  return ci && j < ci->nsan ? ci->san[j].value : NULL;
}

mbedtls_x509_crt *mesh__certs_crt(const mesh_certs *c) { return (mbedtls_x509_crt *)&c->chain; }

int mesh_certs_identity(const mesh_certs *c, size_t i, const char **why, mesh_identity **ret) {
  const cert_info *ci = info_at(c, i);
  if (!ci || !ret) return MESH_ERR_INVALID;
  return mesh__identity_from_crt(c->ctx, ci->crt, why, ret);
}

/* ---- Chain verification ------------------------------------------------- */

static const char R_UNTRUSTED[] = "certificate chain does not lead to a trust anchor "
                                  "(unknown issuer, bad signature or path length exceeded)";
static const char R_WEAK[] = "certificate chain uses a hash, key type or key size that is not allowed";
static const char R_USAGE[] = "an issuer's key usage does not allow it to sign certificates";
static const char R_CHAIN_BAD[] = "certificate chain is not valid";
static const char R_LEAF_EXPIRED[] = "the certificate has expired";
static const char R_LEAF_FUTURE[] = "the certificate is not valid yet";
static const char R_CA_EXPIRED[] = "an issuer or trust anchor on the chain has expired";
static const char R_CA_FUTURE[] = "an issuer or trust anchor on the chain is not valid yet";
static const char R_NOT_EXPECTED[] = "certificate names another workload than expected";

/* What the mesh accepts: SHA-2, ECDSA on P-256/P-384, RSA >= 2048 for issuers. */
static const mbedtls_x509_crt_profile mesh_profile = {
    MBEDTLS_X509_ID_FLAG(MBEDTLS_MD_SHA256) | MBEDTLS_X509_ID_FLAG(MBEDTLS_MD_SHA384) |
        MBEDTLS_X509_ID_FLAG(MBEDTLS_MD_SHA512),
    MBEDTLS_X509_ID_FLAG(MBEDTLS_PK_ECKEY) | MBEDTLS_X509_ID_FLAG(MBEDTLS_PK_ECDSA) |
        MBEDTLS_X509_ID_FLAG(MBEDTLS_PK_RSA),
    MBEDTLS_X509_ID_FLAG(MBEDTLS_ECP_DP_SECP256R1) | MBEDTLS_X509_ID_FLAG(MBEDTLS_ECP_DP_SECP384R1),
    2048,
};

typedef struct {
  uint64_t now;
  const char *time_reason;
} verify_state;

/* mbedTLS checks validity against the system clock; the caller's clock
 * rules instead, so time flags are replaced with our own check. */
static int verify_cb(void *p, mbedtls_x509_crt *crt, int depth, uint32_t *flags) {
  verify_state *v = p;
  *flags &= ~(uint32_t)(MBEDTLS_X509_BADCERT_EXPIRED | MBEDTLS_X509_BADCERT_FUTURE);
  uint64_t nb = x509_epoch(&crt->valid_from), na = x509_epoch(&crt->valid_to);
  /* Report the leaf first: it is the one a caller can do something about. */
  if (v->now > na && (depth == 0 || !v->time_reason))
    v->time_reason = depth == 0 ? R_LEAF_EXPIRED : R_CA_EXPIRED;
  else if (v->now < nb && (depth == 0 || !v->time_reason))
    v->time_reason = depth == 0 ? R_LEAF_FUTURE : R_CA_FUTURE;
  return 0;
}

int mesh_certs_verify(const mesh_certs *chain, const mesh_certs *anchors, uint64_t now_s,
                      const char **why) {
  if (!chain || !anchors || !chain->n || !anchors->n) return MESH_ERR_INVALID;
  verify_state v = {now_s, NULL};
  uint32_t flags = 0;
  int rc = mbedtls_x509_crt_verify_with_profile(mesh__certs_crt(chain), mesh__certs_crt(anchors),
                                                NULL, &mesh_profile, NULL, &flags, verify_cb, &v);
  if (rc && rc != MBEDTLS_ERR_X509_CERT_VERIFY_FAILED)
    return fail(why, R_CHAIN_BAD, mesh__tls_err(rc, MESH_ERR_TLS));
  if (flags & MBEDTLS_X509_BADCERT_NOT_TRUSTED) return fail(why, R_UNTRUSTED, MESH_ERR_TLS);
  if (flags & (MBEDTLS_X509_BADCERT_BAD_MD | MBEDTLS_X509_BADCERT_BAD_PK |
               MBEDTLS_X509_BADCERT_BAD_KEY))
    return fail(why, R_WEAK, MESH_ERR_TLS);
  if (flags & (MBEDTLS_X509_BADCERT_KEY_USAGE | MBEDTLS_X509_BADCERT_EXT_KEY_USAGE |
               MBEDTLS_X509_BADCERT_NS_CERT_TYPE))
    return fail(why, R_USAGE, MESH_ERR_TLS);
  if (flags) return fail(why, R_CHAIN_BAD, MESH_ERR_TLS);
  if (v.time_reason) return fail(why, v.time_reason, MESH_ERR_EXPIRED);
  return 0;
}

int mesh_certs_verify_peer(const mesh_certs *chain, const mesh_certs *anchors, uint64_t now_s,
                           const mesh_identity *expected, const char **why, mesh_identity **ret) {
  int rc = mesh_certs_verify(chain, anchors, now_s, why);
  if (rc) return rc;
  mesh_identity *id;
  rc = mesh_certs_identity(chain, 0, why, &id);
  if (rc) return rc;
  if (expected && !mesh_identity_equal(expected, id)) {
    mesh_identity_free(id);
    return fail(why, R_NOT_EXPECTED, MESH_ERR_IDENTITY);
  }
  if (ret)
    *ret = id;
  else
    mesh_identity_free(id);
  return 0;
}

/* ---- Certificate authority ---------------------------------------------- */

struct mesh_ca {
  mesh_ctx *ctx;
  mesh_certs *certs;
  mesh_key *key;
  uint64_t lifetime_s, skew_s;
  unsigned char kid[64]; /* the issuer's subjectKeyIdentifier, for its leaves' AKI */
  size_t kid_len;
};

static const char R_CA_NOT_CA[] = "issuer certificate is not a CA";
static const char R_CA_NO_SIGN[] = "issuer certificate's key usage does not allow keyCertSign";
static const char R_CA_KEY_MISMATCH[] = "issuer key does not match the issuer certificate";
static const char R_CA_PUBLIC[] = "issuer key is a public key";
static const char R_CA_EXPIRED_NOW[] = "issuer certificate has expired";
static const char R_CA_FUTURE_NOW[] = "issuer certificate is not valid yet";
static const char R_CA_MULTI_RDN[] = "issuer name has a multi-valued RDN, which cannot be copied";

#define CA_MAX_LIFETIME_S (10ull * 365 * 86400)
#define CA_MAX_SKEW_S 86400ull

/* The issuer's key id: its subjectKeyIdentifier extension when present,
 * else computed the way mbedTLS computes its own. */
static int ca_key_id(mesh_ca *ca) {
  const mbedtls_x509_crt *crt = &ca->certs->chain;
  unsigned char *val;
  size_t vlen;
  int rc = 0;
  if (crt->v3_ext.len)
    rc = ext_find(crt->v3_ext.p, crt->v3_ext.p + crt->v3_ext.len, MBEDTLS_OID_SUBJECT_KEY_IDENTIFIER,
                  OID_LEN(MBEDTLS_OID_SUBJECT_KEY_IDENTIFIER), &val, &vlen, NULL);
  if (rc == 1) {
    unsigned char *p = val;
    size_t len;
    if (!mbedtls_asn1_get_tag(&p, val + vlen, &len, MBEDTLS_ASN1_OCTET_STRING) &&
        p + len == val + vlen && len > 0 && len <= sizeof ca->kid) {
      memcpy(ca->kid, p, len);
      ca->kid_len = len;
      return 0;
    }
  }
  ca->kid_len = 20;
  return key_id_of(mesh__key_pk(ca->key), ca->kid);
}

/* Takes certs and key over, also on failure. */
static int ca_wrap(mesh_ctx *ctx, mesh_certs *certs, mesh_key *key, const char **why,
                   mesh_ca **ret) {
  int rc = 0;
  const mbedtls_x509_crt *crt = &certs->chain;
  if (!crt->ca_istrue) rc = fail(why, R_CA_NOT_CA, MESH_ERR_INVALID);
  else if ((crt->ext_types & MBEDTLS_X509_EXT_KEY_USAGE) &&
           !(crt->key_usage & MBEDTLS_X509_KU_KEY_CERT_SIGN))
    rc = fail(why, R_CA_NO_SIGN, MESH_ERR_INVALID);
  else if (!key->pem)
    rc = fail(why, R_CA_PUBLIC, MESH_ERR_INVALID);
  else if (mbedtls_pk_check_pair(&crt->pk, mesh__key_pk(key)))
    rc = fail(why, R_CA_KEY_MISMATCH, MESH_ERR_INVALID);
  mesh_ca *ca = NULL;
  if (!rc) {
    ca = mesh__calloc(ctx, 1, sizeof *ca);
    if (!ca) rc = MESH_ERR_NOMEM;
  }
  if (rc) {
    mesh_certs_free(certs);
    mesh_key_free(key);
    return rc;
  }
  ca->ctx = ctx;
  ca->certs = certs;
  ca->key = key;
  ca->lifetime_s = MESH_CA_DEFAULT_LIFETIME_S;
  ca->skew_s = MESH_CA_DEFAULT_CLOCK_SKEW_S;
  rc = ca_key_id(ca);
  if (rc) {
    mesh_ca_free(ca);
    return rc;
  }
  *ret = ca;
  return 0;
}

int mesh_ca_new(mesh_ctx *ctx, const char *chain_pem, size_t chain_len, const char *key_pem,
                size_t key_len, const char **why, mesh_ca **ret) {
  if (!ctx || !chain_pem || !key_pem || !ret) return MESH_ERR_INVALID;
  mesh_certs *certs;
  int rc = mesh_certs_parse(ctx, chain_pem, chain_len, why, &certs);
  if (rc) return rc;
  mesh_key *key;
  rc = mesh_key_parse(ctx, key_pem, key_len, why, &key);
  if (rc) {
    mesh_certs_free(certs);
    return rc;
  }
  return ca_wrap(ctx, certs, key, why, ret);
}

void mesh_ca_free(mesh_ca *ca) {
  if (!ca) return;
  mesh_certs_free(ca->certs);
  mesh_key_free(ca->key);
  mesh__free(ca->ctx, ca);
}

const mesh_certs *mesh_ca_certs(const mesh_ca *ca) { return ca ? ca->certs : NULL; }
const mesh_key *mesh_ca_key(const mesh_ca *ca) { return ca ? ca->key : NULL; }

int mesh_ca_set_lifetime(mesh_ca *ca, uint64_t lifetime_s) {
  if (!ca) return MESH_ERR_INVALID;
  if (lifetime_s > CA_MAX_LIFETIME_S) return MESH_ERR_RANGE;
  ca->lifetime_s = lifetime_s ? lifetime_s : MESH_CA_DEFAULT_LIFETIME_S;
  return 0;
}

int mesh_ca_set_clock_skew(mesh_ca *ca, uint64_t skew_s) {
  if (!ca) return MESH_ERR_INVALID;
  if (skew_s > CA_MAX_SKEW_S) return MESH_ERR_RANGE;
  ca->skew_s = skew_s;
  return 0;
}

/* What differs between the certificates we sign. */
typedef struct {
  mbedtls_pk_context *subject_key;
  const char *cn;
  const mesh_ca *issuer; /* NULL: self-signed */
  uint64_t not_before, not_after;
  int is_ca, pathlen;     /* pathlen -1: none */
  const mesh_identity *id; /* leaves: the SANs */
} cert_spec;

/* mbedtls_x509write_crt_der writes its issuer list last-to-first; the
 * parsed subject is first-to-last. Copying keeps the issuer's exact bytes
 * (string types included) so that name chaining cannot break. The nodes
 * borrow the issuer's buffers and are ours to free. */
static int name_copy(mesh_ctx *ctx, const mbedtls_x509_name *src, mbedtls_asn1_named_data **out) {
  mbedtls_asn1_named_data *head = NULL;
  for (const mbedtls_x509_name *n = src; n; n = n->next) {
    if (!n->oid.p) continue;
    if (n->next_merged) {
      while (head) {
        mbedtls_asn1_named_data *next = head->next;
        mesh__free(ctx, head);
        head = next;
      }
      return MESH_ERR_UNSUPPORTED;
    }
    mbedtls_asn1_named_data *d = mesh__calloc(ctx, 1, sizeof *d);
    if (!d) {
      while (head) {
        mbedtls_asn1_named_data *next = head->next;
        mesh__free(ctx, head);
        head = next;
      }
      return MESH_ERR_NOMEM;
    }
    d->oid = n->oid;
    d->val = n->val;
    d->next = head;
    head = d;
  }
  *out = head;
  return 0;
}

static void name_free(mesh_ctx *ctx, mbedtls_asn1_named_data *head) {
  while (head) {
    mbedtls_asn1_named_data *next = head->next;
    mesh__free(ctx, head);
    head = next;
  }
}

static int write_cert(mesh_ctx *ctx, const cert_spec *s, mbedtls_pk_context *issuer_key,
                      mesh__rng *rng, unsigned char *der, unsigned char **out, size_t *out_len) {
  mbedtls_x509write_cert w;
  mbedtls_x509write_crt_init(&w);
  mbedtls_mpi serial;
  mbedtls_mpi_init(&serial);
  mbedtls_asn1_named_data *issuer_name = NULL;
  unsigned char ext[1024], *e;
  size_t elen;
  char subject[8 + MESH_IDENTITY_DNS_MAX], nb[40], na[40];
  int rc;
  mbedtls_x509write_crt_set_version(&w, MBEDTLS_X509_CRT_VERSION_3);
  mbedtls_x509write_crt_set_md_alg(&w, MBEDTLS_MD_SHA256);
  mbedtls_x509write_crt_set_subject_key(&w, s->subject_key);
  mbedtls_x509write_crt_set_issuer_key(&w, issuer_key);
  snprintf(subject, sizeof subject, "CN=%s", s->cn);
  if ((rc = mbedtls_x509write_crt_set_subject_name(&w, subject))) goto tls;
  if (s->issuer) {
    if ((rc = name_copy(ctx, &s->issuer->certs->chain.subject, &issuer_name))) {
      rc = rc == MESH_ERR_UNSUPPORTED ? rc : MESH_ERR_NOMEM;
      goto out;
    }
    w.issuer = issuer_name;
  } else if ((rc = mbedtls_x509write_crt_set_issuer_name(&w, subject))) {
    goto tls;
  }
  /* A random positive 128-bit serial (CA/B Forum asks for 64+ random bits). */
  unsigned char sb[16];
  if ((rc = mesh__rng_random(rng, sb, sizeof sb))) goto tls;
  sb[15] |= sb[0] == 0 ? 1 : 0; /* never zero, which RFC 5280 forbids */
  if ((rc = mbedtls_mpi_read_binary(&serial, sb, sizeof sb)) ||
      (rc = mbedtls_x509write_crt_set_serial(&w, &serial)))
    goto tls;
  x509_timestr(s->not_before, nb);
  x509_timestr(s->not_after, na);
  if ((rc = mbedtls_x509write_crt_set_validity(&w, nb, na))) goto tls;
  if ((rc = mbedtls_x509write_crt_set_basic_constraints(&w, s->is_ca, s->pathlen))) goto tls;
  if ((rc = mbedtls_x509write_crt_set_subject_key_identifier(&w))) goto tls;
  if (s->issuer) {
    if ((rc = write_aki(s->issuer->kid, s->issuer->kid_len, ext, sizeof ext, &e, &elen))) goto tls;
  } else {
    unsigned char kid[20];
    if ((rc = key_id_of(s->subject_key, kid))) goto out;
    if ((rc = write_aki(kid, sizeof kid, ext, sizeof ext, &e, &elen))) goto tls;
  }
  if ((rc = mbedtls_x509write_crt_set_extension(&w, MBEDTLS_OID_AUTHORITY_KEY_IDENTIFIER,
                                                OID_LEN(MBEDTLS_OID_AUTHORITY_KEY_IDENTIFIER), 0,
                                                e, elen)))
    goto tls;
  if (s->is_ca) {
    rc = mbedtls_x509write_crt_set_key_usage(&w, MBEDTLS_X509_KU_KEY_CERT_SIGN |
                                                     MBEDTLS_X509_KU_CRL_SIGN);
    if (rc) goto tls;
  } else {
    if ((rc = mbedtls_x509write_crt_set_key_usage(&w, MBEDTLS_X509_KU_DIGITAL_SIGNATURE)))
      goto tls;
    if ((rc = write_eku(ext, sizeof ext, &e, &elen)) ||
        (rc = mbedtls_x509write_crt_set_extension(&w, MBEDTLS_OID_EXTENDED_KEY_USAGE,
                                                  OID_LEN(MBEDTLS_OID_EXTENDED_KEY_USAGE), 0, e,
                                                  elen)))
      goto tls;
    if ((rc = write_san(s->id->dns, s->id->uri, ext, sizeof ext, &e, &elen)) ||
        (rc = mbedtls_x509write_crt_set_extension(&w, MBEDTLS_OID_SUBJECT_ALT_NAME,
                                                  OID_LEN(MBEDTLS_OID_SUBJECT_ALT_NAME), 0, e,
                                                  elen)))
      goto tls;
  }
  int n = mbedtls_x509write_crt_der(&w, der, DER_CAP, mesh__rng_random, rng);
  if (n < 0) {
    rc = n;
    goto tls;
  }
  *out = der + DER_CAP - n;
  *out_len = (size_t)n;
  rc = 0;
  goto out;
tls:
  rc = rng->err ? rng->err : mesh__tls_err(rc, MESH_ERR_TLS);
out:
  if (issuer_name) {
    w.issuer = NULL; /* a copy we own, not mbedTLS's to free */
    name_free(ctx, issuer_name);
  }
  mbedtls_x509write_crt_free(&w);
  mbedtls_mpi_free(&serial);
  return rc;
}

/* Sign s and return the new certificate followed by `rest` (a chain to
 * append, or NULL). rest's certificates are re-parsed, not shared. */
static int sign_into(mesh_ctx *ctx, const cert_spec *s, mbedtls_pk_context *issuer_key,
                     const mesh_certs *rest, int skip_self_signed, mesh_certs **ret) {
  mesh__rng rng;
  int rc = mesh__rng_init(&rng, ctx);
  if (rc) return rc;
  unsigned char *der_buf = mesh__malloc(ctx, DER_CAP), *der = NULL;
  size_t der_len = 0;
  mesh_certs *c = NULL;
  if (!der_buf) {
    rc = MESH_ERR_NOMEM;
    goto out;
  }
  rc = write_cert(ctx, s, issuer_key, &rng, der_buf, &der, &der_len);
  if (rc) goto out;
  c = certs_new(ctx);
  if (!c) {
    rc = MESH_ERR_NOMEM;
    goto out;
  }
  rc = mbedtls_x509_crt_parse_der(&c->chain, der, der_len);
  for (size_t i = 0; !rc && rest && i < rest->n; i++) {
    const mbedtls_x509_crt *x = rest->info[i].crt;
    /* Self-signed anchors are distributed apart from chains. */
    if (skip_self_signed && x->issuer_raw.len == x->subject_raw.len &&
        !memcmp(x->issuer_raw.p, x->subject_raw.p, x->subject_raw.len))
      continue;
    rc = mbedtls_x509_crt_parse_der(&c->chain, x->raw.p, x->raw.len);
  }
  if (rc) {
    rc = mesh__tls_err(rc, MESH_ERR_TLS);
    goto out;
  }
  rc = certs_finish(c, NULL);
out:
  if (rc) mesh_certs_free(c);
  else *ret = c;
  mesh__free(ctx, der_buf);
  mesh__rng_free(&rng);
  return rc;
}

/* The issuer must be valid now; the new certificate's validity is clamped
 * into the issuer's. */
static int ca_window(const mesh_ca *ca, uint64_t now_s, uint64_t skew_s, uint64_t lifetime_s,
                     const char **why, uint64_t *nb, uint64_t *na) {
  const cert_info *ci = &ca->certs->info[0];
  if (now_s > ci->not_after) return fail(why, R_CA_EXPIRED_NOW, MESH_ERR_EXPIRED);
  if (now_s < ci->not_before) return fail(why, R_CA_FUTURE_NOW, MESH_ERR_EXPIRED);
  *nb = now_s > skew_s ? now_s - skew_s : 0;
  if (*nb < ci->not_before) *nb = ci->not_before;
  *na = sat_add(now_s, lifetime_s);
  if (*na > ci->not_after) *na = ci->not_after;
  return 0;
}

int mesh_ca_issue(const mesh_ca *ca, const mesh_csr *csr, const mesh_identity *id, uint64_t now_s,
                  const char **why, mesh_certs **ret) {
  if (!ca || !csr || !id || !ret) return MESH_ERR_INVALID;
  int rc = mesh_csr_verify(csr, id, why);
  if (rc) return rc;
  cert_spec s = {0};
  rc = ca_window(ca, now_s, ca->skew_s, ca->lifetime_s, why, &s.not_before, &s.not_after);
  if (rc) return rc;
  s.subject_key = (mbedtls_pk_context *)&csr->pk;
  s.cn = id->dns;
  s.issuer = ca;
  s.is_ca = 0;
  s.pathlen = -1;
  s.id = id;
  rc = sign_into(ca->ctx, &s, mesh__key_pk(ca->key), ca->certs, 0, ret);
  if (rc == MESH_ERR_UNSUPPORTED) fail(why, R_CA_MULTI_RDN, rc);
  return rc;
}

static int cn_ok(const char *cn) {
  size_t n = strlen(cn);
  if (n == 0 || n > 64) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = cn[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == ' ' || c == '.' || c == '_' || c == '-'))
      return 0;
  }
  return 1;
}

/* A new CA certificate for a fresh key, signed by parent (or self). */
static int ca_create(mesh_ctx *ctx, const mesh_ca *parent, const char *cn, uint64_t now_s,
                     uint64_t lifetime_s, mesh_ca **ret) {
  if (!cn_ok(cn)) return MESH_ERR_INVALID;
  if (!lifetime_s) lifetime_s = MESH_CA_DEFAULT_CA_LIFETIME_S;
  if (lifetime_s > CA_MAX_LIFETIME_S * 10) return MESH_ERR_RANGE;
  cert_spec s = {0};
  s.cn = cn;
  s.is_ca = 1;
  s.pathlen = parent ? 0 : -1;
  s.issuer = parent;
  if (parent) {
    /* The parent's constraint: pathlen 0 means it may sign leaves only. */
    if (parent->certs->info[0].pathlen == 0) return MESH_ERR_INVALID;
    int rc = ca_window(parent, now_s, parent->skew_s, lifetime_s, NULL, &s.not_before,
                       &s.not_after);
    if (rc) return rc;
  } else {
    s.not_before = now_s > MESH_CA_DEFAULT_CLOCK_SKEW_S ? now_s - MESH_CA_DEFAULT_CLOCK_SKEW_S : 0;
    s.not_after = sat_add(now_s, lifetime_s);
  }
  mesh_key *key;
  int rc = mesh_key_generate(ctx, &key);
  if (rc) return rc;
  s.subject_key = mesh__key_pk(key);
  mesh_certs *certs;
  rc = sign_into(ctx, &s, parent ? mesh__key_pk(parent->key) : s.subject_key,
                 parent ? parent->certs : NULL, 1, &certs);
  if (rc) {
    mesh_key_free(key);
    return rc;
  }
  return ca_wrap(ctx, certs, key, NULL, ret);
}

int mesh_ca_new_root(mesh_ctx *ctx, const char *cn, uint64_t now_s, uint64_t lifetime_s,
                     mesh_ca **ret) {
  if (!ctx || !cn || !ret) return MESH_ERR_INVALID;
  return ca_create(ctx, NULL, cn, now_s, lifetime_s, ret);
}

int mesh_ca_new_issuer(const mesh_ca *parent, const char *cn, uint64_t now_s, uint64_t lifetime_s,
                       mesh_ca **ret) {
  if (!parent || !cn || !ret) return MESH_ERR_INVALID;
  return ca_create(parent->ctx, parent, cn, now_s, lifetime_s, ret);
}

int mesh_ca_init(mesh_ctx *ctx, const char *trust_domain, const char *cp_ns, uint64_t now_s,
                 uint64_t lifetime_s, mesh_ca **ret_anchor, mesh_ca **ret_issuer) {
  if (!ctx || !ret_anchor || !ret_issuer) return MESH_ERR_INVALID;
  if (!trust_domain) trust_domain = MESH_IDENTITY_DEFAULT_TRUST_DOMAIN;
  if (!cp_ns) cp_ns = MESH_IDENTITY_DEFAULT_CP_NS;
  char root_cn[80], issuer_cn[80];
  int a = snprintf(root_cn, sizeof root_cn, "root.%s.%s", cp_ns, trust_domain);
  int b = snprintf(issuer_cn, sizeof issuer_cn, "identity.%s.%s", cp_ns, trust_domain);
  if (a < 0 || b < 0 || (size_t)b >= sizeof issuer_cn) return MESH_ERR_INVALID;
  mesh_ca *anchor, *issuer;
  int rc = mesh_ca_new_root(ctx, root_cn, now_s, lifetime_s, &anchor);
  if (rc) return rc;
  rc = mesh_ca_new_issuer(anchor, issuer_cn, now_s, lifetime_s, &issuer);
  if (rc) {
    mesh_ca_free(anchor);
    return rc;
  }
  *ret_anchor = anchor;
  *ret_issuer = issuer;
  return 0;
}

/* Unit tests for identity: names, keys, CSRs, issuance, chain verification, renewal, tokens. */
#include <mbedtls/asn1write.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/md.h>
#include <mbedtls/oid.h>
#include <mbedtls/x509_crt.h>
#include <mbedtls/x509_csr.h>

#include "identity_internal.h"
#include "testutil.h"

/* A fixed wall-clock time (2023-11-14T22:13:20Z): results must not depend on the real clock. */
#define NOW 1700000000ull
#define DAY 86400ull
#define DNS_ID "frontend.production.serviceaccount.identity.linkerd.cluster.local"
#define URI_ID "spiffe://cluster.local/ns/production/sa/frontend"

/* An RSA-2048 CA, an RSA non-CA certificate and the key of both, made with
 * openssl (valid for 100 years from when they were made) to test RSA
 * issuers, foreign name encodings (PrintableString C=) and SAN kinds. */
static const char RSA_CA_PEM[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIDsDCCApigAwIBAgIUL9zvsBjUwnwSrxU32E7e26URpIgwDQYJKoZIhvcNAQEL\n"
    "BQAwOTELMAkGA1UEBhMCVVMxFDASBgNVBAoMC0V4YW1wbGUgT3JnMRQwEgYDVQQD\n"
    "DAtSU0EgVGVzdCBDQTAgFw0yNjExMjUxNzI1MzRaGA8yMTI2MTEwMTE3MjUzNFow\n"
    "OTELMAkGA1UEBhMCVVMxFDASBgNVBAoMC0V4YW1wbGUgT3JnMRQwEgYDVQQDDAtS\n"
    "U0EgVGVzdCBDQTCCASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEBAIaEqDQm\n"
    "dQutcpFlvapzBZ+6MqabdNrWfR7UhBVrQcRje/2SJSw13e+L+tKoeFKok9/ZUB0g\n"
    "Opk4jr0a4NtjJHYIG37M5bBLyM7QYjIYQxlsrEIrUfVlMS7QCVFRDVCegoHYR2R6\n"
    "p8NDSIoAGX78WV9XHY9p1gOck4H8q5XbI70iFnJ9eUMGITCyIA3liUqGiJFg1qV8\n"
    "RMo4EBhDHAcSkNVq3u/pQ3INjh1IbNnODxGAduQoWZHC+f4LLFA5riyKWHGy0rWJ\n"
    "o5u0xwRHTEk2mdJEqmvczugjNw5dB/Mb0EoP7tYsC6+3jB/H1KY0WtXfVpUeYLYs\n"
    "rp5d4rKTrGnZ7JcCAwEAAaOBrTCBqjAdBgNVHQ4EFgQUQWmwa7QJpXN+MuMynzLC\n"
    "OMk8fOwwHwYDVR0jBBgwFoAUQWmwa7QJpXN+MuMynzLCOMk8fOwwDwYDVR0TAQH/\n"
    "BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAQYwRwYDVR0RBEAwPoEOY2FAZXhhbXBsZS5v\n"
    "cmeHBAoAAAGCDmNhLmV4YW1wbGUub3JnhhZodHRwczovL2V4YW1wbGUub3JnL2Nh\n"
    "MA0GCSqGSIb3DQEBCwUAA4IBAQA2KtnRWQIlUCJ/qXVZZiX/XUtoGuCFwvTCZn7X\n"
    "cyn2DQF/JQf99msRSNDsoR0dsCFwAx0Vw1hDzzswQIMwf0rs7bVPOcpiqjjRNhlq\n"
    "R1nnyS003DvvcUR19nhng8mIo4V8xUzg2uDfnEWf8W2oIUc7kOzEI9PvP+A2H3wI\n"
    "1sMdXCml0+j0YeViJkZpnePflJXIt6J0uLOR2jYwmjq1NA/POdvXPiFu1uN+OTZm\n"
    "Er/dZBQLmTPX6OwS1FSGjawOnuO2fYotCuXsCij5cjmM2Q9Q6bbz3ZGsipsXRf/U\n"
    "kFMb3jymvPns77yDRSvfuLo02Kp7DkjRt1ouXXyexcP1AIWe\n"
    "-----END CERTIFICATE-----\n";

static const char RSA_KEY_PEM[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCGhKg0JnULrXKR\n"
    "Zb2qcwWfujKmm3Ta1n0e1IQVa0HEY3v9kiUsNd3vi/rSqHhSqJPf2VAdIDqZOI69\n"
    "GuDbYyR2CBt+zOWwS8jO0GIyGEMZbKxCK1H1ZTEu0AlRUQ1QnoKB2EdkeqfDQ0iK\n"
    "ABl+/FlfVx2PadYDnJOB/KuV2yO9IhZyfXlDBiEwsiAN5YlKhoiRYNalfETKOBAY\n"
    "QxwHEpDVat7v6UNyDY4dSGzZzg8RgHbkKFmRwvn+CyxQOa4silhxstK1iaObtMcE\n"
    "R0xJNpnSRKpr3M7oIzcOXQfzG9BKD+7WLAuvt4wfx9SmNFrV31aVHmC2LK6eXeKy\n"
    "k6xp2eyXAgMBAAECggEADS0mWsFfmq65N7PLEcylguFWv8ofdqYm6GOxsnVookeK\n"
    "aCquGHgITsQb5BGbg6E+puEe/1NeWg7XsH9XAjZiZmth4hhI8W1i9Jsl2zlULUPf\n"
    "VbXvl8V7PVYka4IwdzKnnvdj+twm3bIUA2yCEtW+HWAnpZoc3Aq0yjlJR2sJQ6fU\n"
    "RaKyaE7vbFNmNmzjfqFCN5sdLrbZPvaSujLla1pM9EdaV0BvJtVUM6VABb2GuPAU\n"
    "gMIQnzkA1EzatGXzoUCHpmqv9Kdx/tQesucc4ZKyftRNoAdT5UuAa5ilQwDRc4Iw\n"
    "9cGlSmfWK53u4sR5SKhE+2JYnC42p0GP+f8mIHVTjQKBgQC9Cnh9XlK0kG4tlD+p\n"
    "t2B2OXYndyFUcD+WSZMReu/9a6gIs6LLv+GkO1bFbGPLTi1T9LxA10SQrHrH8IGv\n"
    "9jDPExfeubcbhuli03xIIqyzXUjNAYHKT5wP+y9R+szw8YWP3P2mPXXysQt2yLDY\n"
    "sBahL+A9496UlEZ/qKfxHBWpKwKBgQC2KkTT5SA5O3CR1i6Ue5w82/spnWpktFet\n"
    "mUP3PH0q43Ak3yXkA+c9ztL7EqttejIKKD8UHG4txJYTF2mrp9uGQts464Qaw2r2\n"
    "zZAatuAxzmtd81cNlWGyubp80XF9Ic01ZvFM8F3uE5bheew6Ln7O5EM4g6v2Xouf\n"
    "l4Y8Z/f8RQKBgQCzrMoMzqPpPwWZiLhhxQuIEuF8bTxelzm4zEFecey8f6B8dNCc\n"
    "u8npYQT+LCFF0Q5AJ/Lt5i0jHOyuMKfy6RpHFyyu4vFo1nfpGH2dymc/K8DQKUiF\n"
    "U9lPTz0QvEIiGE0MCc2EPhJnE2OECQgdTHCVz31hFb4ulifTmifVgQ4NdQKBgBwV\n"
    "uDbTBHzOZTSWyOerhxL692YbFuQfycTB9HCRqtqJ5ihJHxZgY65rzKtY3YUrabuX\n"
    "KOJ436O+w0R+P5RvdLDmbdYAuYVGy57xYl48A6SqJnN9qNY3SbC8YbwMrmqUY4bw\n"
    "MBOkm1axPnnUyk7ODE7pclOsOT7qpKweOFvny5vhAoGBAJ8lvvQnPGl4kWnOiMYp\n"
    "4GUlha3gMPcEdVzcbwWyWO7kJ9j2pDxU3Teeubp8EmKfeFKLODvFYwYNHMccaOmM\n"
    "cLMgHFHGBPBXltRFPsAqC2PxdOhtlyNpyQJk0HD84Jk5PrvcLndSouKWm40VIXJ9\n"
    "ny5Ino3Sn53C1qYylgTaezsh\n"
    "-----END PRIVATE KEY-----\n";

static const char RSA_LEAF_PEM[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIDBjCCAe6gAwIBAgIUTfAsJC5aUjvXyRV2fpWfCtPECvAwDQYJKoZIhvcNAQEL\n"
    "BQAwEzERMA8GA1UEAwwITm90IEEgQ0EwIBcNMjYxMTI1MTcyNTM0WhgPMjEyNjEx\n"
    "MDExNzI1MzRaMBMxETAPBgNVBAMMCE5vdCBBIENBMIIBIjANBgkqhkiG9w0BAQEF\n"
    "AAOCAQ8AMIIBCgKCAQEAhoSoNCZ1C61ykWW9qnMFn7oyppt02tZ9HtSEFWtBxGN7\n"
    "/ZIlLDXd74v60qh4UqiT39lQHSA6mTiOvRrg22MkdggbfszlsEvIztBiMhhDGWys\n"
    "QitR9WUxLtAJUVENUJ6CgdhHZHqnw0NIigAZfvxZX1cdj2nWA5yTgfyrldsjvSIW\n"
    "cn15QwYhMLIgDeWJSoaIkWDWpXxEyjgQGEMcBxKQ1Wre7+lDcg2OHUhs2c4PEYB2\n"
    "5ChZkcL5/gssUDmuLIpYcbLStYmjm7THBEdMSTaZ0kSqa9zO6CM3Dl0H8xvQSg/u\n"
    "1iwLr7eMH8fUpjRa1d9WlR5gtiyunl3ispOsadnslwIDAQABo1AwTjAdBgNVHQ4E\n"
    "FgQUQWmwa7QJpXN+MuMynzLCOMk8fOwwHwYDVR0jBBgwFoAUQWmwa7QJpXN+MuMy\n"
    "nzLCOMk8fOwwDAYDVR0TAQH/BAIwADANBgkqhkiG9w0BAQsFAAOCAQEAKsawN9cZ\n"
    "n4d8o3TSIe7PpzpSjKw/7W0A8pbqtUF5kpGS/zgfiXhWU78hp4chOEnZEighnMUw\n"
    "ZydvvGzo0E8SxahlatLbQNgRYiODVXl1Kcnvz0JyN2OCJ39Rf2PC+8Ari7lKICsS\n"
    "NMSBoXSU8+iX8fKtslYLv9jLJWC9BZAtFvTUxIBqtY9OVpEITPcxy5EK1BHbI0Re\n"
    "001S6YdI/DWuMnCkznW459OyUr8MYar4kHFA735bgAzriW+VfnkMXZwihBYqu0wz\n"
    "zwvr/OlTy+UJMzlGWid0Ph2fEWl2M4Rvij2RVg2qnxU4JjxFGvMa4RiwdZOqLZM/\n"
    "r0IbeOL+wwladw==\n"
    "-----END CERTIFICATE-----\n";

/* ---- Helpers ------------------------------------------------------------ */

static mesh_identity *ident(mesh_ctx *ctx, const char *ns, const char *sa) {
  mesh_identity *id = NULL;
  ck_assert_int_eq(mesh_identity_new(ctx, ns, sa, NULL, NULL, NULL, &id), 0);
  return id;
}

static void assert_why(const char *why, const char *part) {
  ck_assert_msg(why != NULL, "no reason given (expected one containing \"%s\")", part);
  ck_assert_msg(strstr(why, part) != NULL, "reason \"%s\" lacks \"%s\"", why, part);
}

/* GeneralNames DER from (context tag, value) pairs. */
typedef struct {
  int tag;
  const char *value;
  size_t len; /* 0: strlen(value) */
} san_spec;

static size_t put_len(unsigned char *out, size_t n) {
  if (n < 128) {
    out[0] = (unsigned char)n;
    return 1;
  }
  out[0] = 0x82;
  out[1] = (unsigned char)(n >> 8);
  out[2] = (unsigned char)n;
  return 3;
}

static size_t make_san(const san_spec *s, size_t count, unsigned char *out) {
  unsigned char body[2048];
  size_t n = 0;
  for (size_t i = 0; i < count; i++) {
    size_t len = s[i].len ? s[i].len : strlen(s[i].value);
    body[n++] = (unsigned char)(0x80 | s[i].tag);
    n += put_len(body + n, len);
    memcpy(body + n, s[i].value, len);
    n += len;
  }
  size_t o = 0;
  out[o++] = 0x30;
  o += put_len(out + o, n);
  memcpy(out + o, body, n);
  return o + n;
}

/* A CSR written with mbedTLS directly, to say what our own writer never
 * would: subject NULL means an empty subject, san NULL no SAN extension. */
static mesh_csr *craft_csr(mesh_ctx *ctx, const mesh_key *key, const char *subject,
                           const san_spec *san, size_t nsan) {
  mbedtls_x509write_csr w;
  mbedtls_x509write_csr_init(&w);
  mbedtls_x509write_csr_set_key(&w, mesh__key_pk(key));
  mbedtls_x509write_csr_set_md_alg(&w, MBEDTLS_MD_SHA256);
  if (subject) ck_assert_int_eq(mbedtls_x509write_csr_set_subject_name(&w, subject), 0);
  unsigned char ext[2200];
  if (san) {
    size_t n = make_san(san, nsan, ext);
    ck_assert_int_eq(mbedtls_x509write_csr_set_extension(&w, MBEDTLS_OID_SUBJECT_ALT_NAME,
                                                         MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME),
                                                         ext, n),
                     0);
  }
  mesh__rng rng;
  ck_assert_int_eq(mesh__rng_init(&rng, ctx), 0);
  unsigned char der[4096];
  int n = mbedtls_x509write_csr_der(&w, der, sizeof der, mesh__rng_random, &rng);
  ck_assert_int_gt(n, 0);
  mesh__rng_free(&rng);
  mbedtls_x509write_csr_free(&w);
  mesh_csr *csr = NULL;
  const char *why = NULL;
  int rc = mesh_csr_parse(ctx, (const char *)der + sizeof der - n, (size_t)n, &why, &csr);
  ck_assert_msg(rc == 0, "crafted CSR does not parse: %d %s", rc, why ? why : "");
  return csr;
}

/* A self-signed end-entity certificate with the given SANs (san NULL: none). */
static mesh_certs *craft_cert(mesh_ctx *ctx, const san_spec *san, size_t nsan) {
  mesh_key *key;
  ck_assert_int_eq(mesh_key_generate(ctx, &key), 0);
  mbedtls_x509write_cert w;
  mbedtls_x509write_crt_init(&w);
  mbedtls_x509write_crt_set_subject_key(&w, mesh__key_pk(key));
  mbedtls_x509write_crt_set_issuer_key(&w, mesh__key_pk(key));
  mbedtls_x509write_crt_set_md_alg(&w, MBEDTLS_MD_SHA256);
  ck_assert_int_eq(mbedtls_x509write_crt_set_subject_name(&w, "CN=crafted"), 0);
  ck_assert_int_eq(mbedtls_x509write_crt_set_issuer_name(&w, "CN=crafted"), 0);
  mbedtls_mpi serial;
  mbedtls_mpi_init(&serial);
  mbedtls_mpi_lset(&serial, 7);
  mbedtls_x509write_crt_set_serial(&w, &serial);
  ck_assert_int_eq(mbedtls_x509write_crt_set_validity(&w, "20230101000000", "20300101000000"), 0);
  ck_assert_int_eq(mbedtls_x509write_crt_set_basic_constraints(&w, 0, -1), 0);
  unsigned char ext[2200];
  if (san) {
    size_t n = make_san(san, nsan, ext);
    ck_assert_int_eq(mbedtls_x509write_crt_set_extension(&w, MBEDTLS_OID_SUBJECT_ALT_NAME,
                                                         MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME),
                                                         0, ext, n),
                     0);
  }
  mesh__rng rng;
  ck_assert_int_eq(mesh__rng_init(&rng, ctx), 0);
  unsigned char der[4096];
  int n = mbedtls_x509write_crt_der(&w, der, sizeof der, mesh__rng_random, &rng);
  ck_assert_int_gt(n, 0);
  mesh__rng_free(&rng);
  mbedtls_x509write_crt_free(&w);
  mbedtls_mpi_free(&serial);
  mesh_key_free(key);
  mesh_certs *c = NULL;
  ck_assert_int_eq(mesh_certs_parse(ctx, (const char *)der + sizeof der - n, (size_t)n, NULL, &c), 0);
  return c;
}

/* Key, CSR and issuance for id under issuer at now. */
static mesh_certs *issue_for(mesh_ctx *ctx, const mesh_ca *issuer, const mesh_identity *id,
                             uint64_t now) {
  mesh_key *key;
  mesh_csr *csr;
  mesh_certs *leaf = NULL;
  const char *why = NULL;
  ck_assert_int_eq(mesh_key_generate(ctx, &key), 0);
  ck_assert_int_eq(mesh_csr_new(key, id, &csr), 0);
  int rc = mesh_ca_issue(issuer, csr, id, now, &why, &leaf);
  ck_assert_msg(rc == 0, "issue: %s (%s)", mesh_strerror(rc), why ? why : "");
  mesh_csr_free(csr);
  mesh_key_free(key);
  return leaf;
}

static mesh_certs *parse_certs(mesh_ctx *ctx, const char *pem) {
  mesh_certs *c = NULL;
  const char *why = NULL;
  int rc = mesh_certs_parse(ctx, pem, strlen(pem), &why, &c);
  ck_assert_msg(rc == 0, "certs: %s (%s)", mesh_strerror(rc), why ? why : "");
  return c;
}

/* ---- Names ------------------------------------------------------------ */

START_TEST(names_round_trip) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh_identity *id = ident(ctx, "production", "frontend"), *d, *u;
  ck_assert_str_eq(mesh_identity_dns(id), DNS_ID);
  ck_assert_str_eq(mesh_identity_uri(id), URI_ID);
  ck_assert_str_eq(mesh_identity_ns(id), "production");
  ck_assert_str_eq(mesh_identity_sa(id), "frontend");
  ck_assert_str_eq(mesh_identity_cp_ns(id), "linkerd");
  ck_assert_str_eq(mesh_identity_trust_domain(id), "cluster.local");

  const char *why = NULL;
  ck_assert_int_eq(mesh_identity_parse(ctx, DNS_ID, NULL, &why, &d), 0);
  ck_assert_int_eq(mesh_identity_parse(ctx, URI_ID, NULL, &why, &u), 0);
  ck_assert_ptr_null(why);
  ck_assert_str_eq(mesh_identity_dns(d), DNS_ID);
  ck_assert_str_eq(mesh_identity_uri(d), URI_ID);
  ck_assert_str_eq(mesh_identity_dns(u), DNS_ID);
  ck_assert_str_eq(mesh_identity_uri(u), URI_ID);
  ck_assert_int_eq(mesh_identity_equal(id, d), 1);
  ck_assert_int_eq(mesh_identity_equal(d, u), 1);
  ck_assert_int_eq(mesh_identity_equal(id, NULL), 0);
  mesh_identity_free(d);
  mesh_identity_free(u);

  /* Another control plane and trust domain; the DNS form carries the
   * control plane's namespace, a SPIFFE ID needs it supplied. */
  mesh_identity *o;
  ck_assert_int_eq(mesh_identity_new(ctx, "edu", "exam-api", "mesh", "school.example", &why, &o), 0);
  ck_assert_str_eq(mesh_identity_dns(o), "exam-api.edu.serviceaccount.identity.mesh.school.example");
  ck_assert_str_eq(mesh_identity_uri(o), "spiffe://school.example/ns/edu/sa/exam-api");
  ck_assert_int_eq(mesh_identity_parse(ctx, mesh_identity_dns(o), "ignored-for-dns", &why, &d), 0);
  ck_assert_str_eq(mesh_identity_cp_ns(d), "mesh");
  ck_assert_int_eq(mesh_identity_parse(ctx, mesh_identity_uri(o), NULL, &why, &u), 0);
  ck_assert_str_eq(mesh_identity_cp_ns(u), "linkerd");
  ck_assert_str_eq(mesh_identity_dns(u), "exam-api.edu.serviceaccount.identity.linkerd.school.example");
  /* Equality is (trust domain, namespace, service account) only. */
  ck_assert_int_eq(mesh_identity_equal(o, u), 1);
  ck_assert_int_eq(mesh_identity_equal(o, id), 0);
  mesh_identity_free(u);
  ck_assert_int_eq(mesh_identity_parse(ctx, mesh_identity_uri(o), "mesh", &why, &u), 0);
  ck_assert_str_eq(mesh_identity_dns(u), mesh_identity_dns(o));

  /* Same namespace and account in another trust domain is another workload. */
  mesh_identity *t;
  ck_assert_int_eq(mesh_identity_parse(ctx, "spiffe://other.domain/ns/production/sa/frontend",
                                       NULL, &why, &t), 0);
  ck_assert_int_eq(mesh_identity_equal(id, t), 0);

  /* Matching a name in either form, without allocating. */
  ck_assert_int_eq(mesh_identity_match(id, DNS_ID, &why), 0);
  ck_assert_int_eq(mesh_identity_match(id, URI_ID, &why), 0);
  ck_assert_int_eq(mesh_identity_match(id, "spiffe://other.domain/ns/production/sa/frontend", &why),
                   MESH_ERR_IDENTITY);
  ck_assert_int_eq(mesh_identity_match(id, "backend.production.serviceaccount.identity.linkerd.cluster.local", &why),
                   MESH_ERR_IDENTITY);
  why = NULL;
  ck_assert_int_eq(mesh_identity_match(id, "not an identity", &why), MESH_ERR_PARSE);
  ck_assert_ptr_nonnull(why);
  ck_assert_int_eq(mesh_identity_match(NULL, DNS_ID, &why), MESH_ERR_INVALID);

  /* Bad arguments leave ret alone. */
  mesh_identity *keep = (mesh_identity *)ctx;
  ck_assert_int_eq(mesh_identity_parse(NULL, DNS_ID, NULL, NULL, &keep), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_identity_parse(ctx, "x", NULL, NULL, &keep), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_identity_new(ctx, NULL, "a", NULL, NULL, NULL, &keep), MESH_ERR_INVALID);
  ck_assert_ptr_eq(keep, (mesh_identity *)ctx);
  ck_assert_ptr_null(mesh_identity_dns(NULL));
  mesh_identity_free(NULL);

  mesh_identity_free(t);
  mesh_identity_free(u);
  mesh_identity_free(d);
  mesh_identity_free(o);
  mesh_identity_free(id);
  mesh_ctx_free(ctx);
}
END_TEST

typedef struct {
  const char *name;
  const char *reason; /* a part of the expected reason */
} bad_name;

START_TEST(names_every_validation_error) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  static char long_dns[300], long_sa[160], long_uri[2100], long_td_uri[400];
  memset(long_dns, 'a', 254);
  memcpy(long_dns, "a.b.serviceaccount.identity.linkerd.", 36);
  memset(long_sa, 'a', 64);
  strcpy(long_sa + 64, ".production.serviceaccount.identity.linkerd.cluster.local");
  strcpy(long_uri, "spiffe://cluster.local/ns/a/sa/b/");
  memset(long_uri + strlen(long_uri), 'x', 2049 - strlen(long_uri));
  /* A trust domain of four 60-byte labels: a fine SPIFFE ID whose DNS form is too long. */
  strcpy(long_td_uri, "spiffe://");
  for (int i = 0; i < 4; i++) {
    size_t o = strlen(long_td_uri);
    memset(long_td_uri + o, 'd', 60);
    strcpy(long_td_uri + o + 60, i < 3 ? "." : "/ns/production/sa/frontend");
  }
  const bad_name cases[] = {
      {"", "empty"},
      {long_dns, "longer than 253"},
      {"Frontend.production.serviceaccount.identity.linkerd.cluster.local", "lowercase"},
      {"front_end.production.serviceaccount.identity.linkerd.cluster.local", "character outside"},
      {"frontend production.serviceaccount.identity.linkerd.cluster.local", "character outside"},
      {"frontend..serviceaccount.identity.linkerd.cluster.local", "empty label"},
      {".frontend.production.serviceaccount.identity.linkerd.cluster.local", "empty label"},
      {"frontend.production.serviceaccount.identity.linkerd.cluster.local.", "empty label"},
      {"frontend.production.identity.linkerd.cluster.local", "must be <sa>.<ns>"},
      {"frontend.production.serviceaccount.identity.linkerd", "must be <sa>.<ns>"},
      {"frontend.production.svc.cluster.local", "must be <sa>.<ns>"},
      {"-frontend.production.serviceaccount.identity.linkerd.cluster.local", "service account"},
      {long_sa, "service account"},
      {"frontend.production-.serviceaccount.identity.linkerd.cluster.local", "namespace"},
      {"frontend.production.serviceaccount.identity.-linkerd.cluster.local", "control-plane"},
      {"frontend.production.serviceaccount.identity.linkerd.cluster-.local", "trust domain"},
      {"https://cluster.local/ns/production/sa/frontend", "must start with spiffe://"},
      {"spiffe:/cluster.local/ns/production/sa/frontend", "must start with spiffe://"},
      {"SPIFFE://cluster.local/ns/production/sa/frontend", "lowercase 'spiffe'"},
      {"spiffe://cluster.local/ns/production/sa/frontend?x=1", "query or a fragment"},
      {"spiffe://cluster.local/ns/production/sa/frontend#f", "query or a fragment"},
      {"spiffe:///ns/production/sa/frontend", "no trust domain"},
      {"spiffe://", "no trust domain"},
      {"spiffe://user@cluster.local/ns/production/sa/frontend", "user info"},
      {"spiffe://cluster.local:8443/ns/production/sa/frontend", "port"},
      {"spiffe://Cluster.local/ns/production/sa/frontend", "lowercase letters"},
      {"spiffe://cluster.local/ns//sa/frontend", "empty segment"},
      {"spiffe://cluster.local/ns/production/sa/frontend/", "empty segment"},
      {"spiffe://cluster.local/ns/./sa/frontend", "'.' or '..'"},
      {"spiffe://cluster.local/ns/production/sa/..", "'.' or '..'"},
      {"spiffe://cluster.local/ns/prod%20uction/sa/frontend", "character outside"},
      {"spiffe://cluster.local", "path must be"},
      {"spiffe://cluster.local/ns/production", "path must be"},
      {"spiffe://cluster.local/ns/production/sa/frontend/extra", "path must be"},
      {"spiffe://cluster.local/namespace/production/sa/frontend", "path must be"},
      {"spiffe://cluster.local/ns/Production/sa/frontend", "namespace"},
      {"spiffe://cluster.local/ns/production/sa/front_end", "service account"},
      {"spiffe://cluster_local/ns/production/sa/frontend", "not a DNS name"},
      {"spiffe://cluster..local/ns/production/sa/frontend", "not a DNS name"},
      {long_uri, "longer than 2048"},
      {long_td_uri, "would be longer than 253"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    mesh_identity *id = (mesh_identity *)ctx;
    const char *why = NULL;
    int rc = mesh_identity_parse(ctx, cases[i].name, NULL, &why, &id);
    ck_assert_msg(rc == MESH_ERR_PARSE, "case %zu (%.60s): rc %d", i, cases[i].name, rc);
    ck_assert_ptr_eq(id, (mesh_identity *)ctx);
    ck_assert_msg(why && strstr(why, cases[i].reason), "case %zu (%.60s): reason \"%s\", want \"%s\"",
                  i, cases[i].name, why ? why : "(none)", cases[i].reason);
    /* The same reasons come from matching. */
    mesh_identity *ok = ident(ctx, "production", "frontend");
    const char *why2 = NULL;
    ck_assert_int_eq(mesh_identity_match(ok, cases[i].name, &why2), MESH_ERR_PARSE);
    ck_assert_ptr_eq(why2, why);
    mesh_identity_free(ok);
  }
  /* The longest valid DNS identity is exactly 253 bytes. */
  char max[254];
  strcpy(max, "a.b.serviceaccount.identity.linkerd.");
  size_t o = strlen(max);
  while (o < 253) {
    size_t n = 253 - o > 63 ? 62 : 253 - o;
    memset(max + o, 'c', n);
    o += n;
    if (o < 253) max[o++] = '.';
  }
  max[253] = '\0';
  mesh_identity *id;
  const char *why = NULL;
  ck_assert_int_eq(mesh_identity_parse(ctx, max, NULL, &why, &id), 0);
  ck_assert_uint_eq(strlen(mesh_identity_dns(id)), 253);
  mesh_identity_free(id);

  /* Building from parts validates each. */
  const char *parts[][5] = {
      {"", "frontend", NULL, NULL, "namespace"},
      {"production", "Frontend", NULL, NULL, "service account"},
      {"production", "frontend", "linkerd.io", NULL, "control-plane"},
      {"production", "frontend", NULL, "cluster_local", "trust domain"},
      {"production", "frontend", NULL, "", "trust domain"},
  };
  for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
    why = NULL;
    ck_assert_int_eq(mesh_identity_new(ctx, parts[i][0], parts[i][1], parts[i][2], parts[i][3], &why, &id),
                     MESH_ERR_PARSE);
    assert_why(why, parts[i][4]);
  }
  /* A bad control-plane namespace for a SPIFFE ID. */
  why = NULL;
  ck_assert_int_eq(mesh_identity_parse(ctx, URI_ID, "Bad", &why, &id), MESH_ERR_PARSE);
  assert_why(why, "control-plane");
  mesh_ctx_free(ctx);
}
END_TEST

static int op_parse_name(mesh_ctx *ctx, void *arg) {
  mesh_identity *id;
  int rc = mesh_identity_parse(ctx, arg, NULL, NULL, &id);
  if (rc) return rc;
  ck_assert_str_eq(mesh_identity_dns(id), DNS_ID);
  mesh_identity_free(id);
  return 0;
}

START_TEST(names_allocation_failures) {
  ck_assert_int_ge(test_alloc_failures(op_parse_name, (void *)DNS_ID), 1);
  ck_assert_int_ge(test_alloc_failures(op_parse_name, (void *)URI_ID), 1);
  /* Every object lives in the context's allocator. */
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  mesh_identity *id = ident(ctx, "production", "frontend");
  ck_assert_int_eq(a.live, 2);
  mesh_identity_free(id);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
}
END_TEST

/* ---- Keys ------------------------------------------------------------- */

static int fixed_random(void *ud, uint8_t *buf, size_t len) {
  memset(buf, *(int *)ud, len);
  return 0;
}

static int broken_random(void *ud, uint8_t *buf, size_t len) {
  (void)ud;
  (void)buf;
  (void)len;
  return MESH_ERR_IO;
}

START_TEST(keys) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh_key *k, *k2, *pub;
  ck_assert_int_eq(mesh_key_generate(ctx, &k), 0);
  ck_assert_ptr_nonnull(strstr(mesh_key_pem(k), "-----BEGIN EC PRIVATE KEY-----"));
  ck_assert_ptr_nonnull(strstr(mesh_key_public_pem(k), "-----BEGIN PUBLIC KEY-----"));
  ck_assert_uint_eq(strlen(mesh_key_id(k)), 43);

  const char *why = NULL;
  ck_assert_int_eq(mesh_key_parse(ctx, mesh_key_pem(k), strlen(mesh_key_pem(k)), &why, &k2), 0);
  ck_assert_str_eq(mesh_key_id(k2), mesh_key_id(k));
  ck_assert_str_eq(mesh_key_public_pem(k2), mesh_key_public_pem(k));
  ck_assert_int_eq(mesh_key_parse(ctx, mesh_key_public_pem(k), strlen(mesh_key_public_pem(k)), &why, &pub), 0);
  ck_assert_ptr_null(mesh_key_pem(pub));
  ck_assert_str_eq(mesh_key_id(pub), mesh_key_id(k));
  mesh_key_free(k2);

  /* RSA keys are for issuers; they have no JWS thumbprint here. */
  ck_assert_int_eq(mesh_key_parse(ctx, RSA_KEY_PEM, strlen(RSA_KEY_PEM), &why, &k2), 0);
  ck_assert_str_eq(mesh_key_id(k2), "");
  mesh_key_free(k2);

  mesh_key *keep = (mesh_key *)ctx;
  why = NULL;
  ck_assert_int_eq(mesh_key_parse(ctx, "junk", 4, &why, &keep), MESH_ERR_PARSE);
  assert_why(why, "not a PEM or DER");
  ck_assert_ptr_eq(keep, (mesh_key *)ctx);
  static char big[70000];
  memset(big, 'a', sizeof big);
  ck_assert_int_eq(mesh_key_parse(ctx, big, sizeof big, &why, &keep), MESH_ERR_LIMIT);
  ck_assert_int_eq(mesh_key_generate(NULL, &keep), MESH_ERR_INVALID);

  /* Keys come from the context's random source, and nothing else. */
  int byte = 7;
  ck_assert_int_eq(mesh_ctx_set_random(ctx, fixed_random, &byte), 0);
  ck_assert_int_eq(mesh_key_generate(ctx, &k2), 0);
  mesh_key *k3;
  ck_assert_int_eq(mesh_key_generate(ctx, &k3), 0);
  ck_assert_str_eq(mesh_key_id(k2), mesh_key_id(k3));
  mesh_key_free(k3);
  byte = 8;
  ck_assert_int_eq(mesh_key_generate(ctx, &k3), 0);
  ck_assert_str_ne(mesh_key_id(k2), mesh_key_id(k3));
  mesh_key_free(k3);
  mesh_key_free(k2);
  ck_assert_int_eq(mesh_ctx_set_random(ctx, broken_random, NULL), 0);
  ck_assert_int_eq(mesh_key_generate(ctx, &keep), MESH_ERR_IO);
  ck_assert_ptr_eq(keep, (mesh_key *)ctx);

  mesh_key_free(pub);
  mesh_key_free(k);
  mesh_key_free(NULL);
  mesh_ctx_free(ctx);
}
END_TEST

/* ---- CSRs ------------------------------------------------------------- */

START_TEST(csr_round_trip) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh_identity *id = ident(ctx, "production", "frontend"), *claimed;
  mesh_key *key;
  mesh_csr *csr, *again;
  ck_assert_int_eq(mesh_key_generate(ctx, &key), 0);
  ck_assert_int_eq(mesh_csr_new(key, id, &csr), 0);
  const char *pem = mesh_csr_pem(csr), *why = NULL;
  ck_assert_ptr_nonnull(strstr(pem, "-----BEGIN CERTIFICATE REQUEST-----"));
  ck_assert_int_eq(mesh_csr_verify(csr, id, &why), 0);
  ck_assert_int_eq(mesh_csr_identity(csr, &why, &claimed), 0);
  ck_assert_int_eq(mesh_identity_equal(claimed, id), 1);
  ck_assert_str_eq(mesh_identity_dns(claimed), DNS_ID);
  mesh_identity_free(claimed);

  /* What the identity service receives: PEM or DER. */
  ck_assert_int_eq(mesh_csr_parse(ctx, pem, strlen(pem), &why, &again), 0);
  ck_assert_int_eq(mesh_csr_verify(again, id, &why), 0);
  mesh_csr_free(again);
  size_t der_len = 0;
  const uint8_t *der = mesh_csr_der(csr, &der_len);
  ck_assert_uint_gt(der_len, 100);
  ck_assert_int_eq(mesh_csr_parse(ctx, (const char *)der, der_len, &why, &again), 0);
  ck_assert_int_eq(mesh_csr_verify(again, id, &why), 0);
  ck_assert_str_eq(mesh_csr_pem(again), pem);
  mesh_csr_free(again);

  /* openssl's header for old requests is accepted too. */
  char old[4096];
  const char *body = pem + strlen("-----BEGIN CERTIFICATE REQUEST-----\n");
  size_t body_len = strstr(body, "-----END") - body;
  snprintf(old, sizeof old, "-----BEGIN NEW CERTIFICATE REQUEST-----\n%.*s-----END NEW CERTIFICATE REQUEST-----\n",
           (int)body_len, body);
  ck_assert_int_eq(mesh_csr_parse(ctx, old, strlen(old), &why, &again), 0);
  mesh_csr_free(again);

  /* A public key cannot sign. */
  mesh_key *pub;
  mesh_csr *keep = (mesh_csr *)ctx;
  ck_assert_int_eq(mesh_key_parse(ctx, mesh_key_public_pem(key), strlen(mesh_key_public_pem(key)), NULL, &pub), 0);
  ck_assert_int_eq(mesh_csr_new(pub, id, &keep), MESH_ERR_INVALID);
  mesh_key_free(pub);
  ck_assert_int_eq(mesh_key_parse(ctx, RSA_KEY_PEM, strlen(RSA_KEY_PEM), NULL, &pub), 0);
  ck_assert_int_eq(mesh_csr_new(pub, id, &keep), MESH_ERR_UNSUPPORTED);
  ck_assert_ptr_eq(keep, (mesh_csr *)ctx);
  mesh_key_free(pub);

  mesh_csr_free(csr);
  mesh_csr_free(NULL);
  mesh_key_free(key);
  mesh_identity_free(id);
  mesh_ctx_free(ctx);
}
END_TEST

typedef struct {
  const char *subject;
  san_spec san[4];
  size_t nsan; /* 99: no SAN extension */
  int verify_rc;
  const char *reason;
} csr_case;

START_TEST(csr_refusals) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh_identity *id = ident(ctx, "production", "frontend"), *other = ident(ctx, "production", "admin");
  mesh_ca *anchor, *issuer;
  ck_assert_int_eq(mesh_ca_init(ctx, NULL, NULL, NOW, 0, &anchor, &issuer), 0);
  mesh_key *key;
  ck_assert_int_eq(mesh_key_generate(ctx, &key), 0);
  const char *cn = "CN=" DNS_ID;
  const csr_case cases[] = {
      /* The good shapes: CN = DNS identity or no subject at all (PKCS#10 allows it). */
      {cn, {{2, DNS_ID, 0}, {6, URI_ID, 0}}, 2, 0, NULL},
      {NULL, {{6, URI_ID, 0}, {2, DNS_ID, 0}}, 2, 0, NULL},
      /* Extra SANs of every kind. */
      {cn, {{2, DNS_ID, 0}, {6, URI_ID, 0}, {2, "evil.example.com", 0}}, 3, MESH_ERR_IDENTITY, "exactly two SANs"},
      {cn, {{2, DNS_ID, 0}, {6, URI_ID, 0}, {6, "spiffe://cluster.local/ns/x/sa/y", 0}}, 3, MESH_ERR_IDENTITY, "exactly two SANs"},
      {cn, {{2, DNS_ID, 0}, {6, URI_ID, 0}, {7, "\x0a\x00\x00\x01", 4}}, 3, MESH_ERR_IDENTITY, "exactly two SANs"},
      {cn, {{2, DNS_ID, 0}, {6, URI_ID, 0}, {1, "root@example.com", 0}}, 3, MESH_ERR_IDENTITY, "exactly two SANs"},
      /* Missing SANs. */
      {cn, {{2, DNS_ID, 0}}, 1, MESH_ERR_IDENTITY, "exactly two SANs"},
      {cn, {{6, URI_ID, 0}}, 1, MESH_ERR_IDENTITY, "exactly two SANs"},
      {cn, {{0}}, 99, MESH_ERR_IDENTITY, "no subjectAltName"},
      /* Another identity, wholly or in part. */
      {cn, {{2, DNS_ID, 0}, {6, "spiffe://cluster.local/ns/production/sa/admin", 0}}, 2, MESH_ERR_IDENTITY, "another identity"},
      {cn, {{2, "admin.production.serviceaccount.identity.linkerd.cluster.local", 0}, {6, URI_ID, 0}}, 2,
       MESH_ERR_IDENTITY, "another identity"},
      /* Subjects other than empty or CN=<dns>. */
      {"CN=admin", {{2, DNS_ID, 0}, {6, URI_ID, 0}}, 2, MESH_ERR_IDENTITY, "subject"},
      {"CN=" DNS_ID ",O=Evil", {{2, DNS_ID, 0}, {6, URI_ID, 0}}, 2, MESH_ERR_IDENTITY, "subject"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const csr_case *c = &cases[i];
    mesh_csr *csr = craft_csr(ctx, key, c->subject, c->nsan == 99 ? NULL : c->san, c->nsan == 99 ? 0 : c->nsan);
    const char *why = NULL;
    int rc = mesh_csr_verify(csr, id, &why);
    ck_assert_msg(rc == c->verify_rc, "case %zu: verify %d (%s)", i, rc, why ? why : "");
    if (c->reason) assert_why(why, c->reason);
    mesh_certs *leaf = (mesh_certs *)ctx;
    why = NULL;
    rc = mesh_ca_issue(issuer, csr, id, NOW, &why, &leaf);
    ck_assert_msg(rc == c->verify_rc, "case %zu: issue %d (%s)", i, rc, why ? why : "");
    if (rc == 0) {
      /* The leaf is built from the identity, whatever the CSR's subject. */
      ck_assert_str_eq(mesh_certs_subject(leaf, 0), cn);
      ck_assert_uint_eq(mesh_certs_san_count(leaf, 0), 2);
      mesh_certs_free(leaf);
    } else {
      ck_assert_ptr_eq(leaf, (mesh_certs *)ctx);
    }
    mesh_csr_free(csr);
  }

  /* The CSR is fine but names someone else than the token proved. */
  mesh_csr *csr;
  mesh_certs *leaf = (mesh_certs *)ctx;
  const char *why = NULL;
  ck_assert_int_eq(mesh_csr_new(key, id, &csr), 0);
  ck_assert_int_eq(mesh_csr_verify(csr, other, &why), MESH_ERR_IDENTITY);
  assert_why(why, "another identity");
  ck_assert_int_eq(mesh_ca_issue(issuer, csr, other, NOW, &why, &leaf), MESH_ERR_IDENTITY);
  ck_assert_ptr_eq(leaf, (mesh_certs *)ctx);

  /* A bad signature: the last byte of the DER is inside the signature's s. */
  size_t n;
  const uint8_t *der = mesh_csr_der(csr, &n);
  unsigned char bad[4096];
  memcpy(bad, der, n);
  bad[n - 1] ^= 0x01;
  mesh_csr *forged;
  ck_assert_int_eq(mesh_csr_parse(ctx, (const char *)bad, n, &why, &forged), 0);
  why = NULL;
  ck_assert_int_eq(mesh_csr_verify(forged, id, &why), MESH_ERR_DENIED);
  assert_why(why, "signature");
  ck_assert_int_eq(mesh_ca_issue(issuer, forged, id, NOW, &why, &leaf), MESH_ERR_DENIED);
  mesh_csr_free(forged);
  /* A changed claim under the original signature. */
  memcpy(bad, der, n);
  unsigned char *hit = memmem(bad, n, "frontend.production", 19);
  ck_assert_ptr_nonnull(hit);
  hit[0] = 'g';
  ck_assert_int_eq(mesh_csr_parse(ctx, (const char *)bad, n, &why, &forged), 0);
  ck_assert_int_eq(mesh_csr_verify(forged, id, &why), MESH_ERR_DENIED);
  mesh_csr_free(forged);

  /* Malformed input. */
  mesh_csr *keep = (mesh_csr *)ctx;
  why = NULL;
  ck_assert_int_eq(mesh_csr_parse(ctx, "hello", 5, &why, &keep), MESH_ERR_PARSE);
  assert_why(why, "not a PEM or DER");
  why = NULL;
  ck_assert_int_eq(mesh_csr_parse(ctx, (const char *)der, n - 10, &why, &keep), MESH_ERR_PARSE);
  assert_why(why, "malformed");
  const char *junk_pem = "-----BEGIN CERTIFICATE REQUEST-----\n@@@@\n-----END CERTIFICATE REQUEST-----\n";
  ck_assert_int_eq(mesh_csr_parse(ctx, junk_pem, strlen(junk_pem), &why, &keep), MESH_ERR_PARSE);
  static char big[MESH_CSR_MAX_BYTES + 1];
  ck_assert_int_eq(mesh_csr_parse(ctx, big, sizeof big, &why, &keep), MESH_ERR_LIMIT);
  ck_assert_ptr_eq(keep, (mesh_csr *)ctx);

  /* An RSA workload key is refused: the mesh's leaves are P-256. */
  mesh_key *rsa;
  ck_assert_int_eq(mesh_key_parse(ctx, RSA_KEY_PEM, strlen(RSA_KEY_PEM), NULL, &rsa), 0);
  mbedtls_x509write_csr w;
  mbedtls_x509write_csr_init(&w);
  mbedtls_x509write_csr_set_key(&w, mesh__key_pk(rsa));
  mbedtls_x509write_csr_set_md_alg(&w, MBEDTLS_MD_SHA256);
  ck_assert_int_eq(mbedtls_x509write_csr_set_subject_name(&w, cn), 0);
  mesh__rng rng;
  ck_assert_int_eq(mesh__rng_init(&rng, ctx), 0);
  unsigned char rder[4096];
  int rn = mbedtls_x509write_csr_der(&w, rder, sizeof rder, mesh__rng_random, &rng);
  ck_assert_int_gt(rn, 0);
  mesh__rng_free(&rng);
  mbedtls_x509write_csr_free(&w);
  why = NULL;
  ck_assert_int_eq(mesh_csr_parse(ctx, (const char *)rder + sizeof rder - rn, (size_t)rn, &why, &keep),
                   MESH_ERR_UNSUPPORTED);
  assert_why(why, "ECDSA");
  mesh_key_free(rsa);

  mesh_csr_free(csr);
  mesh_key_free(key);
  mesh_ca_free(anchor);
  mesh_ca_free(issuer);
  mesh_identity_free(other);
  mesh_identity_free(id);
  mesh_ctx_free(ctx);
}
END_TEST

/* ---- Issuance and verification ------------------------------------------ */

START_TEST(issue_and_verify_round_trip) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh_ca *anchor, *issuer;
  ck_assert_int_eq(mesh_ca_init(ctx, NULL, NULL, NOW, 0, &anchor, &issuer), 0);
  const mesh_certs *ac = mesh_ca_certs(anchor), *ic = mesh_ca_certs(issuer);

  /* The trust anchor and the issuer, as `meshctl identity init` makes them. */
  ck_assert_uint_eq(mesh_certs_count(ac), 1);
  ck_assert_str_eq(mesh_certs_subject(ac, 0), "CN=root.linkerd.cluster.local");
  ck_assert_str_eq(mesh_certs_issuer(ac, 0), "CN=root.linkerd.cluster.local");
  ck_assert_int_eq(mesh_certs_is_ca(ac, 0), 1);
  ck_assert_int_eq(mesh_certs_pathlen(ac, 0), -1);
  ck_assert_uint_eq(mesh_certs_not_before(ac, 0), NOW - 20);
  ck_assert_uint_eq(mesh_certs_not_after(ac, 0), NOW + 365 * DAY);
  ck_assert_uint_eq(mesh_certs_count(ic), 1); /* the self-signed anchor is not in the chain */
  ck_assert_str_eq(mesh_certs_subject(ic, 0), "CN=identity.linkerd.cluster.local");
  ck_assert_str_eq(mesh_certs_issuer(ic, 0), "CN=root.linkerd.cluster.local");
  ck_assert_int_eq(mesh_certs_is_ca(ic, 0), 1);
  ck_assert_int_eq(mesh_certs_pathlen(ic, 0), 0);
  ck_assert_uint_eq(mesh_certs_not_after(ic, 0), NOW + 365 * DAY);
  ck_assert_uint_eq(mesh_certs_san_count(ic, 0), 0);
  ck_assert_ptr_nonnull(strstr(mesh_key_pem(mesh_ca_key(issuer)), "PRIVATE KEY"));
  const char *why = NULL;
  ck_assert_int_eq(mesh_certs_verify(ic, ac, NOW, &why), 0);

  mesh_identity *id = ident(ctx, "production", "frontend"), *peer;
  mesh_certs *leaf = issue_for(ctx, issuer, id, NOW);
  ck_assert_uint_eq(mesh_certs_count(leaf), 2);
  ck_assert_str_eq(mesh_certs_subject(leaf, 0), "CN=" DNS_ID);
  ck_assert_str_eq(mesh_certs_issuer(leaf, 0), "CN=identity.linkerd.cluster.local");
  ck_assert_int_eq(mesh_certs_is_ca(leaf, 0), 0);
  ck_assert_int_eq(mesh_certs_pathlen(leaf, 0), -1);
  ck_assert_uint_eq(mesh_certs_not_before(leaf, 0), NOW - 20);
  ck_assert_uint_eq(mesh_certs_not_after(leaf, 0), NOW + DAY);
  ck_assert_uint_eq(mesh_certs_san_count(leaf, 0), 2);
  ck_assert_int_eq(mesh_certs_san_type(leaf, 0, 0), MESH_SAN_DNS);
  ck_assert_str_eq(mesh_certs_san_value(leaf, 0, 0), DNS_ID);
  ck_assert_int_eq(mesh_certs_san_type(leaf, 0, 1), MESH_SAN_URI);
  ck_assert_str_eq(mesh_certs_san_value(leaf, 0, 1), URI_ID);
  ck_assert_int_eq(mesh_certs_san_type(leaf, 0, 2), -1);
  ck_assert_ptr_null(mesh_certs_san_value(leaf, 0, 2));
  ck_assert_ptr_null(mesh_certs_subject(leaf, 2));
  ck_assert_uint_ge(strlen(mesh_certs_serial(leaf, 0)), 16 * 3 - 1);

  /* Key usage, extended key usage, basic constraints, exactly as issued. */
  const mbedtls_x509_crt *crt = mesh__certs_crt(leaf);
  ck_assert_uint_eq(crt->key_usage, MBEDTLS_X509_KU_DIGITAL_SIGNATURE);
  ck_assert_int_eq(mbedtls_x509_crt_check_extended_key_usage(crt, MBEDTLS_OID_SERVER_AUTH,
                                                             MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH)), 0);
  ck_assert_int_eq(mbedtls_x509_crt_check_extended_key_usage(crt, MBEDTLS_OID_CLIENT_AUTH,
                                                             MBEDTLS_OID_SIZE(MBEDTLS_OID_CLIENT_AUTH)), 0);
  ck_assert_int_eq(mbedtls_x509_crt_check_extended_key_usage(crt, MBEDTLS_OID_CODE_SIGNING,
                                                             MBEDTLS_OID_SIZE(MBEDTLS_OID_CODE_SIGNING)), MBEDTLS_ERR_X509_BAD_INPUT_DATA);
  ck_assert(crt->ext_types & MBEDTLS_X509_EXT_BASIC_CONSTRAINTS);
  ck_assert_int_eq(crt->ca_istrue, 0);
  /* The leaf's issuer name is the issuer's subject, byte for byte. */
  ck_assert_uint_eq(crt->issuer_raw.len, crt->next->subject_raw.len);
  ck_assert(!memcmp(crt->issuer_raw.p, crt->next->subject_raw.p, crt->issuer_raw.len));

  /* Leaf PEM + issuer chain PEM, and they read back. */
  ck_assert_str_eq(mesh_certs_bundle_pem(leaf, 1), mesh_certs_pem(ic, 0));
  ck_assert_str_eq(mesh_certs_pem(leaf, 1), mesh_certs_pem(ic, 0));
  ck_assert_uint_eq(strlen(mesh_certs_bundle_pem(leaf, 0)),
                    strlen(mesh_certs_pem(leaf, 0)) + strlen(mesh_certs_pem(leaf, 1)));
  ck_assert_ptr_null(mesh_certs_bundle_pem(leaf, 2));
  mesh_certs *back = parse_certs(ctx, mesh_certs_bundle_pem(leaf, 0));
  ck_assert_uint_eq(mesh_certs_count(back), 2);
  ck_assert_str_eq(mesh_certs_serial(back, 0), mesh_certs_serial(leaf, 0));
  ck_assert_uint_eq(mesh_certs_not_after(back, 0), NOW + DAY);

  /* Verification and the peer's identity. */
  ck_assert_int_eq(mesh_certs_verify(back, ac, NOW, &why), 0);
  ck_assert_int_eq(mesh_certs_verify_peer(back, ac, NOW, id, &why, &peer), 0);
  ck_assert_int_eq(mesh_identity_equal(peer, id), 1);
  ck_assert_str_eq(mesh_identity_dns(peer), DNS_ID);
  mesh_identity_free(peer);
  ck_assert_int_eq(mesh_certs_verify_peer(back, ac, NOW, NULL, &why, NULL), 0);
  mesh_identity *other = ident(ctx, "production", "admin");
  peer = (mesh_identity *)ctx;
  why = NULL;
  ck_assert_int_eq(mesh_certs_verify_peer(back, ac, NOW, other, &why, &peer), MESH_ERR_IDENTITY);
  assert_why(why, "another workload");
  ck_assert_ptr_eq(peer, (mesh_identity *)ctx);
  ck_assert_int_eq(mesh_certs_identity(back, 0, &why, &peer), 0);
  ck_assert_int_eq(mesh_identity_equal(peer, id), 1);
  mesh_identity_free(peer);
  why = NULL;
  ck_assert_int_eq(mesh_certs_identity(back, 1, &why, &peer), MESH_ERR_IDENTITY);
  assert_why(why, "is a CA");
  ck_assert_int_eq(mesh_certs_identity(back, 2, &why, &peer), MESH_ERR_INVALID);

  /* Serials are random. */
  mesh_certs *leaf2 = issue_for(ctx, issuer, id, NOW);
  ck_assert_str_ne(mesh_certs_serial(leaf2, 0), mesh_certs_serial(leaf, 0));
  mesh_certs_free(leaf2);

  mesh_identity_free(other);
  mesh_certs_free(back);
  mesh_certs_free(leaf);
  mesh_identity_free(id);
  mesh_ca_free(issuer);
  mesh_ca_free(anchor);
  mesh_ca_free(NULL);
  mesh_certs_free(NULL);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(lifetimes_and_clamping) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh_identity *id = ident(ctx, "production", "frontend");
  mesh_ca *anchor, *issuer;
  /* An issuer that has only an hour left clamps every leaf to it. */
  ck_assert_int_eq(mesh_ca_init(ctx, "example.org", "mesh", NOW, 3600, &anchor, &issuer), 0);
  ck_assert_str_eq(mesh_certs_subject(mesh_ca_certs(anchor), 0), "CN=root.mesh.example.org");
  ck_assert_str_eq(mesh_certs_subject(mesh_ca_certs(issuer), 0), "CN=identity.mesh.example.org");
  ck_assert_uint_eq(mesh_certs_not_after(mesh_ca_certs(issuer), 0), NOW + 3600);
  mesh_certs *leaf = issue_for(ctx, issuer, id, NOW + 1000);
  ck_assert_uint_eq(mesh_certs_not_after(leaf, 0), NOW + 3600);
  mesh_certs_free(leaf);

  /* Settings: lifetime and skew. */
  mesh_ca_free(issuer);
  mesh_ca_free(anchor);
  ck_assert_int_eq(mesh_ca_init(ctx, NULL, NULL, NOW, 0, &anchor, &issuer), 0);
  ck_assert_int_eq(mesh_ca_set_lifetime(issuer, 7200), 0);
  ck_assert_int_eq(mesh_ca_set_clock_skew(issuer, 0), 0);
  leaf = issue_for(ctx, issuer, id, NOW + 100);
  ck_assert_uint_eq(mesh_certs_not_before(leaf, 0), NOW + 100);
  ck_assert_uint_eq(mesh_certs_not_after(leaf, 0), NOW + 7300);
  mesh_certs_free(leaf);
  /* notBefore is never before the issuer's. */
  ck_assert_int_eq(mesh_ca_set_clock_skew(issuer, 3600), 0);
  leaf = issue_for(ctx, issuer, id, NOW);
  ck_assert_uint_eq(mesh_certs_not_before(leaf, 0), NOW - 20);
  mesh_certs_free(leaf);
  ck_assert_int_eq(mesh_ca_set_lifetime(issuer, 0), 0); /* back to 24 h */
  ck_assert_int_eq(mesh_ca_set_lifetime(issuer, 20ull * 365 * DAY), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_ca_set_clock_skew(issuer, 2 * DAY), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_ca_set_lifetime(NULL, 1), MESH_ERR_INVALID);

  /* An issuer outside its validity issues nothing. */
  mesh_key *key;
  mesh_csr *csr;
  ck_assert_int_eq(mesh_key_generate(ctx, &key), 0);
  ck_assert_int_eq(mesh_csr_new(key, id, &csr), 0);
  const char *why = NULL;
  leaf = (mesh_certs *)ctx;
  ck_assert_int_eq(mesh_ca_issue(issuer, csr, id, NOW + 366 * DAY, &why, &leaf), MESH_ERR_EXPIRED);
  assert_why(why, "expired");
  ck_assert_int_eq(mesh_ca_issue(issuer, csr, id, NOW - DAY, &why, &leaf), MESH_ERR_EXPIRED);
  assert_why(why, "not valid yet");
  ck_assert_ptr_eq(leaf, (mesh_certs *)ctx);

  /* A pathlen-0 issuer may not make another CA; names are checked. */
  mesh_ca *sub = (mesh_ca *)ctx;
  ck_assert_int_eq(mesh_ca_new_issuer(issuer, "sub", NOW, 0, &sub), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_ca_new_root(ctx, "bad,name", NOW, 0, &sub), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_ca_new_root(ctx, "", NOW, 0, &sub), MESH_ERR_INVALID);
  ck_assert_ptr_eq(sub, (mesh_ca *)ctx);
  /* A second issuer under the same anchor (issuer rotation). */
  ck_assert_int_eq(mesh_ca_new_issuer(anchor, "identity-2", NOW, DAY, &sub), 0);
  ck_assert_int_eq(mesh_certs_verify(mesh_ca_certs(sub), mesh_ca_certs(anchor), NOW, &why), 0);
  ck_assert_uint_eq(mesh_certs_not_after(mesh_ca_certs(sub), 0), NOW + DAY);
  mesh_ca_free(sub);

  mesh_csr_free(csr);
  mesh_key_free(key);
  mesh_ca_free(issuer);
  mesh_ca_free(anchor);
  mesh_identity_free(id);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(anchor_rotation_and_bad_chains) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh_identity *id = ident(ctx, "production", "frontend");
  mesh_ca *anchor_a, *issuer_a, *anchor_b, *issuer_b;
  ck_assert_int_eq(mesh_ca_init(ctx, NULL, NULL, NOW, 0, &anchor_a, &issuer_a), 0);
  ck_assert_int_eq(mesh_ca_init(ctx, NULL, NULL, NOW, 0, &anchor_b, &issuer_b), 0);
  mesh_certs *leaf_a = issue_for(ctx, issuer_a, id, NOW), *leaf_b = issue_for(ctx, issuer_b, id, NOW);

  /* During a rotation both anchors are trusted; they even share a name. */
  char bundle[8192];
  snprintf(bundle, sizeof bundle, "%s%s", mesh_certs_pem(mesh_ca_certs(anchor_a), 0),
           mesh_certs_pem(mesh_ca_certs(anchor_b), 0));
  mesh_certs *both = parse_certs(ctx, bundle), *only_a = parse_certs(ctx, mesh_certs_pem(mesh_ca_certs(anchor_a), 0));
  ck_assert_uint_eq(mesh_certs_count(both), 2);
  const char *why = NULL;
  ck_assert_int_eq(mesh_certs_verify(leaf_a, both, NOW, &why), 0);
  ck_assert_int_eq(mesh_certs_verify(leaf_b, both, NOW, &why), 0);
  ck_assert_int_eq(mesh_certs_verify(leaf_a, only_a, NOW, &why), 0);
  why = NULL;
  ck_assert_int_eq(mesh_certs_verify(leaf_b, only_a, NOW, &why), MESH_ERR_TLS);
  assert_why(why, "trust anchor");

  /* The leaf alone, without its issuer. */
  mesh_certs *alone = parse_certs(ctx, mesh_certs_pem(leaf_a, 0));
  why = NULL;
  ck_assert_int_eq(mesh_certs_verify(alone, both, NOW, &why), MESH_ERR_TLS);
  ck_assert_ptr_nonnull(why);
  /* A leaf chained to the wrong issuer. */
  snprintf(bundle, sizeof bundle, "%s%s", mesh_certs_pem(leaf_a, 0), mesh_certs_pem(leaf_b, 1));
  mesh_certs *mixed = parse_certs(ctx, bundle);
  ck_assert_int_eq(mesh_certs_verify(mixed, both, NOW, &why), MESH_ERR_TLS);
  /* A tampered signature. */
  const mbedtls_x509_crt *crt = mesh__certs_crt(leaf_a);
  unsigned char der[4096];
  memcpy(der, crt->raw.p, crt->raw.len);
  der[crt->raw.len - 1] ^= 0x01;
  mesh_certs *tampered;
  ck_assert_int_eq(mesh_certs_parse(ctx, (const char *)der, crt->raw.len, &why, &tampered), 0);
  ck_assert_int_eq(mesh_certs_verify(tampered, mesh_ca_certs(issuer_a), NOW, &why), MESH_ERR_TLS);
  ck_assert_int_eq(mesh_certs_verify(alone, mesh_ca_certs(issuer_a), NOW, &why), 0);

  /* Time: valid [notBefore, notAfter] inclusive, judged by the caller's clock. */
  ck_assert_int_eq(mesh_certs_verify(leaf_a, both, NOW - 20, &why), 0);
  ck_assert_int_eq(mesh_certs_verify(leaf_a, both, NOW + DAY, &why), 0);
  why = NULL;
  ck_assert_int_eq(mesh_certs_verify(leaf_a, both, NOW + DAY + 1, &why), MESH_ERR_EXPIRED);
  assert_why(why, "has expired");
  why = NULL;
  ck_assert_int_eq(mesh_certs_verify(leaf_a, both, NOW - 21, &why), MESH_ERR_EXPIRED);
  assert_why(why, "not valid yet");
  mesh_identity *peer = (mesh_identity *)ctx;
  ck_assert_int_eq(mesh_certs_verify_peer(leaf_a, both, NOW + 2 * DAY, id, &why, &peer), MESH_ERR_EXPIRED);
  ck_assert_ptr_eq(peer, (mesh_identity *)ctx);
  /* An anchor past its life fails the chain even when the leaf is fine
   * (here checked with the issuer as the leaf). */
  why = NULL;
  ck_assert_int_eq(mesh_certs_verify(mesh_ca_certs(issuer_a), both, NOW + 366 * DAY, &why), MESH_ERR_EXPIRED);
  ck_assert_ptr_nonnull(why);
  ck_assert_int_eq(mesh_certs_verify(NULL, both, NOW, &why), MESH_ERR_INVALID);

  mesh_certs_free(tampered);
  mesh_certs_free(mixed);
  mesh_certs_free(alone);
  mesh_certs_free(only_a);
  mesh_certs_free(both);
  mesh_certs_free(leaf_a);
  mesh_certs_free(leaf_b);
  mesh_ca_free(anchor_a);
  mesh_ca_free(issuer_a);
  mesh_ca_free(anchor_b);
  mesh_ca_free(issuer_b);
  mesh_identity_free(id);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(identity_extraction) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh_identity *id = ident(ctx, "production", "frontend");
  struct {
    san_spec san[3];
    size_t n; /* 99: no SAN extension */
    int rc;
    const char *reason;
  } cases[] = {
      {{{2, DNS_ID, 0}, {6, URI_ID, 0}}, 2, 0, NULL},
      {{{2, DNS_ID, 0}}, 1, 0, NULL}, /* DNS-only, as older certificates are */
      {{{6, URI_ID, 0}}, 1, 0, NULL}, /* a plain SPIFFE SVID */
      {{{2, DNS_ID, 0}, {6, URI_ID, 0}, {7, "\x0a\x00\x00\x01", 4}}, 3, 0, NULL},
      {{{2, DNS_ID, 0}, {6, "spiffe://cluster.local/ns/production/sa/admin", 0}}, 2, MESH_ERR_IDENTITY, "different workloads"},
      {{{2, DNS_ID, 0}, {2, "other.example.com", 0}}, 2, MESH_ERR_IDENTITY, "more than one DNS"},
      {{{6, URI_ID, 0}, {6, URI_ID, 0}}, 2, MESH_ERR_IDENTITY, "more than one URI"},
      {{{2, "web.example.com", 0}}, 1, MESH_ERR_IDENTITY, "DNS SAN is not"},
      {{{6, "https://example.com/", 0}}, 1, MESH_ERR_IDENTITY, "URI SAN is not"},
      {{{7, "\x0a\x00\x00\x01", 4}}, 1, MESH_ERR_IDENTITY, "no DNS or URI"},
      {{{0}}, 99, MESH_ERR_IDENTITY, "no DNS or URI"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    mesh_certs *c = craft_cert(ctx, cases[i].n == 99 ? NULL : cases[i].san, cases[i].n == 99 ? 0 : cases[i].n);
    mesh_identity *got = (mesh_identity *)ctx;
    const char *why = NULL;
    int rc = mesh_certs_identity(c, 0, &why, &got);
    ck_assert_msg(rc == cases[i].rc, "case %zu: rc %d (%s)", i, rc, why ? why : "");
    if (rc == 0) {
      ck_assert_int_eq(mesh_identity_equal(got, id), 1);
      ck_assert_str_eq(mesh_identity_dns(got), DNS_ID);
      mesh_identity_free(got);
    } else {
      assert_why(why, cases[i].reason);
      ck_assert_ptr_eq(got, (mesh_identity *)ctx);
    }
    mesh_certs_free(c);
  }
  mesh_identity_free(id);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(rsa_issuer_and_inspection) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh_certs *rsa = parse_certs(ctx, RSA_CA_PEM);
  /* Inspection of a certificate made elsewhere. */
  ck_assert_str_eq(mesh_certs_subject(rsa, 0), "C=US, O=Example Org, CN=RSA Test CA");
  ck_assert_int_eq(mesh_certs_is_ca(rsa, 0), 1);
  ck_assert_int_eq(mesh_certs_pathlen(rsa, 0), -1);
  ck_assert_uint_eq(mesh_certs_san_count(rsa, 0), 4);
  ck_assert_int_eq(mesh_certs_san_type(rsa, 0, 0), MESH_SAN_EMAIL);
  ck_assert_str_eq(mesh_certs_san_value(rsa, 0, 0), "ca@example.org");
  ck_assert_int_eq(mesh_certs_san_type(rsa, 0, 1), MESH_SAN_IP);
  ck_assert_str_eq(mesh_certs_san_value(rsa, 0, 1), "10.0.0.1");
  ck_assert_int_eq(mesh_certs_san_type(rsa, 0, 2), MESH_SAN_DNS);
  ck_assert_int_eq(mesh_certs_san_type(rsa, 0, 3), MESH_SAN_URI);
  ck_assert_str_eq(mesh_certs_san_value(rsa, 0, 3), "https://example.org/ca");
  uint64_t now = mesh_certs_not_before(rsa, 0) + DAY;
  ck_assert_uint_gt(mesh_certs_not_after(rsa, 0), now + 90 * 365 * DAY);

  /* An RSA issuer signs P-256 leaves; its name (C= as PrintableString) is copied exactly. */
  mesh_ca *ca;
  const char *why = NULL;
  int rc = mesh_ca_new(ctx, RSA_CA_PEM, strlen(RSA_CA_PEM), RSA_KEY_PEM, strlen(RSA_KEY_PEM), &why, &ca);
  ck_assert_msg(rc == 0, "%s", why ? why : "");
  mesh_identity *id = ident(ctx, "production", "frontend");
  mesh_certs *leaf = issue_for(ctx, ca, id, now);
  ck_assert_str_eq(mesh_certs_issuer(leaf, 0), "C=US, O=Example Org, CN=RSA Test CA");
  const mbedtls_x509_crt *crt = mesh__certs_crt(leaf);
  ck_assert_uint_eq(crt->issuer_raw.len, crt->next->subject_raw.len);
  ck_assert(!memcmp(crt->issuer_raw.p, crt->next->subject_raw.p, crt->issuer_raw.len));
  ck_assert_int_eq(crt->sig_pk, MBEDTLS_PK_RSA);
  ck_assert_int_eq(mesh_certs_verify_peer(leaf, rsa, now, id, &why, NULL), 0);

  /* Issuers that cannot be. */
  mesh_ca *keep = (mesh_ca *)ctx;
  mesh_key *ec;
  ck_assert_int_eq(mesh_key_generate(ctx, &ec), 0);
  why = NULL;
  ck_assert_int_eq(mesh_ca_new(ctx, RSA_CA_PEM, strlen(RSA_CA_PEM), mesh_key_pem(ec), strlen(mesh_key_pem(ec)), &why, &keep),
                   MESH_ERR_INVALID);
  assert_why(why, "does not match");
  why = NULL;
  ck_assert_int_eq(mesh_ca_new(ctx, RSA_LEAF_PEM, strlen(RSA_LEAF_PEM), RSA_KEY_PEM, strlen(RSA_KEY_PEM), &why, &keep),
                   MESH_ERR_INVALID);
  assert_why(why, "not a CA");
  why = NULL;
  ck_assert_int_eq(mesh_ca_new(ctx, RSA_CA_PEM, strlen(RSA_CA_PEM), mesh_key_public_pem(ec),
                               strlen(mesh_key_public_pem(ec)), &why, &keep), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_ca_new(ctx, "nope", 4, RSA_KEY_PEM, strlen(RSA_KEY_PEM), &why, &keep), MESH_ERR_PARSE);
  ck_assert_ptr_eq(keep, (mesh_ca *)ctx);
  mesh_key_free(ec);

  /* Bundles: junk, a broken block among good ones, too many, too large. */
  mesh_certs *c = (mesh_certs *)ctx;
  why = NULL;
  ck_assert_int_eq(mesh_certs_parse(ctx, "junk", 4, &why, &c), MESH_ERR_PARSE);
  assert_why(why, "no PEM or DER certificate");
  const char *lone = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
  why = NULL;
  ck_assert_int_eq(mesh_certs_parse(ctx, lone, strlen(lone), &why, &c), MESH_ERR_PARSE);
  assert_why(why, "malformed");
  char two[8192];
  snprintf(two, sizeof two, "%s-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", RSA_CA_PEM);
  why = NULL;
  ck_assert_int_eq(mesh_certs_parse(ctx, two, strlen(two), &why, &c), MESH_ERR_PARSE);
  assert_why(why, "malformed");
  size_t one = strlen(RSA_CA_PEM);
  char *many = malloc(one * 65 + 1);
  for (int i = 0; i < 65; i++) memcpy(many + i * one, RSA_CA_PEM, one);
  many[one * 65] = '\0';
  why = NULL;
  ck_assert_int_eq(mesh_certs_parse(ctx, many, one * 65, &why, &c), MESH_ERR_LIMIT);
  assert_why(why, "more than 64");
  ck_assert_int_eq(mesh_certs_parse(ctx, many, one * 64, &why, &c), 0);
  ck_assert_uint_eq(mesh_certs_count(c), 64);
  mesh_certs_free(c);
  c = (mesh_certs *)ctx;
  free(many);
  static char huge[MESH_CERTS_MAX_BYTES + 1];
  ck_assert_int_eq(mesh_certs_parse(ctx, huge, sizeof huge, &why, &c), MESH_ERR_LIMIT);
  ck_assert_ptr_eq(c, (mesh_certs *)ctx);

  mesh_certs_free(leaf);
  mesh_identity_free(id);
  mesh_ca_free(ca);
  mesh_certs_free(rsa);
  mesh_ctx_free(ctx);
}
END_TEST

typedef struct {
  const char *pem;
} pem_arg;

static int op_certs_parse(mesh_ctx *ctx, void *arg) {
  mesh_certs *c;
  int rc = mesh_certs_parse(ctx, arg, strlen(arg), NULL, &c);
  if (rc) return rc;
  mesh_certs_free(c);
  return 0;
}

/* The whole CA path under allocation failure: nothing leaks, only NOMEM. */
static int op_init_and_issue(mesh_ctx *ctx, void *arg) {
  (void)arg;
  mesh_ca *anchor = NULL, *issuer = NULL;
  mesh_key *key = NULL;
  mesh_identity *id = NULL, *peer = NULL;
  mesh_csr *csr = NULL, *parsed = NULL;
  mesh_certs *leaf = NULL;
  int rc = mesh_ca_init(ctx, NULL, NULL, NOW, 0, &anchor, &issuer);
  if (!rc) rc = mesh_key_generate(ctx, &key);
  if (!rc) rc = mesh_identity_new(ctx, "production", "frontend", NULL, NULL, NULL, &id);
  if (!rc) rc = mesh_csr_new(key, id, &csr);
  if (!rc) rc = mesh_csr_parse(ctx, mesh_csr_pem(csr), strlen(mesh_csr_pem(csr)), NULL, &parsed);
  if (!rc) rc = mesh_ca_issue(issuer, parsed, id, NOW, NULL, &leaf);
  if (!rc) rc = mesh_certs_verify_peer(leaf, mesh_ca_certs(anchor), NOW, id, NULL, &peer);
  mesh_identity_free(peer);
  mesh_certs_free(leaf);
  mesh_csr_free(parsed);
  mesh_csr_free(csr);
  mesh_identity_free(id);
  mesh_key_free(key);
  mesh_ca_free(issuer);
  mesh_ca_free(anchor);
  return rc;
}

START_TEST(ca_allocation_failures) {
  ck_assert_int_ge(test_alloc_failures(op_certs_parse, (void *)RSA_CA_PEM), 5);
  ck_assert_int_ge(test_alloc_failures(op_init_and_issue, NULL), 20);
}
END_TEST

/* ---- Renewal ------------------------------------------------------------ */

START_TEST(renewal_schedule) {
  /* A fresh 24 h certificate: renew after 70 % of it. */
  ck_assert_uint_eq(mesh_identity_renew_at(NOW - 20, NOW + DAY, NOW), NOW + 60480);
  /* Later on, 70 % of what is left. */
  ck_assert_uint_eq(mesh_identity_renew_at(NOW - 20, NOW + DAY, NOW + 60480), NOW + 60480 + 18144);
  ck_assert_uint_eq(mesh_identity_renew_at(NOW, NOW + 1000, NOW), NOW + 700);
  ck_assert_uint_eq(mesh_identity_renew_at(NOW, NOW + 1001, NOW), NOW + 700); /* 700.7 s, truncated */
  /* The delay stays within [10 s, 24 h]. */
  ck_assert_uint_eq(mesh_identity_renew_at(NOW, NOW + 10, NOW), NOW + 10);
  ck_assert_uint_eq(mesh_identity_renew_at(NOW, NOW + 14, NOW), NOW + 10);
  ck_assert_uint_eq(mesh_identity_renew_at(NOW, NOW + 15, NOW), NOW + 10);
  ck_assert_uint_eq(mesh_identity_renew_at(NOW, NOW + 20, NOW), NOW + 14);
  ck_assert_uint_eq(mesh_identity_renew_at(NOW, NOW + 365 * DAY, NOW), NOW + DAY);
  /* Expired, or nonsense, certificates: soon. */
  ck_assert_uint_eq(mesh_identity_renew_at(NOW - DAY, NOW - 1, NOW), NOW + 10);
  ck_assert_uint_eq(mesh_identity_renew_at(NOW - DAY, NOW, NOW), NOW + 10);
  ck_assert_uint_eq(mesh_identity_renew_at(NOW + DAY, NOW + DAY, NOW), NOW + 10);
  /* No overflow at the end of time. */
  ck_assert_uint_eq(mesh_identity_renew_at(0, UINT64_MAX, UINT64_MAX - 5), UINT64_MAX);
  ck_assert_uint_eq(mesh_identity_renew_at(0, UINT64_MAX, 0), DAY);

  /* Retry after a failure: exponential, equal jitter, never zero. */
  ck_assert_uint_eq(mesh_identity_retry_delay_ms(0, NOW, NOW + DAY, 0), 500);
  ck_assert_uint_eq(mesh_identity_retry_delay_ms(0, NOW, NOW + DAY, 500), 1000);
  ck_assert_uint_eq(mesh_identity_retry_delay_ms(0, NOW, NOW + DAY, 501), 500);
  ck_assert_uint_eq(mesh_identity_retry_delay_ms(1, NOW, NOW + DAY, 0), 1000);
  ck_assert_uint_eq(mesh_identity_retry_delay_ms(3, NOW, NOW + DAY, 0), 4000);
  for (uint32_t a = 0; a < 40; a++) {
    uint64_t cap = a < 9 ? 1000ull << a : 300000;
    if (cap > 300000) cap = 300000;
    for (uint32_t r = 0; r < 2000; r += 97) {
      uint64_t d = mesh_identity_retry_delay_ms(a, NOW, NOW + DAY, r * 2654435761u);
      ck_assert_uint_ge(d, cap / 2);
      ck_assert_uint_le(d, cap);
    }
  }
  ck_assert_uint_eq(mesh_identity_retry_delay_ms(UINT32_MAX, NOW, NOW + DAY, 0), 150000);
  /* Never past expiry while the certificate is valid. */
  ck_assert_uint_eq(mesh_identity_retry_delay_ms(10, NOW, NOW + 2, 0), 2000);
  ck_assert_uint_le(mesh_identity_retry_delay_ms(5, NOW, NOW + 20, UINT32_MAX), 20000);
  /* Expired: keep backing off (there is no expiry left to respect). */
  ck_assert_uint_eq(mesh_identity_retry_delay_ms(2, NOW, NOW - 1, 0), 2000);
}
END_TEST

/* ---- Tokens ----------------------------------------------------------- */

static void token_of(const mesh_key *k, const char *ns, const char *sa, const char *aud,
                     uint64_t iat, uint64_t exp, char *buf) {
  size_t n = 0;
  ck_assert_int_eq(mesh_token_mint(k, ns, sa, aud, iat, exp, buf, MESH_TOKEN_MAX_LEN + 1, &n), 0);
  ck_assert_uint_eq(n, strlen(buf));
}

static int verify_tok(const mesh_key *k, const char *tok, const char *aud, uint64_t now,
                      const mesh_identity *id, const char **why) {
  *why = NULL;
  return mesh_token_verify(k, tok, strlen(tok), aud, now, id, why);
}

/* A token with any header and claims, properly ES256-signed by k: what an
 * attacker holding the key could send, or a buggy minter. */
static void sign_raw(mesh_ctx *ctx, const mesh_key *k, const char *hdr, const char *claims,
                     char *out, size_t cap) {
  char h[1024], c[2048], sig64[100];
  mesh__b64url_encode((const unsigned char *)hdr, strlen(hdr), h, sizeof h);
  mesh__b64url_encode((const unsigned char *)claims, strlen(claims), c, sizeof c);
  int n = snprintf(out, cap, "%s.%s", h, c);
  unsigned char hash[32], sig[64];
  ck_assert_int_eq(mbedtls_md(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), (unsigned char *)out,
                              (size_t)n, hash), 0);
  mbedtls_ecp_keypair *ec = mbedtls_pk_ec(*mesh__key_pk(k));
  mbedtls_mpi r, s;
  mbedtls_mpi_init(&r);
  mbedtls_mpi_init(&s);
  mesh__rng rng;
  ck_assert_int_eq(mesh__rng_init(&rng, ctx), 0);
  ck_assert_int_eq(mbedtls_ecdsa_sign(&ec->grp, &r, &s, &ec->d, hash, 32, mesh__rng_random, &rng), 0);
  mesh__rng_free(&rng);
  ck_assert_int_eq(mbedtls_mpi_write_binary(&r, sig, 32), 0);
  ck_assert_int_eq(mbedtls_mpi_write_binary(&s, sig + 32, 32), 0);
  mbedtls_mpi_free(&r);
  mbedtls_mpi_free(&s);
  mesh__b64url_encode(sig, 64, sig64, sizeof sig64);
  snprintf(out + n, cap - (size_t)n, ".%s", sig64);
}

START_TEST(tokens) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh_key *k, *other, *pub;
  ck_assert_int_eq(mesh_key_generate(ctx, &k), 0);
  ck_assert_int_eq(mesh_key_generate(ctx, &other), 0);
  ck_assert_int_eq(mesh_key_parse(ctx, mesh_key_public_pem(k), strlen(mesh_key_public_pem(k)), NULL, &pub), 0);
  mesh_identity *id = ident(ctx, "production", "frontend"), *admin = ident(ctx, "production", "admin");
  const char *aud = "identity.linkerd.cluster.local", *why;
  static char tok[MESH_TOKEN_MAX_LEN + 1], tok2[MESH_TOKEN_MAX_LEN + 1], t[3 * MESH_TOKEN_MAX_LEN];
  token_of(k, "production", "frontend", aud, NOW, NOW + 600, tok);

  /* Valid, with the private or the public key. */
  ck_assert_int_eq(verify_tok(k, tok, aud, NOW, id, &why), 0);
  ck_assert_int_eq(verify_tok(pub, tok, aud, NOW + 599, id, &why), 0);
  /* Its shape: three segments, an ES256 header with the key's thumbprint, r||s. */
  const char *d1 = strchr(tok, '.'), *d2 = strrchr(tok, '.');
  ck_assert_uint_eq(strlen(d2 + 1), 86);
  unsigned char raw[1024];
  size_t n = mesh__b64url_decode(tok, (size_t)(d1 - tok), raw, sizeof raw);
  ck_assert_uint_ne(n, (size_t)-1);
  raw[n] = '\0';
  char want[256];
  snprintf(want, sizeof want, "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"%s\"}", mesh_key_id(k));
  ck_assert_str_eq((char *)raw, want);
  n = mesh__b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), raw, sizeof raw);
  raw[n] = '\0';
  ck_assert_str_eq((char *)raw, "{\"ns\":\"production\",\"sa\":\"frontend\",\"aud\":\"identity.linkerd.cluster.local\","
                                "\"exp\":1700000600,\"iat\":1700000000}");

  /* Forged: another token's claims under this token's signature. */
  token_of(k, "production", "admin", aud, NOW, NOW + 600, tok2);
  const char *e1 = strchr(tok2, '.'), *e2 = strrchr(tok2, '.');
  snprintf(t, sizeof t, "%.*s%.*s%s", (int)(d1 - tok), tok, (int)(e2 - e1), e1, d2);
  ck_assert_int_eq(verify_tok(k, t, aud, NOW, admin, &why), MESH_ERR_DENIED);
  assert_why(why, "signature does not verify");
  /* A flipped bit in the signature. */
  snprintf(t, sizeof t, "%s", tok);
  t[strlen(t) - 2] = t[strlen(t) - 2] == 'A' ? 'B' : 'A';
  ck_assert_int_eq(verify_tok(k, t, aud, NOW, id, &why), MESH_ERR_DENIED);
  /* Expired, and issued in the future. */
  ck_assert_int_eq(verify_tok(k, tok, aud, NOW + 600, id, &why), MESH_ERR_EXPIRED);
  assert_why(why, "expired");
  ck_assert_int_eq(verify_tok(k, tok, aud, NOW - 20, id, &why), 0); /* skew allowed */
  ck_assert_int_eq(verify_tok(k, tok, aud, NOW - 21, id, &why), MESH_ERR_EXPIRED);
  assert_why(why, "future");
  /* Wrong audience. */
  ck_assert_int_eq(verify_tok(k, tok, "other-service", NOW, id, &why), MESH_ERR_DENIED);
  assert_why(why, "audience");
  /* Wrong key: the key id gives it away first. */
  ck_assert_int_eq(verify_tok(other, tok, aud, NOW, id, &why), MESH_ERR_DENIED);
  assert_why(why, "another key");
  /* Wrong identity for the CSR, and another trust domain does not matter. */
  ck_assert_int_eq(verify_tok(k, tok, aud, NOW, admin, &why), MESH_ERR_IDENTITY);
  assert_why(why, "namespace or service account");
  mesh_identity *td;
  ck_assert_int_eq(mesh_identity_new(ctx, "production", "frontend", "mesh", "example.org", NULL, &td), 0);
  ck_assert_int_eq(verify_tok(k, tok, aud, NOW, td, &why), 0);
  mesh_identity_free(td);

  /* Malformed. */
  const char *bad[] = {"", "abc", "a.b", "a.b.c.d", ".b.c", "a..c", "a.b.", "a.b.c", "!!!.b.c"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ck_assert_msg(verify_tok(k, bad[i], aud, NOW, id, &why) == MESH_ERR_PARSE, "case %s", bad[i]);
    ck_assert_ptr_nonnull(why);
  }
  /* A header that is JSON but not an object, and claims that are not JSON. */
  char seg[512];
  mesh__b64url_encode((const unsigned char *)"[1]", 3, seg, sizeof seg);
  snprintf(t, sizeof t, "%s%s", seg, d1);
  ck_assert_int_eq(verify_tok(k, t, aud, NOW, id, &why), MESH_ERR_PARSE);
  assert_why(why, "header");
  /* "alg":"none" and friends are refused, not parsed around. */
  const char *none = "{\"alg\":\"none\",\"typ\":\"JWT\"}";
  mesh__b64url_encode((const unsigned char *)none, strlen(none), seg, sizeof seg);
  snprintf(t, sizeof t, "%s%s", seg, d1);
  ck_assert_int_eq(verify_tok(k, t, aud, NOW, id, &why), MESH_ERR_DENIED);
  assert_why(why, "ES256");
  /* A signature of the wrong length. */
  snprintf(t, sizeof t, "%.*sAAAA", (int)(d2 + 1 - tok), tok);
  ck_assert_int_eq(verify_tok(k, t, aud, NOW, id, &why), MESH_ERR_PARSE);
  assert_why(why, "64 bytes");
  /* Oversized. */
  memset(t, 'a', MESH_TOKEN_MAX_LEN + 1);
  t[MESH_TOKEN_MAX_LEN + 1] = '\0';
  ck_assert_int_eq(verify_tok(k, t, aud, NOW, id, &why), MESH_ERR_LIMIT);
  assert_why(why, "8192");

  /* Correctly signed, but claims of the wrong shape: malformed, not trusted. */
  const char *hdr = "{\"alg\":\"ES256\"}"; /* typ and kid are optional */
  const struct {
    const char *claims;
    int rc;
  } shaped[] = {
      {"{\"ns\":\"production\",\"sa\":\"frontend\",\"aud\":\"x\",\"exp\":1700000600,\"iat\":1700000000}", 0},
      {"{\"ns\":\"production\",\"sa\":\"frontend\",\"aud\":[\"a\",\"x\"],\"exp\":1700000600,\"iat\":1700000000}", 0},
      {"{\"ns\":\"production\",\"sa\":\"frontend\",\"aud\":[\"a\"],\"exp\":1700000600,\"iat\":1700000000}", MESH_ERR_DENIED},
      {"{\"ns\":\"production\",\"sa\":\"frontend\",\"aud\":[],\"exp\":1700000600,\"iat\":1700000000}", MESH_ERR_PARSE},
      {"{\"ns\":\"production\",\"sa\":\"frontend\",\"aud\":\"x\",\"iat\":1700000000}", MESH_ERR_PARSE},
      {"{\"ns\":\"production\",\"sa\":\"frontend\",\"aud\":\"x\",\"exp\":\"soon\",\"iat\":1700000000}", MESH_ERR_PARSE},
      {"{\"ns\":\"production\",\"sa\":\"frontend\",\"aud\":\"x\",\"exp\":-1,\"iat\":1700000000}", MESH_ERR_PARSE},
      {"{\"ns\":\"production\",\"sa\":7,\"aud\":\"x\",\"exp\":1700000600,\"iat\":1700000000}", MESH_ERR_PARSE},
      {"{\"ns\":\"production\",\"ns\":\"kube-system\",\"sa\":\"frontend\",\"aud\":\"x\",\"exp\":1700000600,\"iat\":1700000000}",
       MESH_ERR_PARSE},
      {"[\"production\",\"frontend\"]", MESH_ERR_PARSE},
      {"not json", MESH_ERR_PARSE},
  };
  for (size_t i = 0; i < sizeof shaped / sizeof shaped[0]; i++) {
    sign_raw(ctx, k, hdr, shaped[i].claims, t, sizeof t);
    int rc = verify_tok(k, t, "x", NOW, id, &why);
    ck_assert_msg(rc == shaped[i].rc, "claims %zu: rc %d (%s)", i, rc, why ? why : "");
  }
  /* A signed header with another algorithm, type, key id or critical parameters. */
  const char *claims = shaped[0].claims;
  const struct {
    const char *hdr;
    int rc;
    const char *reason;
  } hdrs[] = {
      {"{\"alg\":\"HS256\",\"typ\":\"JWT\"}", MESH_ERR_DENIED, "ES256"},
      {"{\"typ\":\"JWT\"}", MESH_ERR_DENIED, "ES256"},
      {"{\"alg\":\"ES256\",\"typ\":\"JOSE+JSON\"}", MESH_ERR_PARSE, "JWT"},
      {"{\"alg\":\"ES256\",\"kid\":\"someone-else\"}", MESH_ERR_DENIED, "another key"},
      {"{\"alg\":\"ES256\",\"crit\":[\"exp\"]}", MESH_ERR_DENIED, "critical"},
  };
  for (size_t i = 0; i < sizeof hdrs / sizeof hdrs[0]; i++) {
    sign_raw(ctx, k, hdrs[i].hdr, claims, t, sizeof t);
    ck_assert_int_eq(verify_tok(k, t, "x", NOW, id, &why), hdrs[i].rc);
    assert_why(why, hdrs[i].reason);
  }
  /* Without a key id, a wrong key shows as a bad signature. */
  sign_raw(ctx, k, hdr, claims, t, sizeof t);
  ck_assert_int_eq(verify_tok(other, t, "x", NOW, id, &why), MESH_ERR_DENIED);
  assert_why(why, "signature");

  /* Minting errors. */
  size_t len = 7;
  ck_assert_int_eq(mesh_token_mint(k, "production", "frontend", aud, NOW, NOW + 600, tok2, 50, &len), MESH_ERR_LIMIT);
  ck_assert_uint_eq(len, 7);
  ck_assert_int_eq(mesh_token_mint(k, "production", "frontend", aud, NOW, NOW, tok2, sizeof tok2, &len), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_token_mint(k, "Production", "frontend", aud, NOW, NOW + 1, tok2, sizeof tok2, &len), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_token_mint(k, "production", "frontend", "", NOW, NOW + 1, tok2, sizeof tok2, &len), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_token_mint(pub, "production", "frontend", aud, NOW, NOW + 1, tok2, sizeof tok2, &len), MESH_ERR_INVALID);
  mesh_key *rsa;
  ck_assert_int_eq(mesh_key_parse(ctx, RSA_KEY_PEM, strlen(RSA_KEY_PEM), NULL, &rsa), 0);
  ck_assert_int_eq(mesh_token_mint(rsa, "production", "frontend", aud, NOW, NOW + 1, tok2, sizeof tok2, &len), MESH_ERR_UNSUPPORTED);
  ck_assert_int_eq(mesh_token_verify(rsa, tok, strlen(tok), aud, NOW, id, &why), MESH_ERR_UNSUPPORTED);
  ck_assert_int_eq(mesh_token_verify(k, tok, strlen(tok), aud, NOW, NULL, &why), MESH_ERR_INVALID);
  mesh_key_free(rsa);

  mesh_identity_free(admin);
  mesh_identity_free(id);
  mesh_key_free(pub);
  mesh_key_free(other);
  mesh_key_free(k);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(base64url) {
  const unsigned char in[] = {0xfb, 0xff, 0x00, 0x10, 0x83, 0x7f, 0xee, 0x01, 0x02, 0x03};
  for (size_t n = 0; n <= sizeof in; n++) {
    char enc[32];
    unsigned char dec[16];
    size_t e = mesh__b64url_encode(in, n, enc, sizeof enc);
    ck_assert_uint_eq(e, strlen(enc));
    ck_assert_ptr_null(strpbrk(enc, "+/="));
    ck_assert_uint_eq(mesh__b64url_decode(enc, e, dec, sizeof dec), n);
    ck_assert(!memcmp(dec, in, n));
  }
  unsigned char out[8];
  ck_assert_uint_eq(mesh__b64url_decode("-_8", 3, out, sizeof out), 2);
  ck_assert_int_eq(out[0], 0xfb);
  ck_assert_int_eq(out[1], 0xff);
  ck_assert_uint_eq(mesh__b64url_decode("QQ", 2, out, sizeof out), 1);
  ck_assert_uint_eq(mesh__b64url_decode("QR", 2, out, sizeof out), (size_t)-1); /* non-canonical */
  ck_assert_uint_eq(mesh__b64url_decode("QQ==", 4, out, sizeof out), (size_t)-1); /* padding */
  ck_assert_uint_eq(mesh__b64url_decode("Q", 1, out, sizeof out), (size_t)-1);
  ck_assert_uint_eq(mesh__b64url_decode("a+b/", 4, out, sizeof out), (size_t)-1);
  char small[3];
  ck_assert_uint_eq(mesh__b64url_encode(in, 3, small, sizeof small), (size_t)-1);
}
END_TEST

static Suite *make_suite(void) {
  Suite *s = suite_create("identity");
  TCase *names = tcase_create("names");
  tcase_add_test(names, names_round_trip);
  tcase_add_test(names, names_every_validation_error);
  tcase_add_test(names, names_allocation_failures);
  tcase_add_test(names, renewal_schedule);
  suite_add_tcase(s, names);
  TCase *x509 = tcase_create("x509");
  tcase_add_test(x509, keys);
  tcase_add_test(x509, csr_round_trip);
  tcase_add_test(x509, csr_refusals);
  tcase_add_test(x509, issue_and_verify_round_trip);
  tcase_add_test(x509, lifetimes_and_clamping);
  tcase_add_test(x509, anchor_rotation_and_bad_chains);
  tcase_add_test(x509, identity_extraction);
  tcase_add_test(x509, rsa_issuer_and_inspection);
  tcase_add_test(x509, ca_allocation_failures);
  suite_add_tcase(s, x509);
  TCase *tok = tcase_create("tokens");
  tcase_add_test(tok, tokens);
  tcase_add_test(tok, base64url);
  suite_add_tcase(s, tok);
  return s;
}

int main(void) { return test_main(make_suite()); }

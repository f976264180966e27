/* libmesh identity internals: what identity.c, x509.c, token.c and the TLS layer share. */
#ifndef MESH_IDENTITY_INTERNAL_H
#define MESH_IDENTITY_INTERNAL_H

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>

#include <mesh/identity.h>

struct mesh_identity {
  mesh_ctx *ctx;
  const char *ns, *sa, *cp_ns, *trust_domain, *dns, *uri; /* all inside this allocation */
};

struct mesh_key {
  mesh_ctx *ctx;
  mbedtls_pk_context pk;
  char *pem;     /* private key PEM, NULL for a public key; zeroed before it is freed */
  char *pub_pem; /* SubjectPublicKeyInfo PEM */
  char kid[48];  /* RFC 7638 thumbprint for EC P-256 keys, "" otherwise */
};

/* Parse either identity form from len bytes (no NUL needed); cp_ns (NULL:
 * the default) is used for a SPIFFE ID, which does not carry one. */
int mesh__identity_parse_n(mesh_ctx *ctx, const char *name, size_t len, const char *cp_ns,
                           const char **why, mesh_identity **ret);

/* The workload identity a certificate carries in its SANs: the DNS SAN
 * and/or the URI SAN (they must agree when both are there). CA
 * certificates carry none. For the TLS layer, which holds mbedTLS
 * certificates after a handshake. MESH_ERR_IDENTITY, MESH_ERR_PARSE, MESH_ERR_NOMEM. */
int mesh__identity_from_crt(mesh_ctx *ctx, const mbedtls_x509_crt *crt, const char **why,
                            mesh_identity **ret);

/* The first certificate of a bundle and its chain, and a key's mbedTLS
 * context, for mbedtls_ssl_conf_own_cert / mbedtls_ssl_conf_ca_chain. */
mbedtls_x509_crt *mesh__certs_crt(const mesh_certs *c);
mbedtls_pk_context *mesh__key_pk(const mesh_key *k);

/* A CTR-DRBG seeded from the context's random source. The seed struct
 * must outlive the DRBG (it is called again on reseed). */
typedef struct {
  mesh_ctx *ctx;
  int err; /* the random source's own error, when it failed */
  mbedtls_ctr_drbg_context drbg;
} mesh__rng;
int mesh__rng_init(mesh__rng *r, mesh_ctx *ctx);
void mesh__rng_free(mesh__rng *r);
int mesh__rng_random(void *r, unsigned char *buf, size_t len); /* an mbedTLS f_rng */

/* A libmesh error for an mbedTLS one: allocation failures become
 * MESH_ERR_NOMEM, everything else `otherwise`. */
int mesh__tls_err(int mbedtls_err, int otherwise);

/* Key helpers: 1 when the key is an EC key on P-256. */
int mesh__key_is_p256(const mbedtls_pk_context *pk);
/* Wrap an mbedTLS key that already holds its material into a mesh_key
 * (takes the pk over on success; on failure the caller still owns it). */
int mesh__key_wrap(mesh_ctx *ctx, mbedtls_pk_context *pk, int has_private, mesh_key **ret);

/* DNS-1123 label (1-63 of [a-z0-9-], alphanumeric at both ends). */

/* base64url without padding (RFC 7515 section 2). encode writes a NUL;
 * both return the length written, or (size_t)-1 when cap is too small or
 * the input is not canonical base64url. */
size_t mesh__b64url_encode(const unsigned char *in, size_t n, char *out, size_t cap);
size_t mesh__b64url_decode(const char *in, size_t n, unsigned char *out, size_t cap);

#endif

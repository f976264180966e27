/* libmesh identity: workload names, keys, CSRs, issuance, chain verification, renewal, tokens. */
#ifndef MESH_IDENTITY_H
#define MESH_IDENTITY_H

#include <mesh/ctx.h>

MESH_BEGIN_DECLS

/* Thread safety: every object here is immutable once made, except a
 * mesh_ca's settings (set them before sharing it). Functions that take
 * const pointers may run on one object from several threads at once.
 *
 * Errors: functions that reject input also set *why (when why is not NULL)
 * to a static, human-readable reason; *why is left alone on success.
 * Times are wall-clock seconds since the Unix epoch, supplied by the
 * caller so that results are exact in tests. */

/* ---- Names ------------------------------------------------------------ */

/* A workload identity: (trust domain, namespace, service account), plus the
 * control plane's namespace that the DNS form carries. Written two ways:
 *   DNS  <sa>.<ns>.serviceaccount.identity.<cp-ns>.<trust-domain>
 *   URI  spiffe://<trust-domain>/ns/<ns>/sa/<sa>
 * Every workload certificate carries both. */
typedef struct mesh_identity mesh_identity;

#define MESH_IDENTITY_DEFAULT_TRUST_DOMAIN "cluster.local"
#define MESH_IDENTITY_DEFAULT_CP_NS "linkerd"
#define MESH_IDENTITY_DNS_MAX 253u    /* bytes in the DNS form */
#define MESH_IDENTITY_SPIFFE_MAX 2048u /* bytes in a SPIFFE ID */

/* Build an identity from its parts; cp_ns and trust_domain may be NULL for
 * the defaults. ns, sa and cp_ns must be DNS-1123 labels; the trust domain
 * a lowercase DNS name (so that both forms exist). MESH_ERR_PARSE (with
 * *why), MESH_ERR_INVALID (NULL ctx, ns, sa or ret), MESH_ERR_NOMEM. */
MESH_API int mesh_identity_new(mesh_ctx *ctx, const char *ns, const char *sa, const char *cp_ns,
                               const char *trust_domain, const char **why, mesh_identity **ret);

/* Parse either form. A SPIFFE ID carries no control-plane namespace:
 * cp_ns (NULL: "linkerd") supplies it; a DNS name brings its own and cp_ns
 * is then ignored. MESH_ERR_PARSE (with *why), MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_identity_parse(mesh_ctx *ctx, const char *name, const char *cp_ns,
                                 const char **why, mesh_identity **ret);

MESH_API void mesh_identity_free(mesh_identity *id); /* NULL is a no-op */

/* The parts and both forms; they live as long as the identity. */
MESH_API const char *mesh_identity_ns(const mesh_identity *id);
MESH_API const char *mesh_identity_sa(const mesh_identity *id);
MESH_API const char *mesh_identity_cp_ns(const mesh_identity *id);
MESH_API const char *mesh_identity_trust_domain(const mesh_identity *id);
MESH_API const char *mesh_identity_dns(const mesh_identity *id);
MESH_API const char *mesh_identity_uri(const mesh_identity *id);

/* 1 when a and b name the same workload: equal (trust domain, namespace,
 * service account); the control-plane namespace does not take part. 0
 * otherwise, or when either is NULL. */
MESH_API int mesh_identity_equal(const mesh_identity *a, const mesh_identity *b);

/* Whether name (either form) names id, without allocating: 0 when it does,
 * MESH_ERR_IDENTITY when it names another workload, MESH_ERR_PARSE (with
 * *why) when it is not a valid identity, MESH_ERR_INVALID for NULLs. */
MESH_API int mesh_identity_match(const mesh_identity *id, const char *name, const char **why);

/* ---- Renewal schedule --------------------------------------------------- */

#define MESH_IDENTITY_RENEW_MIN_S 10u    /* never renew sooner than this */
#define MESH_IDENTITY_RENEW_MAX_S 86400u /* nor later than this */
#define MESH_IDENTITY_RETRY_BASE_MS 1000u
#define MESH_IDENTITY_RETRY_MAX_MS 300000u

/* When to renew a certificate valid [not_before, not_after] at now: after
 * 70 % of its remaining life, now + 0.7 * (not_after - now), with the delay
 * clamped to [MESH_IDENTITY_RENEW_MIN_S, MESH_IDENTITY_RENEW_MAX_S]. An
 * expired or nonsensical certificate (not_after <= not_before) gives the
 * minimum delay. Returns an absolute time in seconds. */
MESH_API uint64_t mesh_identity_renew_at(uint64_t not_before_s, uint64_t not_after_s,
                                         uint64_t now_s);

/* The delay in milliseconds before retrying a failed renewal: exponential
 * from MESH_IDENTITY_RETRY_BASE_MS, doubled per attempt (counted from 0) up
 * to MESH_IDENTITY_RETRY_MAX_MS, with "equal jitter" (uniform in [d/2, d],
 * from the caller's random rnd, so that it is never zero), and never past
 * not_after while the certificate is still valid. */
MESH_API uint64_t mesh_identity_retry_delay_ms(uint32_t attempt, uint64_t now_s,
                                               uint64_t not_after_s, uint32_t rnd);

/* ---- Keys ------------------------------------------------------------- */

/* A private key (or, parsed from a public-key PEM, a public key). Workload
 * and token keys are ECDSA P-256; a CA may also use P-384 or RSA >= 2048.
 * Private key material is only ever exported as PEM in memory. */
typedef struct mesh_key mesh_key;

/* A new ECDSA P-256 key from the context's random source.
 * MESH_ERR_INVALID, MESH_ERR_NOMEM, MESH_ERR_TLS, or the random source's error. */
MESH_API int mesh_key_generate(mesh_ctx *ctx, mesh_key **ret);

/* Parse a PEM (or DER) private key (PKCS#8, SEC1 or PKCS#1, unencrypted)
 * or public key (SubjectPublicKeyInfo). MESH_ERR_PARSE, MESH_ERR_UNSUPPORTED
 * (encrypted, or not P-256, P-384 or RSA >= 2048), MESH_ERR_LIMIT (over
 * 64 KiB), MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_key_parse(mesh_ctx *ctx, const char *buf, size_t len, const char **why,
                            mesh_key **ret);

/* NULL is a no-op; private key bytes are zeroed before they are released. */
MESH_API void mesh_key_free(mesh_key *k);

/* The private key as PEM (NULL for a public key), the public key as PEM,
 * and the key's RFC 7638 JWK thumbprint (the JWS "kid"; "" unless P-256).
 * They live as long as the key. */
MESH_API const char *mesh_key_pem(const mesh_key *k);
MESH_API const char *mesh_key_public_pem(const mesh_key *k);
MESH_API const char *mesh_key_id(const mesh_key *k);

/* ---- Certificate signing requests --------------------------------------- */

typedef struct mesh_csr mesh_csr;

#define MESH_CSR_MAX_BYTES 16384u

/* A CSR for id signed by key (a P-256 private key), carrying exactly two
 * SANs, the DNS and the URI form of id, and CN = the DNS form.
 * MESH_ERR_INVALID (NULLs, a public key), MESH_ERR_UNSUPPORTED (not P-256),
 * MESH_ERR_NOMEM, MESH_ERR_TLS. */
MESH_API int mesh_csr_new(const mesh_key *key, const mesh_identity *id, mesh_csr **ret);

/* Parse a CSR, PEM or DER. Only its structure is checked here; see
 * mesh_csr_verify. MESH_ERR_PARSE, MESH_ERR_LIMIT (over MESH_CSR_MAX_BYTES),
 * MESH_ERR_UNSUPPORTED (not ECDSA P-256 with SHA-2), MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_csr_parse(mesh_ctx *ctx, const char *buf, size_t len, const char **why,
                            mesh_csr **ret);

MESH_API void mesh_csr_free(mesh_csr *csr); /* NULL is a no-op */

/* The CSR as PEM, and as DER (its length in *len). Live as long as the CSR. */
MESH_API const char *mesh_csr_pem(const mesh_csr *csr);
MESH_API const uint8_t *mesh_csr_der(const mesh_csr *csr, size_t *len);

/* The identity the CSR claims: its DNS and URI SANs, which must agree.
 * MESH_ERR_IDENTITY (missing, extra or disagreeing SANs), MESH_ERR_PARSE,
 * MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_csr_identity(const mesh_csr *csr, const char **why, mesh_identity **ret);

/* The CA's check of a CSR for id, the identity its sender proved: the
 * signature verifies, the SANs are exactly id's DNS and URI forms (no other
 * DNS name, URI, IP address or email), and the subject is empty or exactly
 * CN=<id's DNS form>. 0, MESH_ERR_DENIED (bad signature), MESH_ERR_IDENTITY,
 * MESH_ERR_PARSE, MESH_ERR_INVALID. */
MESH_API int mesh_csr_verify(const mesh_csr *csr, const mesh_identity *id, const char **why);

/* ---- Certificates ------------------------------------------------------- */

/* An ordered list of certificates: a leaf and its chain, or a bundle of
 * trust anchors. */
typedef struct mesh_certs mesh_certs;

#define MESH_CERTS_MAX 64u               /* certificates in one bundle */
#define MESH_CERTS_MAX_BYTES 1048576u    /* bytes of input */

/* SAN kinds, for mesh_certs_san_type. */
enum {
  MESH_SAN_OTHER = 0,
  MESH_SAN_DNS = 1,
  MESH_SAN_URI = 2,
  MESH_SAN_IP = 3,
  MESH_SAN_EMAIL = 4
};

/* Parse one or more PEM certificates (or one DER certificate).
 * MESH_ERR_PARSE, MESH_ERR_LIMIT, MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_certs_parse(mesh_ctx *ctx, const char *buf, size_t len, const char **why,
                              mesh_certs **ret);
MESH_API void mesh_certs_free(mesh_certs *c); /* NULL is a no-op */
MESH_API size_t mesh_certs_count(const mesh_certs *c);

/* Accessors for certificate i (< count); out of range: NULL, 0 or -1.
 * Strings live as long as the list. */
/* PEM of certificate i alone, and of certificates i..count-1 together
 * (after issuance, bundle_pem(c, 1) is the issuer chain). */
MESH_API const char *mesh_certs_pem(const mesh_certs *c, size_t i);
MESH_API const char *mesh_certs_bundle_pem(const mesh_certs *c, size_t from);
MESH_API const char *mesh_certs_subject(const mesh_certs *c, size_t i); /* "CN=..., O=..." */
MESH_API const char *mesh_certs_issuer(const mesh_certs *c, size_t i);
MESH_API const char *mesh_certs_serial(const mesh_certs *c, size_t i); /* hex, "0A:1B:..." */
MESH_API uint64_t mesh_certs_not_before(const mesh_certs *c, size_t i);
MESH_API uint64_t mesh_certs_not_after(const mesh_certs *c, size_t i);
MESH_API int mesh_certs_is_ca(const mesh_certs *c, size_t i); /* 1 or 0 */
/* basicConstraints pathLenConstraint; -1 when absent (no limit, or not a CA). */
MESH_API int32_t mesh_certs_pathlen(const mesh_certs *c, size_t i);
MESH_API size_t mesh_certs_san_count(const mesh_certs *c, size_t i);
MESH_API int mesh_certs_san_type(const mesh_certs *c, size_t i, size_t j); /* MESH_SAN_*; -1 */
/* DNS names, URIs and emails as written, IP addresses as text, other kinds "". */
MESH_API const char *mesh_certs_san_value(const mesh_certs *c, size_t i, size_t j);

/* The workload identity certificate i carries: its DNS SAN and/or its URI
 * SAN (which must agree when both are present; a second DNS or URI SAN is
 * refused). Only meaningful for a verified chain. MESH_ERR_IDENTITY (none,
 * ambiguous, disagreeing, or a CA certificate), MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_certs_identity(const mesh_certs *c, size_t i, const char **why,
                                 mesh_identity **ret);

/* Verify chain (leaf first, then intermediates) against a bundle of trust
 * anchors (several during a rotation) at now_s. Every certificate on the
 * path, anchor included, must be valid at now_s. 0, MESH_ERR_EXPIRED
 * (expired or not yet valid), MESH_ERR_TLS (no path to an anchor, bad
 * signature, bad key usage or path length, weak algorithm), MESH_ERR_INVALID. */
MESH_API int mesh_certs_verify(const mesh_certs *chain, const mesh_certs *anchors, uint64_t now_s,
                               const char **why);

/* mesh_certs_verify, then the leaf's identity, which must equal expected
 * (when expected is not NULL). ret may be NULL. Adds MESH_ERR_IDENTITY and
 * MESH_ERR_NOMEM to mesh_certs_verify's errors. */
MESH_API int mesh_certs_verify_peer(const mesh_certs *chain, const mesh_certs *anchors,
                                    uint64_t now_s, const mesh_identity *expected,
                                    const char **why, mesh_identity **ret);

/* ---- Certificate authority ---------------------------------------------- */

/* An issuer: its certificate (with its chain) and private key. */
typedef struct mesh_ca mesh_ca;

#define MESH_CA_DEFAULT_LIFETIME_S 86400u      /* workload certificates: 24 h */
#define MESH_CA_DEFAULT_CLOCK_SKEW_S 20u       /* notBefore is backdated this much */
#define MESH_CA_DEFAULT_CA_LIFETIME_S 31536000u /* anchors and issuers: 365 d */

/* An issuer from PEM: chain_pem holds the issuer's certificate first, then
 * any intermediates above it (sent along with every leaf); key_pem its
 * private key (ECDSA P-256/P-384 or RSA). The certificate must be a CA
 * allowed to sign certificates, and the key must match it.
 * MESH_ERR_PARSE, MESH_ERR_INVALID, MESH_ERR_UNSUPPORTED, MESH_ERR_LIMIT, MESH_ERR_NOMEM. */
MESH_API int mesh_ca_new(mesh_ctx *ctx, const char *chain_pem, size_t chain_len,
                         const char *key_pem, size_t key_len, const char **why, mesh_ca **ret);

/* A self-signed trust anchor with a fresh P-256 key: CA:true, no path
 * length limit, keyCertSign|cRLSign, valid from now_s - clock skew for
 * lifetime_s (0: 365 d). cn: 1-64 of [A-Za-z0-9 ._-].
 * MESH_ERR_INVALID (NULLs, a bad cn), MESH_ERR_RANGE (lifetime over 100
 * years), MESH_ERR_NOMEM, MESH_ERR_TLS, or the random source's error. */
MESH_API int mesh_ca_new_root(mesh_ctx *ctx, const char *cn, uint64_t now_s, uint64_t lifetime_s,
                              mesh_ca **ret);

/* An intermediate issuer signed by parent, with a fresh P-256 key: CA:true,
 * pathlen 0, lifetime_s (0: 365 d) clamped to parent's notAfter. Its chain
 * is itself plus parent's chain without self-signed anchors (so a new
 * issuer under an existing anchor is how issuers rotate). Errors as
 * mesh_ca_new_root, plus MESH_ERR_INVALID when parent has pathlen 0 and
 * MESH_ERR_EXPIRED when parent is not valid at now_s. */
MESH_API int mesh_ca_new_issuer(const mesh_ca *parent, const char *cn, uint64_t now_s,
                                uint64_t lifetime_s, mesh_ca **ret);

/* What `meshctl identity init` needs: a trust anchor
 * "root.<cp-ns>.<trust-domain>" and an issuer "identity.<cp-ns>.<trust-domain>"
 * signed by it, as Linkerd names them (NULLs: the defaults). Both rets are
 * set, or neither. */
MESH_API int mesh_ca_init(mesh_ctx *ctx, const char *trust_domain, const char *cp_ns,
                          uint64_t now_s, uint64_t lifetime_s, mesh_ca **ret_anchor,
                          mesh_ca **ret_issuer);

MESH_API void mesh_ca_free(mesh_ca *ca); /* NULL is a no-op */

/* The issuer's certificate and chain (borrowed), and its key (borrowed). */
MESH_API const mesh_certs *mesh_ca_certs(const mesh_ca *ca);
MESH_API const mesh_key *mesh_ca_key(const mesh_ca *ca);

/* Lifetime of issued certificates (0: the default) and the notBefore
 * backdating. MESH_ERR_INVALID for a NULL ca, MESH_ERR_RANGE past 10 years / 1 day. */
MESH_API int mesh_ca_set_lifetime(mesh_ca *ca, uint64_t lifetime_s);
MESH_API int mesh_ca_set_clock_skew(mesh_ca *ca, uint64_t skew_s);

/* Issue a workload certificate for csr, whose sender proved id: the CSR is
 * checked with mesh_csr_verify first. The leaf gets a random positive
 * 128-bit serial, CN and SANs of id, digitalSignature, serverAuth +
 * clientAuth, CA:false, notBefore now_s - skew, notAfter now_s + lifetime
 * clamped to the issuer's notAfter. *ret holds the leaf followed by the
 * issuer's chain. Errors: those of mesh_csr_verify, MESH_ERR_EXPIRED (the
 * issuer is not valid at now_s), MESH_ERR_NOMEM, MESH_ERR_TLS. Thread-safe. */
MESH_API int mesh_ca_issue(const mesh_ca *ca, const mesh_csr *csr, const mesh_identity *id,
                           uint64_t now_s, const char **why, mesh_certs **ret);

/* ---- Tokens ------------------------------------------------------------- */

/* A workload proves who it is with a compact JWS (ES256, RFC 7515/7519):
 * header {"alg":"ES256","typ":"JWT","kid":<key thumbprint>}, claims
 * {"ns","sa","aud","exp","iat"}. */
#define MESH_TOKEN_MAX_LEN 8192u
#define MESH_TOKEN_CLOCK_SKEW_S 20u /* an iat this far in the future is tolerated */

/* Mint a token with a P-256 private key into buf (cap bytes, NUL included);
 * *ret_len (may be NULL) gets its length. ns and sa must be DNS-1123
 * labels, aud 1-256 printable characters, exp > iat.
 * MESH_ERR_INVALID, MESH_ERR_PARSE (bad ns/sa/aud), MESH_ERR_UNSUPPORTED
 * (not P-256), MESH_ERR_LIMIT (cap too small), MESH_ERR_RANGE, MESH_ERR_NOMEM. */
MESH_API int mesh_token_mint(const mesh_key *key, const char *ns, const char *sa,
                             const char *aud, uint64_t iat_s, uint64_t exp_s, char *buf,
                             size_t cap, size_t *ret_len);

/* Verify a token (len bytes) with the P-256 key (public or private) and
 * check that it was meant for aud, is valid at now_s, and names claimed's
 * namespace and service account (the token carries no trust domain).
 * 0, MESH_ERR_LIMIT (over MESH_TOKEN_MAX_LEN), MESH_ERR_PARSE (malformed),
 * MESH_ERR_DENIED (signature, key id, algorithm or audience), MESH_ERR_EXPIRED,
 * MESH_ERR_IDENTITY (another workload), MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_token_verify(const mesh_key *key, const char *token, size_t len,
                               const char *aud, uint64_t now_s, const mesh_identity *claimed,
                               const char **why);

MESH_END_DECLS

#endif

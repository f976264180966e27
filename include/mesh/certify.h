/* libmesh certify: the Identity.Certify messages (doc/protocol.md), CA side and workload side, with no I/O. */
#ifndef MESH_CERTIFY_H
#define MESH_CERTIFY_H

#include <mesh/identity.h>

MESH_BEGIN_DECLS

/* A workload sends POST /identity.Identity/Certify with
 *   {"identity": "<DNS or SPIFFE form>", "token": "<JWS>",
 *    "certificate_signing_request": "<PEM>"}
 * and gets
 *   {"leaf_certificate": "<PEM>", "intermediate_certificates": ["<PEM>", ...],
 *    "valid_until": <notAfter, seconds since the epoch>,
 *    "valid_until_rfc3339": "2026-01-02T03:04:05Z"}
 * (field names mirror linkerd2-proxy-api's identity.proto), or an error
 * whose code is one of the MESH_CERTIFY_CODE_* strings below.
 *
 * Thread safety: these functions keep no state; they may run on shared
 * const objects from several threads at once (mesh_ca_issue is thread-safe).
 * Strings returned through char ** are allocated with the context's
 * allocator (the CA's, the key's, as said): free them with
 * mesh_free_string(ctx, s) from mesh/ctx.h. */

#define MESH_CERTIFY_PATH "/identity.Identity/Certify"
#define MESH_CERTIFY_REQUEST_MAX 65536u   /* bytes of one request */
#define MESH_CERTIFY_RESPONSE_MAX 1048576u /* bytes of one response */

/* Error classes, as rpc error codes (mesh/rpc.h), with the HTTP status a
 * server answers them with. */
#define MESH_CERTIFY_CODE_INVALID_ARGUMENT "invalid_argument"       /* 400 */
#define MESH_CERTIFY_CODE_UNAUTHENTICATED "unauthenticated"         /* 401 */
#define MESH_CERTIFY_CODE_FAILED_PRECONDITION "failed_precondition" /* 412 */
#define MESH_CERTIFY_CODE_UNAVAILABLE "unavailable"                 /* 503 */
#define MESH_CERTIFY_CODE_INTERNAL "internal"                       /* 500 */

/* The CA's side: answer one request (len bytes, no NUL needed) at now_s.
 *   ca            the issuer; NULL while none is loaded (-> unavailable)
 *   token_pubkey  the P-256 key that verifies workload tokens (token.pub)
 *   audience      the audience tokens must carry
 *   trust_domain, cp_ns  what this service issues for (NULL: the defaults);
 *                 a SPIFFE identity in the request takes cp_ns from here
 * The token must be valid, for audience, and name the namespace and service
 * account of the requested identity; the CSR's SANs must be exactly that
 * identity's DNS and URI forms. On success *response_json (allocated with
 * the CA's context) holds the answer. On failure *error_code (may be NULL)
 * gets the class and *why (may be NULL) a static reason; *response_json is
 * left alone. Returns 0 or:
 *   invalid_argument     MESH_ERR_LIMIT (request over MESH_CERTIFY_REQUEST_MAX),
 *                        MESH_ERR_PARSE (not JSON, missing or mistyped field,
 *                        bad identity or CSR), MESH_ERR_IDENTITY or
 *                        MESH_ERR_DENIED (CSR not for that identity, or its
 *                        signature does not verify)
 *   unauthenticated      MESH_ERR_DENIED (forged, wrong key or audience),
 *                        MESH_ERR_EXPIRED, MESH_ERR_IDENTITY (a token for
 *                        another workload), MESH_ERR_PARSE, MESH_ERR_LIMIT
 *   failed_precondition  MESH_ERR_IDENTITY: the identity is in another trust
 *                        domain or control plane than this service's
 *   unavailable          MESH_ERR_UNAVAILABLE (no issuer or no token key),
 *                        MESH_ERR_EXPIRED (the issuer is not valid at now_s)
 *   internal             MESH_ERR_NOMEM, MESH_ERR_TLS, MESH_ERR_UNSUPPORTED
 * MESH_ERR_INVALID (response_json NULL, or request_json NULL with len > 0)
 * sets no code. */
MESH_API int mesh_certify_handle(const mesh_ca *ca, const mesh_key *token_pubkey,
                                 const char *audience, const char *trust_domain,
                                 const char *cp_ns, const char *request_json, size_t len,
                                 uint64_t now_s, char **response_json, const char **error_code,
                                 const char **why);

/* The workload's side: a request for id, with a new CSR signed by key (a
 * P-256 private key) and the workload's token. *request_json is allocated
 * with key's context. MESH_ERR_INVALID (NULLs, a public key),
 * MESH_ERR_LIMIT (token over MESH_TOKEN_MAX_LEN), MESH_ERR_PARSE (token
 * with characters a JWS cannot hold), MESH_ERR_UNSUPPORTED, MESH_ERR_NOMEM,
 * MESH_ERR_TLS. */
MESH_API int mesh_certify_request(const mesh_key *key, const mesh_identity *id,
                                  const char *token, char **request_json);

/* Read a successful answer (len bytes): *leaf_chain gets the leaf followed
 * by the intermediates (free it with mesh_certs_free), *valid_until (may be
 * NULL) the validity end. Nothing is verified here beyond the shape (one
 * certificate per field, a non-CA leaf, valid_until not after the leaf's
 * notAfter): verify the chain with mesh_certs_verify_peer, and
 * mesh_tls_config_new checks that the leaf matches the key.
 * MESH_ERR_LIMIT (over MESH_CERTIFY_RESPONSE_MAX), MESH_ERR_PARSE (with
 * *why), MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_certify_response_parse(mesh_ctx *ctx, const char *response_json, size_t len,
                                         mesh_certs **leaf_chain, uint64_t *valid_until,
                                         const char **why);

MESH_END_DECLS

#endif

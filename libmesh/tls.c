/* libmesh TLS: mbedTLS 2.28 mTLS configurations, identity checks, session reuse, libevent filter adapter. */
#include <errno.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include <mbedtls/error.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_cache.h>
#include <mbedtls/ssl_ticket.h>

#include <mesh/error.h>
#include <mesh/tls.h>
#include "ctx_internal.h"
#include "identity_internal.h"
#include "sockio_internal.h"

/* ---- Fixed policy ------------------------------------------------------ */

/* The two suites Linkerd's proxies negotiate for TLS 1.2 with ECDSA
 * workload keys; nothing weaker is ever offered or accepted. */
static const int SUITES[] = {MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                             MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, 0};
/* Key exchange groups, and the curves allowed for peer ECDSA keys. */
static const mbedtls_ecp_group_id CURVES[] = {MBEDTLS_ECP_DP_CURVE25519, MBEDTLS_ECP_DP_SECP256R1,
                                              MBEDTLS_ECP_DP_SECP384R1, MBEDTLS_ECP_DP_NONE};
static const int SIG_HASHES[] = {MBEDTLS_MD_SHA256, MBEDTLS_MD_SHA384, MBEDTLS_MD_NONE};
/* Certificates on a peer's path: SHA-2 signatures, P-256/P-384 or RSA >= 2048
 * (anchors may be RSA), the same rules mesh_certs_verify applies. */
static const mbedtls_x509_crt_profile CRT_PROFILE = {
    MBEDTLS_X509_ID_FLAG(MBEDTLS_MD_SHA256) | MBEDTLS_X509_ID_FLAG(MBEDTLS_MD_SHA384) |
        MBEDTLS_X509_ID_FLAG(MBEDTLS_MD_SHA512),
    MBEDTLS_X509_ID_FLAG(MBEDTLS_PK_ECKEY) | MBEDTLS_X509_ID_FLAG(MBEDTLS_PK_ECDSA) |
        MBEDTLS_X509_ID_FLAG(MBEDTLS_PK_RSA),
    MBEDTLS_X509_ID_FLAG(MBEDTLS_ECP_DP_SECP256R1) | MBEDTLS_X509_ID_FLAG(MBEDTLS_ECP_DP_SECP384R1),
    2048,
};

#define RECORD_MAX 16384u           /* TLS plaintext record */
#define ALPN_ITEM_MAX 255u
#define SESSION_LIFETIME_MAX_S 604800u
#define SESSIONS_MAX (1u << 20)
#define CLOSE_TIMEOUT_MS 10000u     /* graceful close when the handshake timeout is off */

/* ---- Reasons ------------------------------------------------------------ */

static const char R_NO_CREDS[] = "a certificate chain was set without its private key, or the reverse";
static const char R_NO_ANCHORS[] = "no trust anchors were set";
static const char R_CHAIN_EMPTY[] = "certificate chain is empty";
static const char R_KEY_PUBLIC[] = "the private key PEM holds a public key";
static const char R_KEY_TYPE[] =
    "the private key must be ECDSA (the TLS suites are ECDHE-ECDSA)";
static const char R_KEY_MISMATCH[] = "the private key does not match the leaf certificate";
static const char R_ALPN_EMPTY[] = "ALPN list has an empty protocol name";
static const char R_ALPN_LONG[] = "ALPN protocol name is longer than 255 bytes";
static const char R_ALPN_MANY[] = "ALPN list has more than 8 protocols";
static const char R_TLS_SETUP[] = "mbedTLS rejected the TLS configuration";
static const char R_RNG[] = "the random source failed";

/* ---- Options ------------------------------------------------------------ */

struct mesh_tls_opts {
  mesh_ctx *ctx;
  char *chain, *key, *anchors, *alpn;
  size_t chain_len, key_len, anchors_len;
  uint32_t handshake_timeout_ms;
  uint32_t server_sessions, client_sessions, lifetime_s;
  int tickets;
};

static void free_secret(mesh_ctx *ctx, char *p, size_t n) {
  if (p) mbedtls_platform_zeroize(p, n);
  mesh__free(ctx, p);
}

int mesh_tls_opts_new(mesh_ctx *ctx, mesh_tls_opts **ret) {
  if (!ctx || !ret) return MESH_ERR_INVALID;
  mesh_tls_opts *o = mesh__calloc(ctx, 1, sizeof *o);
  if (!o) return MESH_ERR_NOMEM;
  o->ctx = ctx;
  o->alpn = mesh__strdup(ctx, MESH_TLS_DEFAULT_ALPN);
  if (!o->alpn) {
    mesh__free(ctx, o);
    return MESH_ERR_NOMEM;
  }
  o->handshake_timeout_ms = MESH_TLS_DEFAULT_HANDSHAKE_TIMEOUT_MS;
  o->server_sessions = MESH_TLS_DEFAULT_SERVER_SESSIONS;
  o->client_sessions = MESH_TLS_DEFAULT_CLIENT_SESSIONS;
  o->lifetime_s = MESH_TLS_DEFAULT_SESSION_LIFETIME_S;
  o->tickets = 1;
  *ret = o;
  return 0;
}

void mesh_tls_opts_free(mesh_tls_opts *o) {
  if (!o) return;
  mesh__free(o->ctx, o->chain);
  free_secret(o->ctx, o->key, o->key_len);
  mesh__free(o->ctx, o->anchors);
  mesh__free(o->ctx, o->alpn);
  mesh__free(o->ctx, o);
}

int mesh_tls_opts_set_credentials(mesh_tls_opts *o, const char *chain_pem, size_t chain_len,
                                  const char *key_pem, size_t key_len) {
  if (!o || !chain_pem || !key_pem || !chain_len || !key_len) return MESH_ERR_INVALID;
  char *c = mesh__strndup(o->ctx, chain_pem, chain_len);
  char *k = mesh__strndup(o->ctx, key_pem, key_len);
  if (!c || !k) {
    mesh__free(o->ctx, c);
    free_secret(o->ctx, k, key_len);
    return MESH_ERR_NOMEM;
  }
  mesh__free(o->ctx, o->chain);
  free_secret(o->ctx, o->key, o->key_len);
  o->chain = c;
  o->chain_len = chain_len;
  o->key = k;
  o->key_len = key_len;
  return 0;
}

int mesh_tls_opts_set_anchors(mesh_tls_opts *o, const char *pem, size_t len) {
  if (!o || !pem || !len) return MESH_ERR_INVALID;
  char *a = mesh__strndup(o->ctx, pem, len);
  if (!a) return MESH_ERR_NOMEM;
  mesh__free(o->ctx, o->anchors);
  o->anchors = a;
  o->anchors_len = len;
  return 0;
}

/* Split "h2,http/1.1" into a NULL-terminated array over a private copy,
 * as mbedtls_ssl_conf_alpn_protocols wants it. */
static int alpn_parse(mesh_ctx *ctx, const char *list, char **ret_buf,
                      const char *arr[MESH_TLS_ALPN_MAX + 1], const char **why) {
  size_t n = 0;
  for (size_t i = 0; i <= MESH_TLS_ALPN_MAX; i++) arr[i] = NULL;
  if (!*list) {
    *ret_buf = NULL;
    return 0;
  }
  char *buf = mesh__strdup(ctx, list);
  if (!buf) return MESH_ERR_NOMEM;
  for (char *p = buf;;) {
    char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    const char *reason = len == 0 ? R_ALPN_EMPTY
                         : len > ALPN_ITEM_MAX ? R_ALPN_LONG
                         : n == MESH_TLS_ALPN_MAX ? R_ALPN_MANY
                                                  : NULL;
    if (reason) {
      mesh__free(ctx, buf);
      if (why) *why = reason;
      return MESH_ERR_PARSE;
    }
    arr[n++] = p;
    if (!comma) break;
    *comma = '\0';
    p = comma + 1;
  }
  *ret_buf = buf;
  return 0;
}

int mesh_tls_opts_set_alpn(mesh_tls_opts *o, const char *list) {
  if (!o || !list) return MESH_ERR_INVALID;
  char *buf;
  const char *arr[MESH_TLS_ALPN_MAX + 1];
  int rc = alpn_parse(o->ctx, list, &buf, arr, NULL);
  if (rc) return rc;
  mesh__free(o->ctx, buf);
  char *copy = mesh__strdup(o->ctx, list);
  if (!copy) return MESH_ERR_NOMEM;
  mesh__free(o->ctx, o->alpn);
  o->alpn = copy;
  return 0;
}

int mesh_tls_opts_set_handshake_timeout(mesh_tls_opts *o, uint32_t ms) {
  if (!o) return MESH_ERR_INVALID;
  o->handshake_timeout_ms = ms;
  return 0;
}

int mesh_tls_opts_set_sessions(mesh_tls_opts *o, uint32_t server_sessions,
                               uint32_t client_sessions, uint32_t lifetime_s, int tickets) {
  if (!o) return MESH_ERR_INVALID;
  if (lifetime_s > SESSION_LIFETIME_MAX_S || server_sessions > SESSIONS_MAX ||
      client_sessions > SESSIONS_MAX)
    return MESH_ERR_RANGE;
  o->server_sessions = server_sessions;
  o->client_sessions = client_sessions;
  o->lifetime_s = lifetime_s ? lifetime_s : MESH_TLS_DEFAULT_SESSION_LIFETIME_S;
  o->tickets = tickets != 0;
  return 0;
}

/* ---- Configurations ----------------------------------------------------- */

typedef struct {
  char *key; /* "<session_key>|<expected identity>", NULL when the slot is free */
  uint64_t stamp_ms;
  mbedtls_ssl_session session;
} client_session;

struct mesh_tls_config {
  mesh_ctx *ctx;
  atomic_uint refs;
  mesh_certs *chain, *anchors;
  mesh_key *key;
  mesh_identity *id;
  uint64_t not_after;
  char *alpn_buf;
  const char *alpn[MESH_TLS_ALPN_MAX + 1];
  uint32_t handshake_timeout_ms, lifetime_s, server_sessions, client_sessions;
  int tickets;
  mesh__rng rng; /* ctr_drbg locks itself (MBEDTLS_THREADING_C) */
  int rng_ok, cache_ok, ticket_ok, confs_ok;
  mbedtls_ssl_cache_context cache;   /* locks itself */
  mbedtls_ssl_ticket_context ticket; /* locks itself */
  mbedtls_ssl_config client, server_required, server_optional;
  pthread_mutex_t store_lock;
  int store_lock_ok;
  client_session *store;
};

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* One mbedtls_ssl_config with the fixed policy and this configuration's
 * credentials; alpn[0] == NULL offers no ALPN. */
static int conf_setup(mesh_tls_config *cfg, mbedtls_ssl_config *conf, int endpoint, int authmode,
                      const char *const *alpn) {
  mbedtls_ssl_config_init(conf);
  int rc = mbedtls_ssl_config_defaults(conf, endpoint, MBEDTLS_SSL_TRANSPORT_STREAM,
                                       MBEDTLS_SSL_PRESET_DEFAULT);
  if (rc) goto fail;
  mbedtls_ssl_conf_min_version(conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
  mbedtls_ssl_conf_max_version(conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
  mbedtls_ssl_conf_ciphersuites(conf, SUITES);
  mbedtls_ssl_conf_curves(conf, CURVES);
  mbedtls_ssl_conf_sig_hashes(conf, SIG_HASHES);
  mbedtls_ssl_conf_cert_profile(conf, &CRT_PROFILE);
  mbedtls_ssl_conf_rng(conf, mesh__rng_random, &cfg->rng);
  mbedtls_ssl_conf_authmode(conf, authmode);
  mbedtls_ssl_conf_renegotiation(conf, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
  mbedtls_ssl_conf_ca_chain(conf, mesh__certs_crt(cfg->anchors), NULL);
  if (cfg->chain) { /* a client-only configuration presents no certificate */
    rc = mbedtls_ssl_conf_own_cert(conf, mesh__certs_crt(cfg->chain), mesh__key_pk(cfg->key));
    if (rc) goto fail;
  }
  if (alpn[0]) {
    /* mbedTLS keeps the pointer and never writes through it. */
    rc = mbedtls_ssl_conf_alpn_protocols(conf, (const char **)alpn);
    if (rc) goto fail;
  }
  if (endpoint == MBEDTLS_SSL_IS_SERVER) {
    if (cfg->cache_ok)
      mbedtls_ssl_conf_session_cache(conf, &cfg->cache, mbedtls_ssl_cache_get,
                                     mbedtls_ssl_cache_set);
    if (cfg->ticket_ok)
      mbedtls_ssl_conf_session_tickets_cb(conf, mbedtls_ssl_ticket_write,
                                          mbedtls_ssl_ticket_parse, &cfg->ticket);
  } else {
    mbedtls_ssl_conf_session_tickets(conf, cfg->client_sessions
                                               ? MBEDTLS_SSL_SESSION_TICKETS_ENABLED
                                               : MBEDTLS_SSL_SESSION_TICKETS_DISABLED);
  }
  return 0;
fail:
  mbedtls_ssl_config_free(conf);
  return mesh__tls_err(rc, MESH_ERR_TLS);
}

static void config_destroy(mesh_tls_config *cfg) {
  mesh_ctx *ctx = cfg->ctx;
  if (cfg->confs_ok) {
    mbedtls_ssl_config_free(&cfg->client);
    mbedtls_ssl_config_free(&cfg->server_required);
    mbedtls_ssl_config_free(&cfg->server_optional);
  }
  if (cfg->store) {
    for (uint32_t i = 0; i < cfg->client_sessions; i++) {
      if (cfg->store[i].key) mesh__free(ctx, cfg->store[i].key);
      mbedtls_ssl_session_free(&cfg->store[i].session);
    }
    mesh__free(ctx, cfg->store);
  }
  if (cfg->store_lock_ok) pthread_mutex_destroy(&cfg->store_lock);
  if (cfg->ticket_ok) mbedtls_ssl_ticket_free(&cfg->ticket);
  if (cfg->cache_ok) mbedtls_ssl_cache_free(&cfg->cache);
  if (cfg->rng_ok) mesh__rng_free(&cfg->rng);
  mesh_identity_free(cfg->id);
  mesh_key_free(cfg->key);
  mesh_certs_free(cfg->chain);
  mesh_certs_free(cfg->anchors);
  mesh__free(ctx, cfg->alpn_buf);
  mesh__free(ctx, cfg);
}

static int config_fail(mesh_tls_config *cfg, int rc, const char *reason, const char **why) {
  if (why && reason) *why = reason;
  config_destroy(cfg);
  return rc;
}

int mesh_tls_config_new(const mesh_tls_opts *o, const char **why, mesh_tls_config **ret) {
  if (!o || !ret) return MESH_ERR_INVALID;
  /* Neither makes a client-only configuration: how a workload reaches the
   * identity service before it has a certificate. */
  if (!o->chain != !o->key) {
    if (why) *why = R_NO_CREDS;
    return MESH_ERR_INVALID;
  }
  if (!o->anchors) {
    if (why) *why = R_NO_ANCHORS;
    return MESH_ERR_INVALID;
  }
  mesh_ctx *ctx = o->ctx;
  mesh_tls_config *cfg = mesh__calloc(ctx, 1, sizeof *cfg);
  if (!cfg) return MESH_ERR_NOMEM;
  cfg->ctx = ctx;
  atomic_init(&cfg->refs, 1u);
  cfg->handshake_timeout_ms = o->handshake_timeout_ms;
  cfg->lifetime_s = o->lifetime_s;
  cfg->server_sessions = o->server_sessions;
  cfg->client_sessions = o->client_sessions;
  cfg->tickets = o->tickets;

  const char *w = NULL;
  int rc = alpn_parse(ctx, o->alpn, &cfg->alpn_buf, cfg->alpn, &w);
  if (rc) return config_fail(cfg, rc, w, why);
  if (o->chain) {
    rc = mesh_certs_parse(ctx, o->chain, o->chain_len, &w, &cfg->chain);
    if (rc) return config_fail(cfg, rc, w, why);
    if (mesh_certs_count(cfg->chain) == 0)
      return config_fail(cfg, MESH_ERR_PARSE, R_CHAIN_EMPTY, why);
    rc = mesh_key_parse(ctx, o->key, o->key_len, &w, &cfg->key);
    if (rc) return config_fail(cfg, rc, w, why);
    if (!mesh_key_pem(cfg->key)) return config_fail(cfg, MESH_ERR_INVALID, R_KEY_PUBLIC, why);
    if (!mbedtls_pk_can_do(mesh__key_pk(cfg->key), MBEDTLS_PK_ECDSA))
      return config_fail(cfg, MESH_ERR_UNSUPPORTED, R_KEY_TYPE, why);
    mbedtls_x509_crt *leaf = mesh__certs_crt(cfg->chain);
    rc = mbedtls_pk_check_pair(&leaf->pk, mesh__key_pk(cfg->key));
    if (rc) return config_fail(cfg, mesh__tls_err(rc, MESH_ERR_TLS), R_KEY_MISMATCH, why);
    rc = mesh_certs_identity(cfg->chain, 0, &w, &cfg->id);
    if (rc) return config_fail(cfg, rc, w, why);
    cfg->not_after = mesh_certs_not_after(cfg->chain, 0);
  }
  rc = mesh_certs_parse(ctx, o->anchors, o->anchors_len, &w, &cfg->anchors);
  if (rc) return config_fail(cfg, rc, w, why);

  rc = mesh__rng_init(&cfg->rng, ctx);
  if (rc) return config_fail(cfg, rc, R_RNG, why);
  /* Shared by every handshake: ctr_drbg, the cache and the ticket keys
   * lock themselves (MBEDTLS_THREADING_C), and mbedTLS 2.28 signs and
   * verifies EC keys on a private copy of their group, so the parsed
   * credentials are only ever read. */
  cfg->rng_ok = 1;

  if (cfg->server_sessions) {
    mbedtls_ssl_cache_init(&cfg->cache);
    mbedtls_ssl_cache_set_max_entries(&cfg->cache, (int)cfg->server_sessions);
    mbedtls_ssl_cache_set_timeout(&cfg->cache, (int)cfg->lifetime_s);
    cfg->cache_ok = 1;
  }
  if (cfg->tickets) {
    mbedtls_ssl_ticket_init(&cfg->ticket);
    rc = mbedtls_ssl_ticket_setup(&cfg->ticket, mesh__rng_random, &cfg->rng,
                                  MBEDTLS_CIPHER_AES_256_GCM, cfg->lifetime_s);
    if (rc) {
      mbedtls_ssl_ticket_free(&cfg->ticket);
      return config_fail(cfg, mesh__tls_err(rc, MESH_ERR_TLS), R_TLS_SETUP, why);
    }
    cfg->ticket_ok = 1;
  }
  if (cfg->client_sessions) {
    cfg->store = mesh__calloc(ctx, cfg->client_sessions, sizeof *cfg->store);
    if (!cfg->store) return config_fail(cfg, MESH_ERR_NOMEM, NULL, why);
    for (uint32_t i = 0; i < cfg->client_sessions; i++)
      mbedtls_ssl_session_init(&cfg->store[i].session);
    if (pthread_mutex_init(&cfg->store_lock, NULL))
      return config_fail(cfg, MESH_ERR_IO, NULL, why);
    cfg->store_lock_ok = 1;
  }

  rc = conf_setup(cfg, &cfg->client, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_VERIFY_REQUIRED,
                  cfg->alpn);
  if (rc) return config_fail(cfg, rc, R_TLS_SETUP, why);
  rc = conf_setup(cfg, &cfg->server_required, MBEDTLS_SSL_IS_SERVER,
                  MBEDTLS_SSL_VERIFY_REQUIRED, cfg->alpn);
  if (rc) {
    mbedtls_ssl_config_free(&cfg->client);
    return config_fail(cfg, rc, R_TLS_SETUP, why);
  }
  rc = conf_setup(cfg, &cfg->server_optional, MBEDTLS_SSL_IS_SERVER,
                  MBEDTLS_SSL_VERIFY_OPTIONAL, cfg->alpn);
  if (rc) {
    mbedtls_ssl_config_free(&cfg->client);
    mbedtls_ssl_config_free(&cfg->server_required);
    return config_fail(cfg, rc, R_TLS_SETUP, why);
  }
  cfg->confs_ok = 1;
  *ret = cfg;
  return 0;
}

mesh_tls_config *mesh_tls_config_ref(mesh_tls_config *cfg) {
  if (cfg) atomic_fetch_add_explicit(&cfg->refs, 1u, memory_order_relaxed);
  return cfg;
}

void mesh_tls_config_unref(mesh_tls_config *cfg) {
  if (cfg && atomic_fetch_sub_explicit(&cfg->refs, 1u, memory_order_acq_rel) == 1u)
    config_destroy(cfg);
}

const mesh_identity *mesh_tls_config_identity(const mesh_tls_config *cfg) {
  return cfg ? cfg->id : NULL;
}

uint64_t mesh_tls_config_not_after(const mesh_tls_config *cfg) { return cfg ? cfg->not_after : 0; }

/* The client's kept sessions: a small table scanned linearly (it is only
 * consulted once per handshake), evicting the oldest entry when full. */
static void store_load(mesh_tls_config *cfg, const char *key, mbedtls_ssl_context *ssl) {
  if (!cfg->store || !key) return;
  uint64_t now = now_ms(), max_age = (uint64_t)cfg->lifetime_s * 1000u;
  pthread_mutex_lock(&cfg->store_lock);
  for (uint32_t i = 0; i < cfg->client_sessions; i++) {
    client_session *e = &cfg->store[i];
    if (e->key && !strcmp(e->key, key)) {
      /* A failed set_session only means a full handshake. */
      if (now - e->stamp_ms < max_age) (void)mbedtls_ssl_set_session(ssl, &e->session);
      break;
    }
  }
  pthread_mutex_unlock(&cfg->store_lock);
}

static void store_save(mesh_tls_config *cfg, const char *key, const mbedtls_ssl_context *ssl) {
  if (!cfg->store || !key) return;
  pthread_mutex_lock(&cfg->store_lock);
  client_session *slot = NULL;
  for (uint32_t i = 0; i < cfg->client_sessions; i++) {
    client_session *e = &cfg->store[i];
    if (e->key && !strcmp(e->key, key)) {
      slot = e;
      break;
    }
    if (!slot || (slot->key && (!e->key || e->stamp_ms < slot->stamp_ms))) slot = e;
  }
  if (!slot->key || strcmp(slot->key, key)) {
    mesh__free(cfg->ctx, slot->key);
    slot->key = mesh__strdup(cfg->ctx, key);
  }
  mbedtls_ssl_session_free(&slot->session);
  mbedtls_ssl_session_init(&slot->session);
  if (slot->key && mbedtls_ssl_get_session(ssl, &slot->session) == 0) {
    slot->stamp_ms = now_ms();
  } else { /* out of memory: forget the entry rather than keep half of it */
    mesh__free(cfg->ctx, slot->key);
    slot->key = NULL;
    mbedtls_ssl_session_free(&slot->session);
    mbedtls_ssl_session_init(&slot->session);
  }
  pthread_mutex_unlock(&cfg->store_lock);
}

/* ---- Credential holder -------------------------------------------------- */

struct mesh_tls_creds {
  mesh_ctx *ctx;
  pthread_mutex_t lock; /* a plain atomic swap would race with a reader's ref */
  mesh_tls_config *cur;
};

int mesh_tls_creds_new(mesh_ctx *ctx, mesh_tls_config *cfg, mesh_tls_creds **ret) {
  if (!ctx || !ret) return MESH_ERR_INVALID;
  mesh_tls_creds *c = mesh__calloc(ctx, 1, sizeof *c);
  if (!c) return MESH_ERR_NOMEM;
  if (pthread_mutex_init(&c->lock, NULL)) {
    mesh__free(ctx, c);
    return MESH_ERR_IO;
  }
  c->ctx = ctx;
  c->cur = mesh_tls_config_ref(cfg);
  *ret = c;
  return 0;
}

void mesh_tls_creds_free(mesh_tls_creds *c) {
  if (!c) return;
  mesh_tls_config_unref(c->cur);
  pthread_mutex_destroy(&c->lock);
  mesh__free(c->ctx, c);
}

int mesh_tls_creds_set(mesh_tls_creds *c, mesh_tls_config *cfg) {
  if (!c) return MESH_ERR_INVALID;
  mesh_tls_config_ref(cfg);
  pthread_mutex_lock(&c->lock);
  mesh_tls_config *old = c->cur;
  c->cur = cfg;
  pthread_mutex_unlock(&c->lock);
  mesh_tls_config_unref(old); /* outside the lock: it may free a whole configuration */
  return 0;
}

mesh_tls_config *mesh_tls_creds_get(mesh_tls_creds *c) {
  if (!c) return NULL;
  pthread_mutex_lock(&c->lock);
  mesh_tls_config *cfg = mesh_tls_config_ref(c->cur);
  pthread_mutex_unlock(&c->lock);
  return cfg;
}

/* ---- Connections -------------------------------------------------------- */

enum { ST_HANDSHAKE, ST_OPEN, ST_PEER_CLOSED, ST_CLOSING, ST_FAILED };

struct mesh_tls_conn {
  mesh_ctx *ctx;
  mesh_tls_config *cfg;
  mbedtls_ssl_context ssl;
  int ssl_ok;
  mbedtls_ssl_config own_conf; /* only when the client overrides ALPN */
  int own_conf_ok;
  char *alpn_buf;
  const char *alpn[MESH_TLS_ALPN_MAX + 1];
  int client, optional, state, full_handshake;
  uint32_t vflags;                  /* verification flags seen along the peer's chain */
  struct bufferevent *bev, *under;  /* the filter (ours) over the socket bufferevent */
  bufferevent_data_cb u_read, u_write; /* libevent's filter callbacks, which we wrap */
  bufferevent_event_cb u_event;
  void *u_arg;
  struct event *timer;
  mesh_identity *expected, *peer;
  char *session_key;
  int err;
  char why[256];
};

static void conn_fail(mesh_tls_conn *c, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Remember the first failure, push out any alert mbedTLS queued (the peer
 * then learns why), stop reading and tell the application. The event is
 * deferred by BEV_OPT_DEFER_CALLBACKS, so c stays valid here. */
static void conn_fail(mesh_tls_conn *c, int err, const char *fmt, ...) {
  if (c->state == ST_FAILED) return;
  int during_handshake = c->state == ST_HANDSHAKE;
  c->state = ST_FAILED;
  c->err = err;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->why, sizeof c->why, fmt, ap);
  va_end(ap);
  evutil_socket_t fd = bufferevent_getfd(c->under);
  if (fd >= 0) (void)evbuffer_write(bufferevent_get_output(c->under), fd);
  bufferevent_disable(c->under, EV_READ);
  if (c->timer) event_del(c->timer);
  if (c->bev)
    bufferevent_trigger_event(c->bev,
                              BEV_EVENT_ERROR | (during_handshake ? BEV_EVENT_READING : 0), 0);
}

static int bio_send(void *p, const unsigned char *buf, size_t len) {
  mesh_tls_conn *c = p;
  if (evbuffer_add(bufferevent_get_output(c->under), buf, len)) return MBEDTLS_ERR_SSL_ALLOC_FAILED;
  return (int)len;
}

static int bio_recv(void *p, unsigned char *buf, size_t len) {
  mesh_tls_conn *c = p;
  struct evbuffer *in = bufferevent_get_input(c->under);
  if (evbuffer_get_length(in) == 0) return MBEDTLS_ERR_SSL_WANT_READ;
  int n = evbuffer_remove(in, buf, len);
  return n > 0 ? n : MBEDTLS_ERR_SSL_WANT_READ;
}

static const char *alert_name(int a) {
  switch (a) {
  case MBEDTLS_SSL_ALERT_MSG_HANDSHAKE_FAILURE: return "handshake_failure";
  case MBEDTLS_SSL_ALERT_MSG_BAD_CERT: return "bad_certificate";
  case MBEDTLS_SSL_ALERT_MSG_UNSUPPORTED_CERT: return "unsupported_certificate";
  case MBEDTLS_SSL_ALERT_MSG_CERT_REVOKED: return "certificate_revoked";
  case MBEDTLS_SSL_ALERT_MSG_CERT_EXPIRED: return "certificate_expired";
  case MBEDTLS_SSL_ALERT_MSG_CERT_UNKNOWN: return "certificate_unknown";
  case MBEDTLS_SSL_ALERT_MSG_ILLEGAL_PARAMETER: return "illegal_parameter";
  case MBEDTLS_SSL_ALERT_MSG_UNKNOWN_CA: return "unknown_ca";
  case MBEDTLS_SSL_ALERT_MSG_ACCESS_DENIED: return "access_denied";
  case MBEDTLS_SSL_ALERT_MSG_DECODE_ERROR: return "decode_error";
  case MBEDTLS_SSL_ALERT_MSG_DECRYPT_ERROR: return "decrypt_error";
  case MBEDTLS_SSL_ALERT_MSG_PROTOCOL_VERSION: return "protocol_version";
  case MBEDTLS_SSL_ALERT_MSG_INSUFFICIENT_SECURITY: return "insufficient_security";
  case MBEDTLS_SSL_ALERT_MSG_INTERNAL_ERROR: return "internal_error";
  case MBEDTLS_SSL_ALERT_MSG_NO_APPLICATION_PROTOCOL: return "no_application_protocol";
  case 116: return "certificate_required";
  default: return "alert";
  }
}

/* The first line of mbedTLS's description of verification flags. */
static void verify_reason(uint32_t flags, char *buf, size_t cap) {
  char info[512];
  int n = mbedtls_x509_crt_verify_info(info, sizeof info, "", flags);
  if (n <= 0) {
    snprintf(buf, cap, "certificate verification failed (flags 0x%x)", (unsigned)flags);
    return;
  }
  size_t len = strcspn(info, "\n");
  if (len >= cap) len = cap - 1;
  memcpy(buf, info, len);
  buf[len] = '\0';
}

static int flags_err(uint32_t flags) {
  if (flags & (MBEDTLS_X509_BADCERT_NOT_TRUSTED | MBEDTLS_X509_BADCERT_BAD_MD |
               MBEDTLS_X509_BADCERT_BAD_PK | MBEDTLS_X509_BADCERT_BAD_KEY))
    return MESH_ERR_TLS;
  if (flags & (MBEDTLS_X509_BADCERT_EXPIRED | MBEDTLS_X509_BADCERT_FUTURE)) return MESH_ERR_EXPIRED;
  return MESH_ERR_TLS;
}

static const char *side(const mesh_tls_conn *c) { return c->client ? "server" : "client"; }

/* Called by mbedTLS for each certificate of the peer's path, the anchor
 * first and the leaf (depth 0) last. Failures recorded here are reported
 * instead of mbedTLS's generic verification error. */
static int on_verify(void *p, mbedtls_x509_crt *crt, int depth, uint32_t *flags) {
  mesh_tls_conn *c = p;
  /* The expected identity doubles as SNI, so mbedTLS also matched it
   * against the DNS SANs; we check the identity below, in either form. */
  if (depth == 0 && c->client) *flags &= ~(uint32_t)MBEDTLS_X509_BADCERT_CN_MISMATCH;
  c->vflags |= *flags;
  if (depth != 0 || c->err) return 0;
  if (c->vflags) {
    char reason[160];
    verify_reason(c->vflags, reason, sizeof reason);
    c->err = flags_err(c->vflags);
    snprintf(c->why, sizeof c->why, "%s certificate rejected: %s", side(c), reason);
    /* In optional mode mbedTLS would accept a bad certificate and only
     * record the flags; a certificate that is presented must verify. */
    return c->optional ? MBEDTLS_ERR_X509_FATAL_ERROR : 0;
  }
  const char *w = "unknown";
  int rc = mesh__identity_from_crt(c->ctx, crt, &w, &c->peer);
  if (rc) {
    c->err = rc == MESH_ERR_NOMEM ? rc : MESH_ERR_IDENTITY;
    snprintf(c->why, sizeof c->why, "%s certificate carries no workload identity: %s", side(c), w);
    return MBEDTLS_ERR_X509_FATAL_ERROR;
  }
  if (c->client && !mesh_identity_equal(c->peer, c->expected)) {
    c->err = MESH_ERR_IDENTITY;
    snprintf(c->why, sizeof c->why, "server identity is %s, expected %s",
             mesh_identity_dns(c->peer), mesh_identity_dns(c->expected));
    return MBEDTLS_ERR_X509_FATAL_ERROR;
  }
  return 0;
}

static void handshake_failed(mesh_tls_conn *c, int rc) {
  if (c->err) { /* our own verdict, from on_verify */
    char why[sizeof c->why];
    memcpy(why, c->why, sizeof why);
    int err = c->err;
    c->err = 0;
    conn_fail(c, err, "%s", why);
    return;
  }
  if (rc == MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE) {
    int a = c->ssl.in_msg ? c->ssl.in_msg[1] : 0;
    conn_fail(c, a == MBEDTLS_SSL_ALERT_MSG_ACCESS_DENIED ? MESH_ERR_DENIED : MESH_ERR_TLS,
              "%s refused the handshake: alert %d (%s)", side(c), a, alert_name(a));
    return;
  }
  if (rc == MBEDTLS_ERR_SSL_NO_CLIENT_CERTIFICATE) {
    conn_fail(c, MESH_ERR_IDENTITY, "client presented no certificate (client authentication is required)");
    return;
  }
  if (rc == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED) {
    uint32_t flags = mbedtls_ssl_get_verify_result(&c->ssl);
    char reason[160];
    verify_reason(flags, reason, sizeof reason);
    conn_fail(c, flags_err(flags), "%s certificate rejected: %s", side(c), reason);
    return;
  }
  int err = mesh__tls_err(rc, MESH_ERR_TLS);
  if (rc == MBEDTLS_ERR_SSL_ALLOC_FAILED) err = MESH_ERR_NOMEM;
  char msg[160];
  mbedtls_strerror(rc, msg, sizeof msg);
  conn_fail(c, err, "TLS handshake failed: %s (-0x%04x)", msg, (unsigned)-rc);
}

/* The handshake finished: check what the verify callback could not see
 * (a resumed session skips it), then open the connection. Returns 0 or -1. */
static int handshake_done(mesh_tls_conn *c) {
  const mbedtls_x509_crt *crt = mbedtls_ssl_get_peer_cert(&c->ssl);
  if (crt) {
    if (mbedtls_x509_time_is_past(&crt->valid_to)) {
      /* Possible only on resumption, for a session older than the cert. */
      mbedtls_ssl_send_alert_message(&c->ssl, MBEDTLS_SSL_ALERT_LEVEL_FATAL,
                                     MBEDTLS_SSL_ALERT_MSG_CERT_EXPIRED);
      conn_fail(c, MESH_ERR_EXPIRED, "%s certificate expired since the session began", side(c));
      return -1;
    }
    if (!c->peer) {
      const char *w = "unknown";
      int rc = mesh__identity_from_crt(c->ctx, crt, &w, &c->peer);
      if (rc) {
        mbedtls_ssl_send_alert_message(&c->ssl, MBEDTLS_SSL_ALERT_LEVEL_FATAL,
                                       MBEDTLS_SSL_ALERT_MSG_ACCESS_DENIED);
        conn_fail(c, rc == MESH_ERR_NOMEM ? rc : MESH_ERR_IDENTITY,
                  "%s certificate carries no workload identity: %s", side(c), w);
        return -1;
      }
    }
  }
  /* A session resumed on a REQUIRED listener may have begun, without a
   * certificate, on an OPTIONAL one sharing this config's session cache and
   * ticket key: mbedTLS asks for none on resumption, so check here. */
  if (!c->client && !c->optional && !c->peer) {
    mbedtls_ssl_send_alert_message(&c->ssl, MBEDTLS_SSL_ALERT_LEVEL_FATAL,
                                   MBEDTLS_SSL_ALERT_MSG_ACCESS_DENIED);
    conn_fail(c, MESH_ERR_IDENTITY, "client presented no certificate");
    return -1;
  }
  if (c->client && (!c->peer || !mesh_identity_equal(c->peer, c->expected))) {
    mbedtls_ssl_send_alert_message(&c->ssl, MBEDTLS_SSL_ALERT_LEVEL_FATAL,
                                   MBEDTLS_SSL_ALERT_MSG_ACCESS_DENIED);
    conn_fail(c, MESH_ERR_IDENTITY, "server identity is %s, expected %s",
              c->peer ? mesh_identity_dns(c->peer) : "(none)", mesh_identity_dns(c->expected));
    return -1;
  }
  if (c->client) store_save(c->cfg, c->session_key, &c->ssl);
  c->state = ST_OPEN;
  if (c->timer) event_del(c->timer);
  bufferevent_trigger_event(c->bev, BEV_EVENT_CONNECTED, 0);
  /* Plaintext the application wrote during the handshake. */
  bufferevent_flush(c->bev, EV_WRITE, BEV_NORMAL);
  return 0;
}

/* Advance the handshake as far as the buffered input allows: 1 when it
 * needs more input, 0 when done, -1 when it failed. */
static int handshake_drive(mesh_tls_conn *c) {
  while (c->ssl.state != MBEDTLS_SSL_HANDSHAKE_OVER) {
    int rc = mbedtls_ssl_handshake_step(&c->ssl);
    /* Both sides pass through this state only in a full handshake; a
     * resumed one goes from the hellos straight to ChangeCipherSpec. */
    if (c->ssl.state == MBEDTLS_SSL_SERVER_CERTIFICATE) c->full_handshake = 1;
    if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) return 1;
    if (rc) {
      handshake_failed(c, rc);
      return -1;
    }
  }
  return handshake_done(c);
}

static enum bufferevent_filter_result tls_in(struct evbuffer *src, struct evbuffer *dst,
                                             ev_ssize_t limit, enum bufferevent_flush_mode mode,
                                             void *p) {
  mesh_tls_conn *c = p;
  (void)mode;
  if (c->state == ST_HANDSHAKE) {
    int rc = handshake_drive(c);
    if (rc > 0) return BEV_NEED_MORE;
    if (rc < 0) return BEV_ERROR;
  }
  if (c->state != ST_OPEN) {
    evbuffer_drain(src, evbuffer_get_length(src)); /* nothing more is read after a close */
    return c->state == ST_FAILED ? BEV_ERROR : BEV_NEED_MORE;
  }
  size_t got = 0;
  /* Whole records only: plaintext left inside mbedTLS would wait for the
   * next network read, which may never come. The overshoot past the
   * limit is at most one record. */
  while (limit < 0 || got < (size_t)limit || mbedtls_ssl_get_bytes_avail(&c->ssl) > 0) {
    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(dst, RECORD_MAX, &v, 1) < 1) {
      conn_fail(c, MESH_ERR_NOMEM, "out of memory for received data");
      return BEV_ERROR;
    }
    int rc = mbedtls_ssl_read(&c->ssl, v.iov_base, v.iov_len);
    if (rc > 0) {
      v.iov_len = (size_t)rc;
      evbuffer_commit_space(dst, &v, 1);
      got += (size_t)rc;
      continue;
    }
    if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) break;
    if (rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY || rc == 0) {
      c->state = ST_PEER_CLOSED;
      bufferevent_trigger_event(c->bev, BEV_EVENT_EOF | BEV_EVENT_READING, 0);
      break;
    }
    if (rc == MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE) {
      int a = c->ssl.in_msg ? c->ssl.in_msg[1] : 0;
      conn_fail(c, MESH_ERR_TLS, "%s sent alert %d (%s)", side(c), a, alert_name(a));
      return BEV_ERROR;
    }
    char msg[160];
    mbedtls_strerror(rc, msg, sizeof msg);
    conn_fail(c, rc == MBEDTLS_ERR_SSL_ALLOC_FAILED ? MESH_ERR_NOMEM : MESH_ERR_TLS,
              "TLS read failed: %s (-0x%04x)", msg, (unsigned)-rc);
    return BEV_ERROR;
  }
  return got ? BEV_OK : BEV_NEED_MORE;
}

static enum bufferevent_filter_result tls_out(struct evbuffer *src, struct evbuffer *dst,
                                              ev_ssize_t limit, enum bufferevent_flush_mode mode,
                                              void *p) {
  mesh_tls_conn *c = p;
  (void)mode;
  if (c->state == ST_HANDSHAKE) return BEV_NEED_MORE; /* sent once the peer is checked */
  if (c->state != ST_OPEN && c->state != ST_PEER_CLOSED) return BEV_ERROR;
  size_t before = evbuffer_get_length(dst);
  int any = 0;
  while (evbuffer_get_length(src) > 0) {
    if (limit >= 0 && evbuffer_get_length(dst) - before >= (size_t)limit) break;
    size_t n = evbuffer_get_length(src);
    if (n > RECORD_MAX) n = RECORD_MAX;
    unsigned char *data = evbuffer_pullup(src, (ev_ssize_t)n);
    if (!data) {
      conn_fail(c, MESH_ERR_NOMEM, "out of memory for sent data");
      return BEV_ERROR;
    }
    int rc = mbedtls_ssl_write(&c->ssl, data, n);
    if (rc > 0) {
      evbuffer_drain(src, (size_t)rc);
      any = 1;
      continue;
    }
    if (rc == MBEDTLS_ERR_SSL_WANT_WRITE || rc == MBEDTLS_ERR_SSL_WANT_READ) break;
    char msg[160];
    mbedtls_strerror(rc, msg, sizeof msg);
    conn_fail(c, rc == MBEDTLS_ERR_SSL_ALLOC_FAILED ? MESH_ERR_NOMEM : MESH_ERR_TLS,
              "TLS write failed: %s (-0x%04x)", msg, (unsigned)-rc);
    return BEV_ERROR;
  }
  return any ? BEV_OK : BEV_NEED_MORE;
}

static void under_event(struct bufferevent *u, short what, void *p);

static void under_read(struct bufferevent *u, void *p) {
  mesh_tls_conn *c = p;
  int more = 0, e = 0;
  evutil_socket_t fd = bufferevent_getfd(u);
  /* Only over a plain socket bufferevent (the documented contract): never
   * under another filter. */
  if ((c->state == ST_HANDSHAKE || c->state == ST_OPEN) && fd >= 0 &&
      !bufferevent_get_underlying(u)) {
    struct evbuffer *in = bufferevent_get_input(u);
    size_t have = evbuffer_get_length(in);
    if (have < MESH_TLS_BUFFER_MAX) more = mesh__sock_read_more(fd, in, MESH_TLS_BUFFER_MAX - have);
    e = errno;
  }
  c->u_read(u, c->u_arg); /* the records read, then the EOF or error after them */
  if (!more || c->state == ST_CLOSING) return;
  bufferevent_disable(u, EV_READ);
  EVUTIL_SET_SOCKET_ERROR(e);
  under_event(u, (short)(BEV_EVENT_READING | (more > 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR)), c);
}

static void under_write(struct bufferevent *u, void *p) {
  mesh_tls_conn *c = p;
  if (c->state == ST_CLOSING) {
    if (evbuffer_get_length(bufferevent_get_output(u)) == 0) mesh_tls_conn_free(c);
    return;
  }
  c->u_write(u, c->u_arg);
}

/* Events of the socket bufferevent, translated: its CONNECTED is not ours
 * (ours means the handshake is done), and an EOF or an error during the
 * handshake becomes a handshake failure with a reason. */
static void under_event(struct bufferevent *u, short what, void *p) {
  mesh_tls_conn *c = p;
  (void)u;
  if (c->state == ST_CLOSING) {
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) mesh_tls_conn_free(c);
    return;
  }
  if (c->state == ST_FAILED || c->state == ST_PEER_CLOSED || (what & BEV_EVENT_CONNECTED))
    return; /* already reported */
  if (what & BEV_EVENT_ERROR) {
    int e = EVUTIL_SOCKET_ERROR();
    conn_fail(c, MESH_ERR_IO, "socket error: %s", evutil_socket_error_to_string(e));
    return;
  }
  if (what & BEV_EVENT_EOF) {
    if (c->state == ST_HANDSHAKE) {
      /* An alert may have come with the FIN: let mbedTLS read it first. */
      bufferevent_flush(c->bev, EV_READ, BEV_FINISHED);
      if (c->state == ST_HANDSHAKE)
        conn_fail(c, MESH_ERR_CLOSED, "%s closed the connection during the TLS handshake", side(c));
      return;
    }
    bufferevent_flush(c->bev, EV_READ, BEV_FINISHED); /* what is still buffered */
    if (c->state != ST_OPEN) return;                  /* close_notify or an alert was in it */
    c->state = ST_PEER_CLOSED;
    bufferevent_trigger_event(c->bev, BEV_EVENT_EOF | BEV_EVENT_READING, 0);
    return;
  }
  c->u_event(u, what, c->u_arg); /* timeouts: the caller's own */
}

static void on_timer(evutil_socket_t fd, short what, void *p) {
  mesh_tls_conn *c = p;
  (void)fd;
  (void)what;
  if (c->state == ST_CLOSING) {
    mesh_tls_conn_free(c);
    return;
  }
  if (c->state == ST_HANDSHAKE)
    conn_fail(c, MESH_ERR_TIMEOUT, "TLS handshake did not complete within %u ms",
              (unsigned)c->cfg->handshake_timeout_ms);
}

static void conn_destroy(void *p) {
  mesh_tls_conn *c = p;
  if (c->timer) event_free(c->timer);
  if (c->ssl_ok) mbedtls_ssl_free(&c->ssl);
  if (c->own_conf_ok) mbedtls_ssl_config_free(&c->own_conf);
  mesh_identity_free(c->expected);
  mesh_identity_free(c->peer);
  mesh__free(c->ctx, c->session_key);
  mesh__free(c->ctx, c->alpn_buf);
  mesh_tls_config_unref(c->cfg);
  mesh__free(c->ctx, c);
}

static void arm_timer(mesh_tls_conn *c, uint32_t ms) {
  struct timeval tv = {(time_t)(ms / 1000u), (suseconds_t)(ms % 1000u) * 1000};
  event_add(c->timer, &tv);
}

/* The common tail: the first flight (the client's hello), then the filter
 * and the callbacks it needs. On failure the caller still owns underlying. */
static int conn_start(mesh_tls_conn *c, struct bufferevent *underlying, const char **why,
                      mesh_tls_conn **ret) {
  c->under = underlying;
  struct event_base *base = bufferevent_get_base(underlying);
  /* Always made: it also bounds a graceful close. */
  c->timer = evtimer_new(base, on_timer, c);
  if (!c->timer) goto nomem;
  mbedtls_ssl_set_bio(&c->ssl, c, bio_send, bio_recv, NULL);
  mbedtls_ssl_set_verify(&c->ssl, on_verify, c);
  /* The client speaks first: queue its hello on the socket now (the
   * first step only leaves the HelloRequest state, the next writes). */
  for (int rc = 0; c->client && rc == 0;) {
    rc = mbedtls_ssl_handshake_step(&c->ssl);
    if (rc && rc != MBEDTLS_ERR_SSL_WANT_READ && rc != MBEDTLS_ERR_SSL_WANT_WRITE) {
      if (why) *why = R_TLS_SETUP;
      conn_destroy(c);
      return mesh__tls_err(rc, MESH_ERR_TLS);
    }
  }
  c->bev = bufferevent_filter_new(underlying, tls_in, tls_out,
                                  BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS, conn_destroy, c);
  if (!c->bev) goto nomem;
  bufferevent_getcb(underlying, &c->u_read, &c->u_write, &c->u_event, &c->u_arg);
  bufferevent_setcb(underlying, under_read, under_write, under_event, c);
  bufferevent_setwatermark(underlying, EV_READ, 0, MESH_TLS_BUFFER_MAX);
  bufferevent_setwatermark(underlying, EV_WRITE, 0, MESH_TLS_BUFFER_MAX);
  bufferevent_enable(c->bev, EV_READ | EV_WRITE);
  if (c->cfg->handshake_timeout_ms) arm_timer(c, c->cfg->handshake_timeout_ms);
  *ret = c;
  return 0;
nomem:
  conn_destroy(c);
  return MESH_ERR_NOMEM;
}

static mesh_tls_conn *conn_new(mesh_tls_config *cfg) {
  mesh_tls_conn *c = mesh__calloc(cfg->ctx, 1, sizeof *c);
  if (!c) return NULL;
  c->ctx = cfg->ctx;
  c->cfg = mesh_tls_config_ref(cfg);
  mbedtls_ssl_init(&c->ssl);
  c->ssl_ok = 1;
  return c;
}

int mesh_tls_conn_client(mesh_tls_config *cfg, struct bufferevent *underlying,
                         const char *expected_identity, const char *alpn,
                         const char *session_key, const char **why, mesh_tls_conn **ret) {
  if (!cfg || !underlying || !expected_identity || !ret) return MESH_ERR_INVALID;
  mesh_tls_conn *c = conn_new(cfg);
  if (!c) return MESH_ERR_NOMEM;
  c->client = 1;
  int rc = mesh_identity_parse(cfg->ctx, expected_identity, NULL, why, &c->expected);
  if (rc) goto fail;
  const mbedtls_ssl_config *conf = &cfg->client;
  if (alpn) {
    rc = alpn_parse(cfg->ctx, alpn, &c->alpn_buf, c->alpn, why);
    if (rc) goto fail;
    rc = conf_setup(cfg, &c->own_conf, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_VERIFY_REQUIRED, c->alpn);
    if (rc) goto fail;
    c->own_conf_ok = 1;
    conf = &c->own_conf;
  }
  if (session_key) {
    c->session_key = mesh__sprintf(cfg->ctx, "%s|%s", session_key, mesh_identity_dns(c->expected));
    if (!c->session_key) {
      rc = MESH_ERR_NOMEM;
      goto fail;
    }
  }
  rc = mbedtls_ssl_setup(&c->ssl, conf);
  if (!rc) rc = mbedtls_ssl_set_hostname(&c->ssl, mesh_identity_dns(c->expected));
  if (rc) {
    rc = rc == MBEDTLS_ERR_SSL_ALLOC_FAILED ? MESH_ERR_NOMEM : mesh__tls_err(rc, MESH_ERR_TLS);
    goto fail;
  }
  store_load(cfg, c->session_key, &c->ssl);
  return conn_start(c, underlying, why, ret);
fail:
  conn_destroy(c);
  return rc;
}

int mesh_tls_conn_server(mesh_tls_config *cfg, struct bufferevent *underlying, int client_auth,
                         mesh_tls_conn **ret) {
  if (!cfg || !underlying || !ret ||
      (client_auth != MESH_TLS_CLIENT_AUTH_REQUIRED && client_auth != MESH_TLS_CLIENT_AUTH_OPTIONAL) ||
      !cfg->chain)
    return MESH_ERR_INVALID;
  mesh_tls_conn *c = conn_new(cfg);
  if (!c) return MESH_ERR_NOMEM;
  c->optional = client_auth == MESH_TLS_CLIENT_AUTH_OPTIONAL;
  int rc = mbedtls_ssl_setup(&c->ssl, c->optional ? &cfg->server_optional : &cfg->server_required);
  if (rc) {
    conn_destroy(c);
    return rc == MBEDTLS_ERR_SSL_ALLOC_FAILED ? MESH_ERR_NOMEM : mesh__tls_err(rc, MESH_ERR_TLS);
  }
  return conn_start(c, underlying, NULL, ret);
}

static struct bufferevent *socket_bev(struct event_base *base, int fd) {
  struct bufferevent *u = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
  if (!u) close(fd);
  return u;
}

int mesh_tls_conn_client_fd(mesh_tls_config *cfg, struct event_base *base, int fd,
                            const char *expected_identity, const char *alpn,
                            const char *session_key, const char **why, mesh_tls_conn **ret) {
  if (!cfg || !base || fd < 0 || !expected_identity || !ret) {
    if (fd >= 0) close(fd);
    return MESH_ERR_INVALID;
  }
  struct bufferevent *u = socket_bev(base, fd);
  if (!u) return MESH_ERR_NOMEM;
  int rc = mesh_tls_conn_client(cfg, u, expected_identity, alpn, session_key, why, ret);
  if (rc) bufferevent_free(u);
  return rc;
}

int mesh_tls_conn_server_fd(mesh_tls_config *cfg, struct event_base *base, int fd,
                            int client_auth, mesh_tls_conn **ret) {
  if (!cfg || !base || fd < 0 || !ret) {
    if (fd >= 0) close(fd);
    return MESH_ERR_INVALID;
  }
  struct bufferevent *u = socket_bev(base, fd);
  if (!u) return MESH_ERR_NOMEM;
  int rc = mesh_tls_conn_server(cfg, u, client_auth, ret);
  if (rc) bufferevent_free(u);
  return rc;
}

struct bufferevent *mesh_tls_conn_bev(const mesh_tls_conn *c) { return c ? c->bev : NULL; }

int mesh_tls_conn_established(const mesh_tls_conn *c) {
  return c && (c->state == ST_OPEN || c->state == ST_PEER_CLOSED);
}

int mesh_tls_conn_error(const mesh_tls_conn *c, const char **why) {
  if (!c) return MESH_ERR_INVALID;
  if (why) *why = c->state == ST_FAILED ? c->why : "";
  return c->state == ST_FAILED ? c->err : 0;
}

const char *mesh_tls_conn_alpn(const mesh_tls_conn *c) {
  return mesh_tls_conn_established(c) ? mbedtls_ssl_get_alpn_protocol(&c->ssl) : NULL;
}

const mesh_identity *mesh_tls_conn_peer(const mesh_tls_conn *c) {
  return mesh_tls_conn_established(c) ? c->peer : NULL;
}

const char *mesh_tls_conn_peer_identity(const mesh_tls_conn *c) {
  const mesh_identity *id = mesh_tls_conn_peer(c);
  return id ? mesh_identity_dns(id) : NULL;
}

int mesh_tls_conn_resumed(const mesh_tls_conn *c) {
  return mesh_tls_conn_established(c) && !c->full_handshake;
}

const char *mesh_tls_conn_cipher(const mesh_tls_conn *c) {
  return mesh_tls_conn_established(c) ? mbedtls_ssl_get_ciphersuite(&c->ssl) : NULL;
}

int mesh_tls_conn_peer_certs(const mesh_tls_conn *c, mesh_certs **ret) {
  if (!c || !ret) return MESH_ERR_INVALID;
  const mbedtls_x509_crt *crt = mesh_tls_conn_established(c) ? mbedtls_ssl_get_peer_cert(&c->ssl)
                                                              : NULL;
  if (!crt) return MESH_ERR_NOT_FOUND;
  return mesh_certs_parse(c->ctx, (const char *)crt->raw.p, crt->raw.len, NULL, ret);
}

const mesh_tls_config *mesh_tls_conn_config(const mesh_tls_conn *c) { return c ? c->cfg : NULL; }

void mesh_tls_conn_close(mesh_tls_conn *c) {
  if (!c) return;
  bufferevent_setcb(c->bev, NULL, NULL, NULL, NULL);
  if (c->state == ST_OPEN || c->state == ST_PEER_CLOSED) {
    /* BEV_FLUSH encrypts everything still queued, past the watermarks. */
    bufferevent_flush(c->bev, EV_WRITE, BEV_FLUSH);
    (void)mbedtls_ssl_close_notify(&c->ssl);
  }
  c->state = ST_CLOSING;
  if (evbuffer_get_length(bufferevent_get_output(c->under)) == 0 ||
      bufferevent_getfd(c->under) < 0) {
    mesh_tls_conn_free(c);
    return;
  }
  bufferevent_disable(c->under, EV_READ);
  bufferevent_enable(c->under, EV_WRITE);
  event_del(c->timer);
  arm_timer(c, c->cfg->handshake_timeout_ms ? c->cfg->handshake_timeout_ms : CLOSE_TIMEOUT_MS);
}

void mesh_tls_conn_free(mesh_tls_conn *c) {
  if (!c) return;
  /* c itself lives until libevent finalizes the bufferevent; nothing may
   * call into it meanwhile. */
  event_del(c->timer);
  c->state = ST_CLOSING;
  bufferevent_setcb(c->under, NULL, NULL, NULL, NULL);
  bufferevent_free(c->bev);
}

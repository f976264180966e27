/* libmesh proxy endpoints: the static endpoints file (services -> endpoints with identities), parsed and validated. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <mesh/error.h>
#include <mesh/identity.h>
#include <mesh/proxy.h>

#include "ctx_internal.h"
#include "diag_internal.h"
#include "names_internal.h"
#include "proxy_internal.h"

#define KEY_MAX 300u /* a DNS name (253) + ':' + port, with room for [v6] */

typedef struct {
  char *addr, *identity;
  uint32_t weight;
  uint16_t port; /* the transport header's port; 0: the service key's */
  struct sockaddr_storage ss;
  socklen_t sslen;
} endpoint;

typedef struct {
  char *key;
  endpoint *eps;
  size_t n;
} service;

struct mesh_proxy_endpoints {
  mesh_ctx *ctx;
  long refs;
  service *svcs;
  size_t n;
};

/* ---- Addresses ----------------------------------------------------------- */

static int parse_port(const char *s, int any_port, uint16_t *ret) {
  if (!*s || strlen(s) > 5) return -1;
  unsigned v = 0;
  for (const char *p = s; *p; p++) {
    if (*p < '0' || *p > '9') return -1;
    v = v * 10u + (unsigned)(*p - '0');
  }
  if (v > 65535u || (v == 0 && !any_port) || (s[0] == '0' && s[1])) return -1;
  *ret = (uint16_t)v;
  return 0;
}

int mesh__proxy_addr_parse(const char *s, int any_port, struct sockaddr_storage *ss,
                           socklen_t *len, const char **why) {
  char host[64];
  const char *colon;
  if (!s) goto bad;
  memset(ss, 0, sizeof *ss);
  if (s[0] == '[') {
    const char *end = strchr(s, ']');
    if (!end || end[1] != ':' || (size_t)(end - s - 1) >= sizeof host) goto bad;
    memcpy(host, s + 1, (size_t)(end - s - 1));
    host[end - s - 1] = '\0';
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    uint16_t port;
    if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1 || parse_port(end + 2, any_port, &port))
      goto bad;
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    *len = sizeof *sin6;
    return 0;
  }
  colon = strrchr(s, ':');
  if (!colon || (size_t)(colon - s) >= sizeof host) goto bad;
  memcpy(host, s, (size_t)(colon - s));
  host[colon - s] = '\0';
  struct sockaddr_in *sin = (struct sockaddr_in *)ss;
  uint16_t port;
  if (inet_pton(AF_INET, host, &sin->sin_addr) != 1 || parse_port(colon + 1, any_port, &port))
    goto bad;
  sin->sin_family = AF_INET;
  sin->sin_port = htons(port);
  *len = sizeof *sin;
  return 0;
bad:
  if (why) *why = "not a numeric IP:port or [IPv6]:port address";
  return MESH_ERR_PARSE;
}

void mesh__proxy_addr_format(const struct sockaddr *sa, char *buf, size_t cap) {
  char host[INET6_ADDRSTRLEN];
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
    inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
    snprintf(buf, cap, "[%s]:%u", host, (unsigned)ntohs(s6->sin6_port));
  } else if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
    inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
    snprintf(buf, cap, "%s:%u", host, (unsigned)ntohs(s4->sin_port));
  } else {
    snprintf(buf, cap, "unknown");
  }
}

/* An authority key, canonical: IP addresses as mesh__proxy_addr_format
 * writes them (so that an original destination finds them), DNS names
 * lowercased. 0 or -1. */
static int authority_canon(const char *s, char *out, size_t cap) {
  struct sockaddr_storage ss;
  socklen_t sl;
  if (mesh__proxy_addr_parse(s, 0, &ss, &sl, NULL) == 0) {
    mesh__proxy_addr_format((struct sockaddr *)&ss, out, cap);
    return 0;
  }
  size_t n = strlen(s);
  const char *colon = strrchr(s, ':');
  if (n >= cap || !colon || colon == s) return -1;
  uint16_t port;
  if (parse_port(colon + 1, 0, &port)) return -1;
  for (size_t i = 0; i < n; i++) out[i] = (char)tolower((unsigned char)s[i]);
  out[n] = '\0';
  return mesh__dns_name_ok(out, (size_t)(colon - s)) ? 0 : -1;
}

/* ---- Parsing --------------------------------------------------------------- */

typedef struct {
  mesh_ctx *ctx;
  mesh_diags *diags;
  const char *file;
  int errors, nomem;
} parser;

static void err(parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void err(parser *p, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  if (mesh__diag_vadd(p->diags, MESH_DIAG_ERROR, p->file, 0, 0, fmt, ap)) p->nomem = 1;
  va_end(ap);
  p->errors++;
}

static void endpoints_free(mesh_ctx *ctx, service *svcs, size_t n) {
  for (size_t i = 0; i < n; i++) {
    for (size_t j = 0; j < svcs[i].n; j++) {
      mesh__free(ctx, svcs[i].eps[j].addr);
      mesh__free(ctx, svcs[i].eps[j].identity);
    }
    mesh__free(ctx, svcs[i].eps);
    mesh__free(ctx, svcs[i].key);
  }
  mesh__free(ctx, svcs);
}

static int parse_endpoint(parser *p, const char *key, size_t idx, json_t *j, endpoint *ep) {
  if (!json_is_object(j)) {
    err(p, "services[\"%s\"].endpoints[%zu]: not an object", key, idx);
    return -1;
  }
  const char *name;
  json_t *v;
  int bad = 0;
  json_object_foreach(j, name, v) {
    if (strcmp(name, "addr") && strcmp(name, "identity") && strcmp(name, "weight") &&
        strcmp(name, "port")) {
      err(p, "services[\"%s\"].endpoints[%zu]: unknown field \"%s\" (addr, identity, port, weight)",
          key, idx, name);
      bad = 1;
    }
  }
  const char *why = NULL;
  json_t *addr = json_object_get(j, "addr");
  if (!json_is_string(addr)) {
    err(p, "services[\"%s\"].endpoints[%zu].addr: required, a string \"IP:port\"", key, idx);
    bad = 1;
  } else if (mesh__proxy_addr_parse(json_string_value(addr), 0, &ep->ss, &ep->sslen, &why)) {
    err(p, "services[\"%s\"].endpoints[%zu].addr: \"%s\": %s", key, idx,
        json_string_value(addr), why);
    bad = 1;
  }
  json_t *id = json_object_get(j, "identity");
  mesh_identity *ident = NULL;
  if (id && !json_is_null(id)) {
    int rc = json_is_string(id) ? mesh_identity_parse(p->ctx, json_string_value(id), NULL, &why,
                                                      &ident)
                                : MESH_ERR_PARSE;
    if (rc == MESH_ERR_NOMEM) {
      p->nomem = 1;
      return -1;
    }
    if (rc) {
      err(p, "services[\"%s\"].endpoints[%zu].identity: not a workload identity%s%s", key, idx,
          why ? ": " : "", why ? why : "");
      bad = 1;
    }
  }
  json_t *w = json_object_get(j, "weight");
  ep->weight = 1;
  if (w) {
    if (!json_is_integer(w) || json_integer_value(w) < 1 ||
        json_integer_value(w) > (json_int_t)MESH_PROXY_WEIGHT_MAX) {
      err(p, "services[\"%s\"].endpoints[%zu].weight: an integer from 1 to %u", key, idx,
          MESH_PROXY_WEIGHT_MAX);
      bad = 1;
    } else {
      ep->weight = (uint32_t)json_integer_value(w);
    }
  }
  json_t *port = json_object_get(j, "port");
  if (port) {
    if (!json_is_integer(port) || json_integer_value(port) < 1 ||
        json_integer_value(port) > 65535) {
      err(p, "services[\"%s\"].endpoints[%zu].port: an integer from 1 to 65535", key, idx);
      bad = 1;
    } else if (!ident && !bad) {
      /* Only a peer proxy reads a transport header. */
      err(p, "services[\"%s\"].endpoints[%zu].port: needs an identity (a meshed endpoint)", key,
          idx);
      bad = 1;
    } else {
      ep->port = (uint16_t)json_integer_value(port);
    }
  }
  if (bad) {
    mesh_identity_free(ident);
    return -1;
  }
  char canon[64];
  mesh__proxy_addr_format((struct sockaddr *)&ep->ss, canon, sizeof canon);
  ep->addr = mesh__strdup(p->ctx, canon);
  ep->identity = ident ? mesh__strdup(p->ctx, mesh_identity_dns(ident)) : NULL;
  mesh_identity_free(ident);
  if (!ep->addr || (ident && !ep->identity)) {
    p->nomem = 1;
    return -1;
  }
  return 0;
}

static int parse_service(parser *p, const char *rawkey, json_t *j, service *s) {
  char key[KEY_MAX];
  if (authority_canon(rawkey, key, sizeof key)) {
    err(p, "services[\"%s\"]: not an authority host:port (a DNS name or an IP address, port 1-65535)",
        rawkey);
    return -1;
  }
  if (!json_is_object(j)) {
    err(p, "services[\"%s\"]: not an object {\"endpoints\": [...]}", rawkey);
    return -1;
  }
  const char *name;
  json_t *v;
  int bad = 0;
  json_object_foreach(j, name, v) {
    if (strcmp(name, "endpoints")) {
      err(p, "services[\"%s\"]: unknown field \"%s\" (endpoints)", rawkey, name);
      bad = 1;
    }
  }
  json_t *eps = json_object_get(j, "endpoints");
  if (!json_is_array(eps)) {
    err(p, "services[\"%s\"].endpoints: required, an array", rawkey);
    return -1;
  }
  size_t n = json_array_size(eps);
  if (n > MESH_PROXY_SERVICE_ENDPOINTS_MAX) {
    err(p, "services[\"%s\"].endpoints: %zu endpoints, over the limit of %u", rawkey, n,
        MESH_PROXY_SERVICE_ENDPOINTS_MAX);
    return -1;
  }
  if (bad) return -1;
  s->key = mesh__strdup(p->ctx, key);
  if (!s->key) {
    p->nomem = 1;
    return -1;
  }
  s->eps = n ? mesh__calloc(p->ctx, n, sizeof *s->eps) : NULL;
  if (n && !s->eps) {
    p->nomem = 1;
    return -1;
  }
  for (size_t i = 0; i < n; i++) {
    if (parse_endpoint(p, rawkey, i, json_array_get(eps, i), &s->eps[s->n]) == 0) {
      for (size_t k = 0; k < s->n; k++) {
        if (strcmp(s->eps[k].addr, s->eps[s->n].addr) == 0) {
          err(p, "services[\"%s\"].endpoints[%zu]: address %s is listed twice", rawkey, i,
              s->eps[k].addr);
          bad = 1;
        }
      }
      s->n++; /* counted even when a duplicate, so that it is freed */
    } else {
      endpoint *ep = &s->eps[s->n];
      mesh__free(p->ctx, ep->addr);
      mesh__free(p->ctx, ep->identity);
      ep->addr = ep->identity = NULL;
      bad = 1;
    }
    if (p->nomem) return -1;
  }
  return bad ? -1 : 0;
}

static int svc_cmp(const void *a, const void *b) {
  return strcmp(((const service *)a)->key, ((const service *)b)->key);
}

int mesh_proxy_endpoints_parse(mesh_ctx *ctx, const char *buf, size_t len, const char *file,
                               mesh_diags *diags, mesh_proxy_endpoints **ret) {
  if (!ctx || !buf || !ret) return MESH_ERR_INVALID;
  parser p = {ctx, diags, file ? file : "<endpoints>", 0, 0};
  if (len > MESH_PROXY_ENDPOINTS_MAX_BYTES) {
    err(&p, "the file is larger than %u bytes", MESH_PROXY_ENDPOINTS_MAX_BYTES);
    return p.nomem ? MESH_ERR_NOMEM : MESH_ERR_LIMIT;
  }
  json_error_t je;
  json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
  if (!root) {
    if (json_error_code(&je) == json_error_out_of_memory) return MESH_ERR_NOMEM;
    p.errors++;
    if (mesh__diag_add(diags, MESH_DIAG_ERROR, p.file, (uint32_t)(je.line > 0 ? je.line : 0),
                       (uint32_t)(je.column > 0 ? je.column : 0), "invalid JSON: %s", je.text))
      return MESH_ERR_NOMEM;
    return MESH_ERR_PARSE;
  }
  int rc = MESH_ERR_PARSE;
  service *svcs = NULL;
  size_t n = 0;
  json_t *services = json_is_object(root) ? json_object_get(root, "services") : NULL;
  if (!json_is_object(root)) {
    err(&p, "the top level is not an object {\"services\": {...}}");
    goto done;
  }
  const char *name;
  json_t *v;
  json_object_foreach(root, name, v) {
    if (strcmp(name, "services")) err(&p, "unknown top-level field \"%s\" (services)", name);
  }
  if (!json_is_object(services)) {
    err(&p, "\"services\": required, an object keyed by authority");
    goto done;
  }
  size_t count = json_object_size(services);
  if (count > MESH_PROXY_SERVICES_MAX) {
    err(&p, "%zu services, over the limit of %u", count, MESH_PROXY_SERVICES_MAX);
    rc = MESH_ERR_LIMIT;
    goto done;
  }
  svcs = count ? mesh__calloc(ctx, count, sizeof *svcs) : NULL;
  if (count && !svcs) {
    rc = MESH_ERR_NOMEM;
    goto done;
  }
  json_object_foreach(services, name, v) {
    service *s = &svcs[n];
    (void)parse_service(&p, name, v, s); /* errors are counted in p */
    if (s->key) n++;                     /* it owns allocations even when invalid */
    if (p.nomem) {
      rc = MESH_ERR_NOMEM;
      goto done;
    }
  }
  if (n > 1) {
    qsort(svcs, n, sizeof *svcs, svc_cmp);
    for (size_t i = 1; i < n; i++)
      if (strcmp(svcs[i - 1].key, svcs[i].key) == 0)
        err(&p, "services: \"%s\" is listed twice (keys are compared lowercased and canonical)",
            svcs[i].key);
  }
  if (p.nomem) {
    rc = MESH_ERR_NOMEM;
    goto done;
  }
  if (p.errors) goto done;
  mesh_proxy_endpoints *e = mesh__calloc(ctx, 1, sizeof *e);
  if (!e) {
    rc = MESH_ERR_NOMEM;
    goto done;
  }
  e->ctx = ctx;
  e->refs = 1;
  e->svcs = svcs;
  e->n = n;
  svcs = NULL;
  n = 0;
  *ret = e;
  rc = 0;
done:
  if (rc && p.nomem) rc = MESH_ERR_NOMEM;
  endpoints_free(ctx, svcs, n);
  json_decref(root);
  return rc;
}

int mesh_proxy_endpoints_load(mesh_ctx *ctx, const char *path, mesh_diags *diags,
                              mesh_proxy_endpoints **ret) {
  if (!ctx || !path || !ret) return MESH_ERR_INVALID;
  FILE *f = fopen(path, "rb");
  if (!f) {
    int e = errno;
    if (mesh__diag_add(diags, MESH_DIAG_ERROR, path, 0, 0, "cannot open: %s", strerror(e)))
      return MESH_ERR_NOMEM;
    return MESH_ERR_IO;
  }
  size_t cap = MESH_PROXY_ENDPOINTS_MAX_BYTES + 1, n = 0;
  char *buf = mesh__malloc(ctx, 65536);
  size_t have = buf ? 65536 : 0;
  int rc = buf ? 0 : MESH_ERR_NOMEM;
  while (!rc) {
    if (n == have) {
      size_t want = have * 2 > cap ? cap : have * 2;
      if (want == have) break; /* at the bound: parse reports the size */
      char *nb = mesh__realloc(ctx, buf, want);
      if (!nb) {
        rc = MESH_ERR_NOMEM;
        break;
      }
      buf = nb;
      have = want;
    }
    size_t r = fread(buf + n, 1, have - n, f);
    n += r;
    if (r == 0) {
      if (ferror(f)) {
        rc = mesh__diag_add(diags, MESH_DIAG_ERROR, path, 0, 0, "read failed") ? MESH_ERR_NOMEM
                                                                                : MESH_ERR_IO;
      }
      break;
    }
  }
  fclose(f);
  if (!rc) rc = mesh_proxy_endpoints_parse(ctx, buf, n, path, diags, ret);
  mesh__free(ctx, buf);
  return rc;
}

mesh_proxy_endpoints *mesh_proxy_endpoints_ref(mesh_proxy_endpoints *e) {
  if (e) e->refs++;
  return e;
}

void mesh_proxy_endpoints_unref(mesh_proxy_endpoints *e) {
  if (!e || --e->refs > 0) return;
  mesh_ctx *ctx = e->ctx;
  endpoints_free(ctx, e->svcs, e->n);
  mesh__free(ctx, e);
}

size_t mesh_proxy_endpoints_service_count(const mesh_proxy_endpoints *e) { return e ? e->n : 0; }

const char *mesh_proxy_endpoints_service(const mesh_proxy_endpoints *e, size_t i) {
  return e && i < e->n ? e->svcs[i].key : NULL;
}

int mesh_proxy_endpoints_find(const mesh_proxy_endpoints *e, const char *key, size_t *ret_index) {
  if (!e || !key || !ret_index) return MESH_ERR_INVALID;
  char canon[KEY_MAX];
  if (authority_canon(key, canon, sizeof canon)) return MESH_ERR_NOT_FOUND;
  size_t lo = 0, hi = e->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(canon, e->svcs[mid].key);
    if (c == 0) {
      *ret_index = mid;
      return 0;
    }
    if (c < 0) hi = mid;
    else lo = mid + 1;
  }
  return MESH_ERR_NOT_FOUND;
}

size_t mesh_proxy_endpoints_count(const mesh_proxy_endpoints *e, size_t svc) {
  return e && svc < e->n ? e->svcs[svc].n : 0;
}

static const endpoint *ep_at(const mesh_proxy_endpoints *e, size_t svc, size_t i) {
  return e && svc < e->n && i < e->svcs[svc].n ? &e->svcs[svc].eps[i] : NULL;
}

const char *mesh_proxy_endpoints_addr(const mesh_proxy_endpoints *e, size_t svc, size_t i) {
  const endpoint *ep = ep_at(e, svc, i);
  return ep ? ep->addr : NULL;
}

const char *mesh_proxy_endpoints_identity(const mesh_proxy_endpoints *e, size_t svc, size_t i) {
  const endpoint *ep = ep_at(e, svc, i);
  return ep ? ep->identity : NULL;
}

uint32_t mesh_proxy_endpoints_weight(const mesh_proxy_endpoints *e, size_t svc, size_t i) {
  const endpoint *ep = ep_at(e, svc, i);
  return ep ? ep->weight : 0;
}

uint16_t mesh_proxy_endpoints_port(const mesh_proxy_endpoints *e, size_t svc, size_t i) {
  const endpoint *ep = ep_at(e, svc, i);
  return ep ? ep->port : 0;
}

const struct sockaddr *mesh__proxy_endpoints_sockaddr(const mesh_proxy_endpoints *e, size_t svc,
                                                      size_t i, socklen_t *len) {
  const endpoint *ep = ep_at(e, svc, i);
  if (!ep) return NULL;
  *len = ep->sslen;
  return (const struct sockaddr *)&ep->ss;
}

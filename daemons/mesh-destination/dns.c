/* mesh-destination's DNS fallback (dns.h): c-ares sockets and timeouts driven by the daemon's libevent loop. */
#include "dns.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <ares.h>
#include <event2/event.h>
#include <jansson.h>

#include <mesh/mesh.h>

/* A try waits this long for a server; a query gives up after TRIES rounds
 * over the servers. c-ares' defaults (5 s, 4 tries) would leave a stream
 * without its first answer for over a minute when a server is down. */
#define DNS_TIMEOUT_MS 2000
#define DNS_TRIES 2

struct dst_dns_answer {
  size_t refs;
  bool found; /* false: NXDOMAIN or no A/AAAA record */
  size_t n;
  char ip[][INET6_ADDRSTRLEN]; /* sorted (strcmp), distinct */
};

typedef struct dns_name dns_name;

struct dns_name {
  dst_dns *r;
  char host[256]; /* lowercase, no trailing dot */
  dst_dns_answer *answer; /* NULL until the first answer */
  dst_dns_watch *watches;
  size_t nwatches;
  bool queued, resolving;
  bool failing;      /* the last attempt failed (said once in the log) */
  uint32_t retry_ms; /* the next backoff after a temporary failure */
  uint64_t used;     /* when a watch last came or went: the least recent idle name goes first */
  /* The next resolution (TTL or backoff) while watched; for an idle name,
   * the end of its answer's life, when it is dropped. */
  struct event *timer;
  dns_name *prev, *next;
  dns_name *qnext;
};

struct dst_dns_watch {
  dns_name *name;
  dst_dns_change_fn fn;
  void *ud;
  dst_dns_watch *prev, *next;
};

/* A socket c-ares asked to be watched, and its event. */
typedef struct dns_sock {
  ares_socket_t fd;
  short what;
  struct event *ev;
  struct dns_sock *next;
} dns_sock;

struct dst_dns {
  struct event_base *base;
  ares_channel ch;
  bool ch_ok;
  struct event *ares_timer; /* c-ares' next timeout */
  struct event *pump;       /* starts queued names from the loop, never from a caller's stack */
  dns_sock *socks;
  dns_name *names;
  size_t nnames, nresolving, max_names, max_resolving;
  dns_name *qhead, *qtail;
  char cd[256];
  char **nss; /* the store's namespaces, sorted */
  size_t nns;
  uint64_t tick;
  dst_dns_log_fn log;
  mesh_metric_series *m_names, *m_found, *m_none, *m_failed;
};

static void dlog(const dst_dns *r, const char *level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void dlog(const dst_dns *r, const char *level, const char *fmt, ...) {
  if (!r->log) return;
  char line[600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  r->log(level, line);
}

/* ---- Servers ------------------------------------------------------------- */

/* One "IP[:PORT]" ("[v6]:port", "[v6]" or a bare v6) into out. */
static bool parse_server(const char *s, size_t len, struct ares_addr_port_node *out, char *err,
                         size_t esize) {
  char text[80], host[80];
  const char *port = NULL;
  if (len == 0 || len >= sizeof text) {
    snprintf(err, esize, "'%.*s': expected IP[:PORT]", (int)(len > 60 ? 60 : len), s);
    return false;
  }
  memcpy(text, s, len);
  text[len] = '\0';
  memset(out, 0, sizeof *out);
  size_t hl;
  if (text[0] == '[') {
    char *close = strchr(text, ']');
    if (!close || (close[1] && close[1] != ':')) goto bad;
    hl = (size_t)(close - text - 1);
    if (hl >= sizeof host) goto bad;
    memcpy(host, text + 1, hl);
    host[hl] = '\0';
    if (close[1]) port = close + 2;
  } else {
    char *colon = strchr(text, ':');
    if (colon && !strchr(colon + 1, ':')) { /* one colon: v4:port */
      *colon = '\0';
      port = colon + 1;
    }
    snprintf(host, sizeof host, "%s", text);
  }
  if (inet_pton(AF_INET, host, &out->addr.addr4) == 1) out->family = AF_INET;
  else if (inet_pton(AF_INET6, host, &out->addr.addr6) == 1) out->family = AF_INET6;
  else goto bad;
  out->udp_port = out->tcp_port = 53;
  if (port) {
    char *end;
    long p = strtol(port, &end, 10);
    if (!*port || *end || p < 1 || p > 65535) goto bad;
    out->udp_port = out->tcp_port = (int)p;
  }
  return true;
bad:
  snprintf(err, esize, "'%s': expected IP[:PORT] (an IPv6 address with a port as [v6]:port)", text);
  return false;
}

/* The servers of a comma list into nodes (linked); the count, or 0 after filling err. */
static size_t parse_servers(const char *list, struct ares_addr_port_node *nodes, char *err,
                            size_t esize) {
  size_t n = 0;
  for (const char *p = list;; p++) {
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    if (n == DST_DNS_SERVERS_MAX) {
      snprintf(err, esize, "more than %u DNS servers", DST_DNS_SERVERS_MAX);
      return 0;
    }
    if (!parse_server(p, len, &nodes[n], err, esize)) return 0;
    if (n) nodes[n - 1].next = &nodes[n];
    n++;
    if (!comma) return n;
    p = comma;
  }
}

bool dst_dns_servers_valid(const char *servers, char *err, size_t esize) {
  struct ares_addr_port_node nodes[DST_DNS_SERVERS_MAX];
  return servers && parse_servers(servers, nodes, err, esize) > 0;
}

/* ---- Answers --------------------------------------------------------------- */

dst_dns_answer *dst_dns_answer_ref(const dst_dns_answer *a) {
  dst_dns_answer *m = (dst_dns_answer *)a;
  if (m) m->refs++;
  return m;
}

void dst_dns_answer_unref(dst_dns_answer *a) {
  if (a && --a->refs == 0) free(a);
}

static int cmp_ip(const void *a, const void *b) { return strcmp(a, b); }

static bool has_ip(const dst_dns_answer *a, const char *ip) {
  return a && a->found && bsearch(ip, a->ip, a->n, sizeof a->ip[0], cmp_ip);
}

static bool same_answer(const dst_dns_answer *a, const dst_dns_answer *b) {
  if (!a || !b || a->found != b->found || a->n != b->n) return false;
  for (size_t i = 0; i < a->n; i++)
    if (strcmp(a->ip[i], b->ip[i])) return false;
  return true;
}

/* The addresses of res (distinct, sorted, at most DST_DNS_MAX_ADDRS) and
 * their least TTL in seconds; NULL on allocation failure. */
static dst_dns_answer *answer_from(const struct ares_addrinfo *res, int *ttl) {
  size_t count = 0;
  for (const struct ares_addrinfo_node *n = res ? res->nodes : NULL; n; n = n->ai_next) count++;
  char(*all)[INET6_ADDRSTRLEN] = count ? calloc(count, sizeof *all) : NULL;
  if (count && !all) return NULL;
  size_t k = 0;
  *ttl = -1;
  for (const struct ares_addrinfo_node *n = res ? res->nodes : NULL; n; n = n->ai_next) {
    const void *bin =
        n->ai_family == AF_INET    ? (const void *)&((struct sockaddr_in *)n->ai_addr)->sin_addr
        : n->ai_family == AF_INET6 ? (const void *)&((struct sockaddr_in6 *)n->ai_addr)->sin6_addr
                                   : NULL;
    if (!bin || !inet_ntop(n->ai_family, bin, all[k], sizeof all[k])) continue;
    k++;
    if (*ttl < 0 || n->ai_ttl < *ttl) *ttl = n->ai_ttl < 0 ? 0 : n->ai_ttl;
  }
  if (k) qsort(all, k, sizeof *all, cmp_ip);
  size_t distinct = 0;
  for (size_t i = 0; i < k; i++)
    if (!distinct || strcmp(all[i], all[distinct - 1]))
      memmove(all[distinct++], all[i], sizeof all[i]);
  if (distinct > DST_DNS_MAX_ADDRS) distinct = DST_DNS_MAX_ADDRS;
  dst_dns_answer *a = malloc(sizeof *a + distinct * sizeof a->ip[0]);
  if (a) {
    a->refs = 1;
    a->found = distinct > 0;
    a->n = distinct;
    if (distinct) memcpy(a->ip, all, distinct * sizeof a->ip[0]);
  }
  free(all);
  return a;
}

/* ---- Messages -------------------------------------------------------------- */

/* Appends j as one line to *buf (j is consumed). */
static int append(char **buf, size_t *len, json_t *j) {
  char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
  json_decref(j);
  if (!text) return MESH_ERR_NOMEM;
  size_t tl = strlen(text);
  char *nb = realloc(*buf, *len + tl + 2);
  if (!nb) {
    free(text);
    return MESH_ERR_NOMEM;
  }
  memcpy(nb + *len, text, tl);
  *len += tl;
  nb[(*len)++] = '\n';
  nb[*len] = '\0';
  *buf = nb;
  free(text);
  return 0;
}

static void format_addr(char *out, size_t size, const char *ip, uint16_t port) {
  snprintf(out, size, strchr(ip, ':') ? "[%s]:%u" : "%s:%u", ip, (unsigned)port);
}

/* {"remove"|"add": {"addrs": [...]}} with the addresses of a that other lacks. */
static json_t *set_json(const dst_dns_answer *a, const dst_dns_answer *other, uint16_t port,
                        bool add) {
  json_t *addrs = json_array();
  char addr[INET6_ADDRSTRLEN + 8];
  for (size_t i = 0; addrs && i < a->n; i++) {
    if (has_ip(other, a->ip[i])) continue;
    format_addr(addr, sizeof addr, a->ip[i], port);
    json_t *e =
        add ? json_pack("{s:s, s:i, s:i}", "addr", addr, "weight", 1, "target_port", (int)port)
            : json_pack("{s:s}", "addr", addr);
    if (json_array_append_new(addrs, e) != 0) {
      json_decref(addrs);
      addrs = NULL;
    }
  }
  if (!addrs || json_array_size(addrs) == 0) {
    json_decref(addrs);
    return NULL;
  }
  return json_pack("{s:{s:o}}", add ? "add" : "remove", "addrs", addrs);
}

int dst_dns_messages(const dst_dns_answer *old, const dst_dns_answer *cur, uint16_t port,
                     char **ret) {
  char *out = NULL;
  size_t len = 0;
  int rc = 0;
  json_t *j;
  bool had = old && old->found;
  if (!cur) {
    if (had && (j = set_json(old, NULL, port, false))) rc = append(&out, &len, j);
  } else if (!cur->found) {
    /* Said once: a client that was told so already hears nothing. */
    if (!old || old->found)
      rc = append(&out, &len, json_pack("{s:{s:b}}", "no_endpoints", "exists", 0));
  } else {
    if (had && (j = set_json(old, cur, port, false))) rc = append(&out, &len, j);
    if (!rc && (j = set_json(cur, had ? old : NULL, port, true))) rc = append(&out, &len, j);
  }
  if (rc < 0) {
    free(out);
    return rc;
  }
  *ret = out;
  return 0;
}

/* ---- The loop ---------------------------------------------------------------- */

static void arm_ares_timer(dst_dns *r) {
  struct timeval tv, *t = ares_timeout(r->ch, NULL, &tv);
  if (t) evtimer_add(r->ares_timer, t);
  else evtimer_del(r->ares_timer);
}

static void on_ares_timer(evutil_socket_t fd, short what, void *ud) {
  dst_dns *r = ud;
  ares_process_fd(r->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
  arm_ares_timer(r);
}

static void on_sock(evutil_socket_t fd, short what, void *ud) {
  dst_dns *r = ud;
  ares_process_fd(r->ch, (what & EV_READ) ? fd : ARES_SOCKET_BAD,
                  (what & EV_WRITE) ? fd : ARES_SOCKET_BAD);
  arm_ares_timer(r);
}

/* c-ares opens, changes and closes its sockets through this. When an event
 * cannot be made, the query ends by its timeout instead (ares_timer). */
static void on_sock_state(void *data, ares_socket_t fd, int readable, int writable) {
  dst_dns *r = data;
  dns_sock **pp = &r->socks;
  while (*pp && (*pp)->fd != fd) pp = &(*pp)->next;
  dns_sock *s = *pp;
  if (!readable && !writable) {
    if (s) {
      *pp = s->next;
      event_free(s->ev);
      free(s);
    }
    return;
  }
  short what = (short)(EV_PERSIST | (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0));
  if (s && s->what == what) return;
  if (!s) {
    if (!(s = calloc(1, sizeof *s))) return;
    s->fd = fd;
    s->next = r->socks;
    r->socks = s;
  } else {
    event_free(s->ev);
  }
  s->what = what;
  s->ev = event_new(r->base, fd, what, on_sock, r);
  if (s->ev && event_add(s->ev, NULL) == 0) return;
  if (s->ev) event_free(s->ev);
  r->socks = r->socks == s ? s->next : r->socks;
  for (dns_sock *p = r->socks; p; p = p->next)
    if (p->next == s) p->next = s->next;
  free(s);
}

/* ---- Names ---------------------------------------------------------------- */

static void name_free(dns_name *n) {
  dst_dns *r = n->r;
  if (n->prev) n->prev->next = n->next;
  else r->names = n->next;
  if (n->next) n->next->prev = n->prev;
  if (n->queued) {
    dns_name **pp = &r->qhead;
    while (*pp != n) pp = &(*pp)->qnext;
    *pp = n->qnext;
    if (r->qtail == n) {
      r->qtail = NULL;
      for (dns_name *q = r->qhead; q; q = q->qnext) r->qtail = q;
    }
  }
  if (n->timer) event_free(n->timer);
  dst_dns_answer_unref(n->answer);
  free(n);
  r->nnames--;
  mesh_metrics_set(r->m_names, (int64_t)r->nnames);
}

static void enqueue(dns_name *n) {
  dst_dns *r = n->r;
  if (n->queued || n->resolving) return;
  n->queued = true;
  n->qnext = NULL;
  if (r->qtail) r->qtail->qnext = n;
  else r->qhead = n;
  r->qtail = n;
  event_active(r->pump, EV_TIMEOUT, 0);
}

static void arm_name(dns_name *n, uint32_t ms) {
  struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
  evtimer_add(n->timer, &tv);
}

static void on_answer(void *arg, int status, int timeouts, struct ares_addrinfo *res) {
  dns_name *n = arg;
  dst_dns *r = n->r;
  n->resolving = false;
  if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED) { /* the resolver is being freed */
    ares_freeaddrinfo(res);
    return;
  }
  r->nresolving--;
  if (r->qhead) event_active(r->pump, EV_TIMEOUT, 0);
  dst_dns_answer *a = NULL;
  int ttl = 0;
  bool temporary = false;
  if (status == ARES_SUCCESS) {
    a = answer_from(res, &ttl);
    temporary = !a; /* out of memory: as good as a failed query */
  } else if (status == ARES_ENOTFOUND || status == ARES_ENODATA) {
    a = answer_from(NULL, &ttl);
    temporary = !a;
  } else {
    temporary = true;
  }
  ares_freeaddrinfo(res);
  if (temporary) {
    /* The last answer stays: a resolver that is away says nothing about the name. */
    mesh_metrics_inc(r->m_failed, 1);
    n->retry_ms = n->retry_ms ? n->retry_ms * 2 : DST_DNS_RETRY_MIN_MS;
    if (n->retry_ms > DST_DNS_RETRY_MAX_MS) n->retry_ms = DST_DNS_RETRY_MAX_MS;
    if (!n->failing)
      dlog(r, "WARN", "dns %s: %s; %s, retrying with backoff from %u ms", n->host,
           status == ARES_SUCCESS ? "out of memory" : ares_strerror(status),
           !n->answer         ? "no answer yet"
           : n->answer->found ? "keeping the last addresses"
                              : "keeping 'not found'",
           n->retry_ms);
    n->failing = true;
    arm_name(n, n->retry_ms);
    return;
  }
  mesh_metrics_inc(a->found ? r->m_found : r->m_none, 1);
  uint32_t next = DST_DNS_NEGATIVE_MS;
  if (a->found) {
    uint64_t ms = (uint64_t)ttl * 1000u;
    next = ms < DST_DNS_TTL_MIN_MS   ? DST_DNS_TTL_MIN_MS
           : ms > DST_DNS_TTL_MAX_MS ? DST_DNS_TTL_MAX_MS
                                     : (uint32_t)ms;
  }
  bool changed = !same_answer(n->answer, a);
  if (changed || n->failing) {
    if (a->found)
      dlog(r, "INFO", "dns %s: %zu address%s (%s%s), asked again in %u s", n->host, a->n,
           a->n == 1 ? "" : "es", a->ip[0], a->n > 1 ? ", ..." : "", next / 1000);
    else
      dlog(r, "INFO", "dns %s: %s, asked again in %u s", n->host,
           status == ARES_ENOTFOUND ? "no such name" : "no A or AAAA record", next / 1000);
  }
  n->failing = false;
  n->retry_ms = 0;
  arm_name(n, next);
  if (!changed) {
    dst_dns_answer_unref(a);
    return;
  }
  dst_dns_answer_unref(n->answer);
  n->answer = a;
  for (dst_dns_watch *w = n->watches, *nx; w; w = nx) {
    nx = w->next;
    w->fn(w->ud);
  }
}

static void start(dns_name *n) {
  dst_dns *r = n->r;
  char fqdn[260];
  /* Absolute: the search domains would make a cluster name of it. */
  snprintf(fqdn, sizeof fqdn, "%s.", n->host);
  struct ares_addrinfo_hints hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;   /* A and AAAA */
  hints.ai_flags = ARES_AI_NOSORT; /* sorted here, by text: no probing connects */
  n->resolving = true;
  r->nresolving++;
  ares_getaddrinfo(r->ch, fqdn, NULL, &hints, on_answer, n);
  arm_ares_timer(r);
}

static void on_pump(evutil_socket_t fd, short what, void *ud) {
  dst_dns *r = ud;
  while (r->qhead && r->nresolving < r->max_resolving) {
    dns_name *n = r->qhead;
    r->qhead = n->qnext;
    if (!r->qhead) r->qtail = NULL;
    n->queued = false;
    start(n);
  }
}

/* Its answer has run out (or its retry is due): asked again while watched, else dropped. */
static void on_name_timer(evutil_socket_t fd, short what, void *ud) {
  dns_name *n = ud;
  if (n->nwatches == 0) name_free(n);
  else enqueue(n);
}

/* ---- The resolver -------------------------------------------------------------- */

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static void free_nss(char **v, size_t n) {
  for (size_t i = 0; i < n; i++) free(v[i]);
  free(v);
}

int dst_dns_set_snapshot(dst_dns *r, const mesh_snapshot *snap) {
  size_t count = mesh_snapshot_count(snap), n = 0;
  char **v = count ? calloc(count, sizeof *v) : NULL;
  if (count && !v) return MESH_ERR_NOMEM;
  for (size_t i = 0; i < count; i++) {
    const char *ns = mesh_snapshot_namespace(snap, i);
    if (!ns || !*ns) continue;
    if (!(v[n] = strdup(ns))) {
      free_nss(v, n);
      return MESH_ERR_NOMEM;
    }
    for (char *c = v[n]; *c; c++)
      if (*c >= 'A' && *c <= 'Z') *c = (char)(*c + 32);
    n++;
  }
  if (n) qsort(v, n, sizeof *v, cmp_str);
  size_t distinct = 0;
  for (size_t i = 0; i < n; i++) {
    if (distinct && !strcmp(v[i], v[distinct - 1])) free(v[i]);
    else v[distinct++] = v[i];
  }
  free_nss(r->nss, r->nns);
  r->nss = v;
  r->nns = distinct;
  return 0;
}

bool dst_dns_wants(const dst_dns *r, const char *authority, char *host, size_t hsize,
                   uint16_t *port) {
  if (!r || !authority || authority[0] == '[') return false;
  const char *colon = strrchr(authority, ':');
  size_t hl = colon ? (size_t)(colon - authority) : strlen(authority);
  unsigned long p = 80;
  if (colon) {
    char *end;
    p = strtoul(colon + 1, &end, 10);
    if (!colon[1] || *end || p < 1 || p > 65535) return false;
  }
  if (hl && authority[hl - 1] == '.') hl--;
  if (hl == 0 || hl > 253 || hl >= hsize) return false;
  size_t label = 0;
  for (size_t i = 0; i < hl; i++) {
    char c = authority[i];
    if (c >= 'A' && c <= 'Z') c = (char)(c + 32);
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
    } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-') {
      if (++label > 63) return false;
    } else {
      return false;
    }
    host[i] = c;
  }
  host[hl] = '\0';
  unsigned char bin[4];
  const char *dot = strchr(host, '.');
  if (label == 0 || !dot || inet_pton(AF_INET, host, bin) == 1) return false;
  const char *ns = dot + 1;
  if (!strchr(ns, '.') && r->nns && bsearch(&ns, r->nss, r->nns, sizeof *r->nss, cmp_str))
    return false; /* "svc.ns" of a namespace the store has */
  size_t cl = strlen(r->cd);
  if (hl >= 4 && strcmp(host + hl - 4, ".svc") == 0) return false;
  if (strcmp(host, r->cd) == 0 ||
      (hl > cl && host[hl - cl - 1] == '.' && strcmp(host + hl - cl, r->cd) == 0))
    return false;
  *port = (uint16_t)p;
  return true;
}

int dst_dns_watch_new(dst_dns *r, const char *host, dst_dns_change_fn fn, void *ud,
                      dst_dns_watch **ret) {
  if (!r || !host || !fn || !ret || strlen(host) >= sizeof r->names->host) return MESH_ERR_INVALID;
  dns_name *n = r->names;
  while (n && strcmp(n->host, host)) n = n->next;
  if (!n && r->nnames >= r->max_names) {
    /* Full: make room by the least recently used name nobody watches. */
    dns_name *victim = NULL;
    for (dns_name *m = r->names; m; m = m->next)
      if (!m->nwatches && !m->resolving && !m->queued && (!victim || m->used < victim->used))
        victim = m;
    if (!victim) return MESH_ERR_LIMIT;
    name_free(victim);
  }
  dst_dns_watch *w = calloc(1, sizeof *w);
  if (!w) return MESH_ERR_NOMEM;
  if (!n) {
    if (!(n = calloc(1, sizeof *n)) || !(n->timer = evtimer_new(r->base, on_name_timer, n))) {
      free(n);
      free(w);
      return MESH_ERR_NOMEM;
    }
    n->r = r;
    snprintf(n->host, sizeof n->host, "%s", host);
    n->next = r->names;
    if (r->names) r->names->prev = n;
    r->names = n;
    r->nnames++;
    mesh_metrics_set(r->m_names, (int64_t)r->nnames);
    enqueue(n);
  }
  n->used = ++r->tick;
  w->name = n;
  w->fn = fn;
  w->ud = ud;
  w->next = n->watches;
  if (n->watches) n->watches->prev = w;
  n->watches = w;
  n->nwatches++;
  *ret = w;
  return 0;
}

void dst_dns_watch_free(dst_dns_watch *w) {
  if (!w) return;
  dns_name *n = w->name;
  if (w->prev) w->prev->next = w->next;
  else n->watches = w->next;
  if (w->next) w->next->prev = w->prev;
  n->nwatches--;
  /* Unwatched, the name stays until its timer: a stream that comes back
   * soon (a proxy reconnecting) gets the answer at once. */
  n->used = ++n->r->tick;
  free(w);
}

const dst_dns_answer *dst_dns_watch_answer(const dst_dns_watch *w) {
  return w ? w->name->answer : NULL;
}

int dst_dns_new(struct event_base *base, const dst_dns_opts *o, char *err, size_t esize,
                dst_dns **ret) {
  static bool lib_ready;
  struct ares_addr_port_node nodes[DST_DNS_SERVERS_MAX];
  const char *cd = o && o->cluster_domain ? o->cluster_domain : "cluster.local";
  snprintf(err, esize, "invalid options");
  if (!base || !o || !ret || !o->max_names || !o->max_resolving || strlen(cd) >= 256)
    return MESH_ERR_INVALID;
  if (o->servers && !parse_servers(o->servers, nodes, err, esize)) return MESH_ERR_INVALID;
  if (!lib_ready) {
    int st = ares_library_init(ARES_LIB_INIT_ALL);
    if (st != ARES_SUCCESS) {
      snprintf(err, esize, "c-ares: %s", ares_strerror(st));
      return MESH_ERR_IO;
    }
    lib_ready = true;
  }
  dst_dns *r = calloc(1, sizeof *r);
  if (!r) return MESH_ERR_NOMEM;
  r->base = base;
  r->max_names = o->max_names;
  r->max_resolving = o->max_resolving;
  r->log = o->log;
  for (size_t i = 0; cd[i]; i++)
    r->cd[i] = (char)(cd[i] >= 'A' && cd[i] <= 'Z' ? cd[i] + 32 : cd[i]);
  struct ares_options ao;
  memset(&ao, 0, sizeof ao);
  ao.timeout = DNS_TIMEOUT_MS;
  ao.tries = DNS_TRIES;
  /* DNS only: the hosts file has no TTL to follow. */
  ao.lookups = (char *)"b";
  ao.sock_state_cb = on_sock_state;
  ao.sock_state_cb_data = r;
  int st = ares_init_options(
      &r->ch, &ao, ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_LOOKUPS | ARES_OPT_SOCK_STATE_CB);
  if (st == ARES_SUCCESS) {
    r->ch_ok = true;
    if (o->servers) st = ares_set_servers_ports(r->ch, nodes);
  }
  if (st != ARES_SUCCESS) {
    snprintf(err, esize, "c-ares: %s", ares_strerror(st));
    dst_dns_free(r);
    return st == ARES_ENOMEM ? MESH_ERR_NOMEM : MESH_ERR_IO;
  }
  mesh_metric_family *names = NULL, *res = NULL;
  const char *result = "result", *found = "found", *none = "not_found", *failed = "failed";
  int rc = 0;
  if (o->metrics) {
    rc = mesh_metrics_gauge(
        o->metrics, "destination_dns_names",
        "Names resolved by DNS for Get streams: watched, or cached until their TTL.", NULL, 0,
        &names);
    if (!rc)
      rc = mesh_metrics_counter(o->metrics, "destination_dns_resolutions_total",
                                "DNS resolutions of names outside the store, by result (found: "
                                "addresses; not_found: NXDOMAIN or no record; failed: a temporary "
                                "failure, the last answer kept).",
                                &result, 1, &res);
    if (!rc) rc = mesh_metrics_series(names, NULL, 0, &r->m_names);
    if (!rc) rc = mesh_metrics_series(res, &found, 1, &r->m_found);
    if (!rc) rc = mesh_metrics_series(res, &none, 1, &r->m_none);
    if (!rc) rc = mesh_metrics_series(res, &failed, 1, &r->m_failed);
  }
  r->ares_timer = evtimer_new(base, on_ares_timer, r);
  r->pump = event_new(base, -1, 0, on_pump, r);
  if (rc < 0 || !r->ares_timer || !r->pump) {
    snprintf(err, esize, "%s", rc < 0 ? mesh_strerror(rc) : "out of memory");
    dst_dns_free(r);
    return rc < 0 ? rc : MESH_ERR_NOMEM;
  }
  *ret = r;
  return 0;
}

void dst_dns_free(dst_dns *r) {
  if (!r) return;
  /* Pending queries end here (ARES_EDESTRUCTION), before their names go. */
  if (r->ch_ok) ares_destroy(r->ch);
  while (r->socks) {
    dns_sock *s = r->socks;
    r->socks = s->next;
    event_free(s->ev);
    free(s);
  }
  while (r->names) name_free(r->names);
  if (r->ares_timer) event_free(r->ares_timer);
  if (r->pump) event_free(r->pump);
  free_nss(r->nss, r->nns);
  mesh_metrics_series_unref(r->m_names);
  mesh_metrics_series_unref(r->m_found);
  mesh_metrics_series_unref(r->m_none);
  mesh_metrics_series_unref(r->m_failed);
  free(r);
}

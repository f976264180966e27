/* mesh-viz's JSON API: stat, routes, edges and targets computed from the scraped samples over a window. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "state.h"

#define NAME_MAX_BYTES 253u   /* of a name or namespace in a query */
#define DEFAULT_WINDOW "1m"    /* as `linkerd viz stat` */
#define MIN_WINDOW_MS 1000u

/* ---- Per-query state: each target's increases over the window ----------- */

typedef struct {
  const viz_target *t;
  bool ok;                  /* two samples or more: rates can be given */
  double secs;              /* the window actually used */
  double *delta;            /* per series: the counter's increase (NaN: absent throughout) */
  const viz_sample *newest; /* NULL: never scraped */
} tdata;

typedef struct {
  const viz_state *st;
  uint64_t now, win;
  tdata *td;
  size_t n;
  char ns[NAME_MAX_BYTES + 1];
  bool all;
} qctx;

static const viz_sample *sample_at(const viz_target *t, size_t k) {
  return &t->ring[(t->ring_start + k) % t->ring_cap];
}

static double value_in(const viz_sample *s, size_t i) { return i < s->n ? s->v[i] : NAN; }

/* The base is the newest sample at or before now - window, else the oldest. */
static bool compute(tdata *d, const viz_target *t, uint64_t now, uint64_t win) {
  memset(d, 0, sizeof *d);
  d->t = t;
  if (t->ring_len == 0) return true;
  d->newest = sample_at(t, t->ring_len - 1);
  size_t b = 0;
  for (size_t k = 0; k < t->ring_len; k++)
    if (sample_at(t, k)->t_ms + win <= now) b = k;
  if (b == t->ring_len - 1) return true;
  const viz_sample *base = sample_at(t, b);
  d->ok = true;
  d->secs = (double)(d->newest->t_ms - base->t_ms) / 1000.0;
  if (!(d->delta = malloc((t->nseries ? t->nseries : 1) * sizeof *d->delta))) return false;
  for (size_t i = 0; i < t->nseries; i++) {
    viz_counter c;
    viz_counter_begin(&c, value_in(base, i));
    bool any = !isnan(value_in(base, i));
    double start = base->start_s;
    for (size_t k = b + 1; k < t->ring_len; k++) {
      const viz_sample *x = sample_at(t, k);
      double v = value_in(x, i);
      if (!isnan(x->start_s)) {
        if (!isnan(start) && x->start_s != start) viz_counter_restart(&c);
        start = x->start_s;
      }
      any = any || !isnan(v);
      viz_counter_step(&c, v);
    }
    d->delta[i] = any ? c.sum : NAN;
  }
  return true;
}

static void qctx_free(qctx *q) {
  for (size_t i = 0; i < q->n; i++) free(q->td[i].delta);
  free(q->td);
}

static bool qctx_init(qctx *q, const viz_state *st, uint64_t now, uint64_t win) {
  memset(q, 0, sizeof *q);
  q->st = st;
  q->now = now;
  q->win = win;
  if (!(q->td = calloc(st->ntargets ? st->ntargets : 1, sizeof *q->td))) return false;
  for (const viz_target *t = st->targets; t && q->n < st->ntargets; t = t->next)
    if (!compute(&q->td[q->n++], t, now, win)) return false;
  return true;
}

const viz_target *viz_target_by_addr(const viz_state *st, const char *addr) {
  char host[256];
  const char *colon = strrchr(addr, ':');
  size_t hl = colon ? (size_t)(colon - addr) : strlen(addr);
  if (*addr == '[' && hl >= 2) addr++, hl -= 2;
  if (hl == 0 || hl >= sizeof host) return NULL;
  memcpy(host, addr, hl);
  host[hl] = '\0';
  for (const viz_target *t = st->targets; t; t = t->next)
    for (size_t i = 0; i < t->nips; i++)
      if (!strcmp(t->ips[i], host)) return t;
  return NULL;
}

/* "web.ns.svc.cluster.local:80" (or "web.ns:80", "web:80") into the
 * service and its namespace (dflt when the authority does not say). */
static void service_of(const char *authority, const char *dflt, char *svc, size_t ssz, char *ns,
                       size_t nsz) {
  size_t hl = strcspn(authority, ":");
  size_t l1 = strcspn(authority, ".:");
  snprintf(svc, ssz, "%.*s", (int)l1, authority);
  if (l1 < hl) {
    const char *p = authority + l1 + 1;
    snprintf(ns, nsz, "%.*s", (int)strcspn(p, ".:"), p);
  } else {
    snprintf(ns, nsz, "%s", dflt);
  }
}

static const viz_service *find_service(const viz_state *st, const char *ns, const char *name) {
  for (size_t i = 0; i < st->nservices; i++)
    if (!strcmp(st->services[i].ns, ns) && !strcmp(st->services[i].name, name)) return &st->services[i];
  return NULL;
}

static bool selects(const viz_service *s, const viz_target *t) {
  if (!s || !json_is_object(s->selector) || json_object_size(s->selector) == 0) return false;
  if (strcmp(s->ns, t->ns) != 0) return false;
  const char *k;
  json_t *v;
  json_object_foreach(s->selector, k, v) {
    const char *have = json_string_value(json_object_get(t->labels, k));
    if (!have || !json_is_string(v) || strcmp(have, json_string_value(v)) != 0) return false;
  }
  return true;
}

/* A resource: KIND (deploy, po, ns, svc) and NAME in NS. */
typedef struct {
  char kind[16], name[NAME_MAX_BYTES + 1], ns[NAME_MAX_BYTES + 1];
  bool set;
} resource;

static bool matches(const viz_state *st, const resource *r, const viz_target *t) {
  if (!strcmp(r->kind, "ns")) return !strcmp(t->ns, r->name);
  if (strcmp(t->ns, r->ns) != 0) return false;
  if (!strcmp(r->kind, "deploy")) return !strcmp(t->deploy, r->name);
  if (!strcmp(r->kind, "po")) return !strcmp(t->name, r->name);
  if (!strcmp(r->kind, "svc")) return selects(find_service(st, r->ns, r->name), t);
  return false;
}

/* The group a target belongs to for a kind (deploy, po, ns). */
static const char *group_of(const viz_target *t, const char *kind) {
  return !strcmp(kind, "po") ? t->name : !strcmp(kind, "ns") ? t->ns : t->deploy;
}

/* ---- Rows --------------------------------------------------------------- */

typedef struct {
  char *ns, *name;
  size_t pods, reachable;
  json_t *unreachable;
  bool has_window;
  double min_secs, succ, fail, rate;
  double les[VIZ_MAX_BUCKETS], cnt[VIZ_MAX_BUCKETS];
  size_t nb;
  bool has_tcp;
  double tcp;
  /* routes: the actual (per attempt) counts beside the effective ones */
  double asucc, afail, arate;
  /* ts */
  const char *apex, *leaf, *weight;
} row;

typedef struct {
  row *v;
  size_t n, cap;
  bool oom;
} rows;

static row *row_get(rows *rs, const char *ns, const char *name) {
  for (size_t i = 0; i < rs->n; i++)
    if (!strcmp(rs->v[i].ns, ns) && !strcmp(rs->v[i].name, name)) return &rs->v[i];
  if (rs->n == rs->cap) {
    size_t cap = rs->cap ? rs->cap * 2 : 16;
    row *v = realloc(rs->v, cap * sizeof *v);
    if (!v) {
      rs->oom = true;
      return NULL;
    }
    rs->v = v;
    rs->cap = cap;
  }
  row *r = &rs->v[rs->n];
  memset(r, 0, sizeof *r);
  r->ns = strdup(ns);
  r->name = strdup(name);
  r->unreachable = json_array();
  if (!r->ns || !r->name || !r->unreachable) {
    free(r->ns), free(r->name), json_decref(r->unreachable);
    rs->oom = true;
    return NULL;
  }
  rs->n++;
  return r;
}

static row *row_find(rows *rs, const char *ns, const char *name) {
  for (size_t i = 0; i < rs->n; i++)
    if (!strcmp(rs->v[i].ns, ns) && !strcmp(rs->v[i].name, name)) return &rs->v[i];
  return NULL;
}

static void rows_free(rows *rs) {
  for (size_t i = 0; i < rs->n; i++) {
    free(rs->v[i].ns), free(rs->v[i].name);
    json_decref(rs->v[i].unreachable);
  }
  free(rs->v);
}

static int row_cmp(const void *a, const void *b) {
  const row *x = a, *y = b;
  int c = strcmp(x->ns, y->ns);
  return c ? c : strcmp(x->name, y->name);
}

static void row_window(row *r, const tdata *d) {
  if (!d->ok) return;
  if (!r->has_window || d->secs < r->min_secs) r->min_secs = d->secs;
  r->has_window = true;
}

/* One series' increase into the row: responses by classification, or a bucket. */
static void row_add(row *r, const tdata *d, size_t i, bool actual) {
  const viz_series *s = &d->t->series[i];
  if (s->metric == VIZ_M_TCP_OPEN_CONNECTIONS) {
    double v = d->newest ? value_in(d->newest, i) : NAN;
    if (!isnan(v)) r->tcp += v, r->has_tcp = true;
    return;
  }
  if (!d->ok || isnan(d->delta[i])) return;
  row_window(r, d);
  double x = d->delta[i];
  if (s->metric == VIZ_M_LATENCY_BUCKET || s->metric == VIZ_M_RT_LATENCY_BUCKET) {
    size_t k = 0;
    while (k < r->nb && r->les[k] < s->le) k++;
    if (k < r->nb && r->les[k] == s->le) {
      r->cnt[k] += x;
    } else if (r->nb < VIZ_MAX_BUCKETS) {
      memmove(&r->les[k + 1], &r->les[k], (r->nb - k) * sizeof r->les[0]);
      memmove(&r->cnt[k + 1], &r->cnt[k], (r->nb - k) * sizeof r->cnt[0]);
      r->les[k] = s->le;
      r->cnt[k] = x;
      r->nb++;
    }
    return;
  }
  bool ok = !strcmp(s->l[VIZ_L_CLASSIFICATION], "success");
  if (actual) {
    *(ok ? &r->asucc : &r->afail) += x;
    r->arate += x / d->secs;
  } else {
    *(ok ? &r->succ : &r->fail) += x;
    r->rate += x / d->secs;
  }
}

static json_t *num_or_null(bool have, double v) {
  return have && isfinite(v) ? json_real(v) : json_null();
}

static json_t *quantile(const row *r, double q) {
  double v = viz_histogram_quantile(q, r->les, r->cnt, r->nb);
  return num_or_null(!isnan(v), v);
}

/* The golden metrics of a row: success, rps, requests, latencies, window. */
static int golden(json_t *o, const row *r) {
  double req = r->succ + r->fail;
  return json_object_set_new(o, "success", num_or_null(r->has_window && req > 0, r->succ / req)) |
         json_object_set_new(o, "rps", num_or_null(r->has_window, r->rate)) |
         json_object_set_new(o, "requests", num_or_null(r->has_window, req)) |
         json_object_set_new(o, "latency_p50", quantile(r, 0.5)) |
         json_object_set_new(o, "latency_p95", quantile(r, 0.95)) |
         json_object_set_new(o, "latency_p99", quantile(r, 0.99)) |
         json_object_set_new(o, "window_s", num_or_null(r->has_window, r->min_secs));
}

/* ---- Parameters ------------------------------------------------------------ */

typedef struct {
  struct evkeyvalq kv;
  char why[300];
} params;

/* Every parameter must be one of allowed (NULL-terminated), at most once. */
static bool params_parse(params *p, const char *query, const char *const *allowed) {
  TAILQ_INIT(&p->kv);
  if (evhttp_parse_query_str(query, &p->kv) < 0) {
    snprintf(p->why, sizeof p->why, "malformed query string");
    return false;
  }
  size_t n = 0;
  for (struct evkeyval *e = p->kv.tqh_first; e; e = e->next.tqe_next) {
    bool known = false;
    for (size_t i = 0; allowed[i] && !known; i++) known = !strcmp(allowed[i], e->key);
    if (!known) {
      snprintf(p->why, sizeof p->why, "unknown parameter '%.60s'", e->key);
      return false;
    }
    for (struct evkeyval *f = e->next.tqe_next; f; f = f->next.tqe_next)
      if (!strcmp(f->key, e->key)) {
        snprintf(p->why, sizeof p->why, "parameter '%.60s' given twice", e->key);
        return false;
      }
    if (strlen(e->value) > NAME_MAX_BYTES + 20) {
      snprintf(p->why, sizeof p->why, "parameter '%.60s' longer than %u bytes", e->key,
               NAME_MAX_BYTES + 20);
      return false;
    }
    n++;
  }
  return true;
}

static const char *param(params *p, const char *key, const char *dflt) {
  const char *v = evhttp_find_header(&p->kv, key);
  return v && *v ? v : dflt;
}

/* KIND/NAME into r (namespace ns); kinds limits what is accepted. */
static bool parse_resource(params *p, const char *what, const char *s, const char *ns,
                           const char *const *kinds, resource *r) {
  const char *slash = strchr(s, '/');
  size_t kl = slash ? (size_t)(slash - s) : strlen(s);
  const char *name = slash ? slash + 1 : "";
  bool known = false;
  for (size_t i = 0; kinds[i] && !known; i++) known = strlen(kinds[i]) == kl && !strncmp(kinds[i], s, kl);
  /* Linkerd's long forms. */
  static const char *const alias[][2] = {{"deployment", "deploy"}, {"deployments", "deploy"},
                                         {"pod", "po"}, {"pods", "po"}, {"namespace", "ns"},
                                         {"namespaces", "ns"}, {"service", "svc"}, {"services", "svc"},
                                         {"trafficsplit", "ts"}, {"trafficsplits", "ts"}};
  const char *canon = NULL;
  for (size_t i = 0; i < sizeof alias / sizeof alias[0] && !known; i++)
    if (strlen(alias[i][0]) == kl && !strncmp(alias[i][0], s, kl)) {
      canon = alias[i][1];
      for (size_t k = 0; kinds[k] && !known; k++) known = !strcmp(kinds[k], canon);
    }
  if (!known || kl >= sizeof r->kind || strlen(name) > NAME_MAX_BYTES || strchr(name, '/')) {
    char list[64] = "";
    for (size_t i = 0; kinds[i]; i++)
      snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", kinds[i]);
    snprintf(p->why, sizeof p->why, "%s: expected KIND[/NAME] with KIND one of %s, found '%.80s'", what,
             list, s);
    return false;
  }
  snprintf(r->kind, sizeof r->kind, "%s", canon ? canon : "");
  if (!canon) snprintf(r->kind, sizeof r->kind, "%.*s", (int)kl, s);
  snprintf(r->name, sizeof r->name, "%s", name);
  snprintf(r->ns, sizeof r->ns, "%s", ns);
  r->set = true;
  return true;
}

/* namespace, all_namespaces and window: into q. */
static bool common(params *p, qctx *q, const viz_state *st, uint64_t now, uint64_t *win) {
  const char *ns = param(p, "namespace", "default"), *all = param(p, "all_namespaces", "false");
  const char *w = param(p, "window", DEFAULT_WINDOW);
  if (strlen(ns) > NAME_MAX_BYTES) {
    snprintf(p->why, sizeof p->why, "namespace longer than %u bytes", NAME_MAX_BYTES);
    return false;
  }
  if (strcmp(all, "true") && strcmp(all, "false")) {
    snprintf(p->why, sizeof p->why, "all_namespaces is true or false");
    return false;
  }
  if (!viz_parse_duration(w, st->retention_ms, win) || *win < MIN_WINDOW_MS) {
    snprintf(p->why, sizeof p->why,
             "window: a duration from 1s to the retention (%llu s), e.g. 30s, 1m, found '%.40s'",
             (unsigned long long)(st->retention_ms / 1000), w);
    return false;
  }
  if (!qctx_init(q, st, now, *win)) {
    snprintf(p->why, sizeof p->why, "out of memory");
    return false;
  }
  snprintf(q->ns, sizeof q->ns, "%s", ns);
  q->all = !strcmp(all, "true");
  return true;
}

static bool in_scope(const qctx *q, const char *ns) { return q->all || !strcmp(q->ns, ns); }

static json_t *envelope(const char *kind, const qctx *q, const char *window) {
  return json_pack("{s:s, s:s?, s:s, s:f, s:[]}", "kind", kind, "namespace", q->all ? NULL : q->ns,
                   "window", window, "window_requested_s", (double)q->win / 1000.0, "rows");
}

/* ---- /api/stat ---------------------------------------------------------- */

static json_t *stat_ts(params *p, qctx *q, const char *name, const resource *from) {
  const viz_state *st = q->st;
  rows rs = {0};
  for (size_t i = 0; i < st->nsplits; i++) {
    const viz_split *sp = &st->splits[i];
    if (!in_scope(q, sp->ns) || (*name && strcmp(sp->name, name))) continue;
    for (size_t l = 0; l < sp->nleaves; l++) {
      char key[600];
      snprintf(key, sizeof key, "%s\x1f%s", sp->name, sp->leaves[l]);
      row *r = row_get(&rs, sp->ns, key);
      if (!r) continue;
      r->apex = sp->apex, r->leaf = sp->leaves[l], r->weight = sp->weights[l];
      const viz_service *leafsvc = find_service(st, sp->ns, sp->leaves[l]);
      for (size_t k = 0; k < q->n; k++) {
        const tdata *d = &q->td[k];
        if (from->set && !matches(st, from, d->t)) continue;
        for (size_t s = 0; s < d->t->nseries; s++) {
          const viz_series *se = &d->t->series[s];
          if (strcmp(se->l[VIZ_L_DIRECTION], "outbound")) continue;
          if (se->metric == VIZ_M_RT_ACTUAL_RESPONSE_TOTAL) {
            char a[256], ans[256], b[256], bns[256];
            service_of(se->l[VIZ_L_DST], sp->ns, a, sizeof a, ans, sizeof ans);
            service_of(se->l[VIZ_L_DST_SERVICE], sp->ns, b, sizeof b, bns, sizeof bns);
            if (!strcmp(a, sp->apex) && !strcmp(ans, sp->ns) && !strcmp(b, sp->leaves[l]) &&
                !strcmp(bns, sp->ns))
              row_add(r, d, s, false);
          } else if (se->metric == VIZ_M_LATENCY_BUCKET && leafsvc) {
            const viz_target *dst = viz_target_by_addr(st, se->l[VIZ_L_TARGET_ADDR]);
            if (dst && selects(leafsvc, dst)) row_add(r, d, s, false);
          }
        }
      }
    }
  }
  json_t *out = envelope("ts", q, param(p, "window", DEFAULT_WINDOW));
  json_t *arr = json_object_get(out, "rows");
  for (size_t i = 0; out && i < rs.n; i++) {
    row *r = &rs.v[i];
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s}", "namespace", r->ns, "name",
                          strtok(r->name, "\x1f"), "apex", r->apex, "leaf", r->leaf, "weight", r->weight);
    if (!o || golden(o, r) || json_array_append_new(arr, o)) {
      json_decref(o);
      json_decref(out);
      out = NULL;
    }
  }
  rows_free(&rs);
  return out;
}

static json_t *stat(params *p, qctx *q) {
  const viz_state *st = q->st;
  static const char *const kinds[] = {"deploy", "po", "ns", "ts", NULL};
  static const char *const peer_kinds[] = {"deploy", "po", "ns", "svc", NULL};
  resource target = {0}, from = {0}, to = {0};
  if (!parse_resource(p, "kind", param(p, "kind", "deploy"), q->ns, kinds, &target)) return NULL;
  const char *fs = param(p, "from", NULL), *ts = param(p, "to", NULL);
  if (fs && !parse_resource(p, "from", fs, param(p, "from_namespace", q->ns), peer_kinds, &from))
    return NULL;
  if (ts && !parse_resource(p, "to", ts, param(p, "to_namespace", q->ns), peer_kinds, &to))
    return NULL;
  if (!*target.name) snprintf(target.name, sizeof target.name, "%s", param(p, "name", ""));
  if ((from.set && !*from.name) || (to.set && !*to.name)) {
    snprintf(p->why, sizeof p->why, "from and to name a resource: KIND/NAME");
    return NULL;
  }
  if (from.set && to.set) {
    snprintf(p->why, sizeof p->why, "give from or to, not both");
    return NULL;
  }
  if (!strcmp(target.kind, "ts")) {
    if (to.set) {
      snprintf(p->why, sizeof p->why, "ts: only from applies (the leaves are the destinations)");
      return NULL;
    }
    return stat_ts(p, q, target.name, &from);
  }
  rows rs = {0};
  /* The rows: every resource of the kind in scope, traffic or not. */
  for (size_t k = 0; k < q->n; k++) {
    const viz_target *t = q->td[k].t;
    bool scope = !strcmp(target.kind, "ns") ? (!*target.name || !strcmp(t->ns, target.name))
                                            : in_scope(q, t->ns);
    const char *g = group_of(t, target.kind);
    if (!scope || (*target.name && strcmp(g, target.name))) continue;
    row *r = row_get(&rs, t->ns, g);
    if (!r) continue;
    r->pods++;
    if (t->state == 1) {
      r->reachable++;
    } else {
      const char *why = !t->admin[0] ? "not scraped (adminPort 0)"
                        : t->state == 0 ? "not scraped yet" : t->error;
      json_array_append_new(r->unreachable,
                            json_pack("{s:s, s:s, s:s}", "namespace", t->ns, "name", t->name, "error", why));
    }
  }
  const char *direction = from.set || to.set ? "outbound" : "inbound";
  for (size_t k = 0; k < q->n; k++) {
    const tdata *d = &q->td[k];
    const viz_target *t = d->t;
    if (from.set && !matches(st, &from, t)) continue;
    row *own = NULL;
    if (!from.set) {
      own = row_find(&rs, t->ns, group_of(t, target.kind));
      if (!own) continue;
      /* A proxy scraped over the window says "no requests" (0), not "no data". */
      row_window(own, d);
    } else {
      for (size_t i = 0; i < rs.n; i++) row_window(&rs.v[i], d);
    }
    for (size_t s = 0; s < t->nseries; s++) {
      const viz_series *se = &t->series[s];
      if (se->metric != VIZ_M_RESPONSE_TOTAL && se->metric != VIZ_M_LATENCY_BUCKET &&
          se->metric != VIZ_M_TCP_OPEN_CONNECTIONS)
        continue;
      if (strcmp(se->l[VIZ_L_DIRECTION], direction)) continue;
      if (se->metric == VIZ_M_TCP_OPEN_CONNECTIONS &&
          strcmp(se->l[VIZ_L_PEER], from.set || to.set ? "dst" : "src"))
        continue;
      row *r = own;
      if (from.set || to.set) {
        const viz_target *dst = viz_target_by_addr(st, se->l[VIZ_L_TARGET_ADDR]);
        if (!dst) continue;
        if (to.set && !matches(st, &to, dst)) continue;
        if (from.set) r = row_find(&rs, dst->ns, group_of(dst, target.kind));
        if (!r) continue;
      }
      row_add(r, d, s, false);
    }
  }
  qsort(rs.v, rs.n, sizeof *rs.v, row_cmp);
  json_t *out = rs.oom ? NULL : envelope(target.kind, q, param(p, "window", DEFAULT_WINDOW));
  if (out) json_object_set_new(out, "direction", json_string(direction));
  json_t *arr = json_object_get(out, "rows");
  for (size_t i = 0; out && i < rs.n; i++) {
    row *r = &rs.v[i];
    char meshed[48];
    snprintf(meshed, sizeof meshed, "%zu/%zu", r->reachable, r->pods);
    json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:I, s:O, s:o}", "namespace", r->ns, "name", r->name,
                          "meshed", meshed, "pods", (json_int_t)r->pods, "reachable",
                          (json_int_t)r->reachable, "unreachable", r->unreachable, "tcp_conn",
                          num_or_null(r->has_tcp, r->tcp));
    if (!o || golden(o, r) || json_array_append_new(arr, o)) {
      json_decref(o);
      json_decref(out);
      out = NULL;
    }
  }
  rows_free(&rs);
  if (!out && !*p->why) snprintf(p->why, sizeof p->why, "out of memory");
  return out;
}

/* ---- /api/routes -------------------------------------------------------- */

static const viz_profile *find_profile(const viz_state *st, const char *ns, const char *svc) {
  size_t l = strlen(svc);
  for (size_t i = 0; i < st->nprofiles; i++) {
    const viz_profile *p = &st->profiles[i];
    if (strcmp(p->ns, ns)) continue;
    /* "<svc>.<ns>.svc.<domain>" (Linkerd's rule) or the Service's own name. */
    if (!strcmp(p->name, svc) ||
        (!strncmp(p->name, svc, l) && p->name[l] == '.' && !strncmp(p->name + l + 1, ns, strlen(ns)) &&
         !strncmp(p->name + l + 1 + strlen(ns), ".svc.", 5)))
      return p;
  }
  return NULL;
}

/* Whether series s of t is a route series of the query: its family, its
 * direction, from one of res's targets (svc/NAME: every target; the
 * series' dst says which service). */
static bool route_series(const qctx *q, const resource *res, const char *direction,
                         const viz_target *t, const viz_series *se) {
  if (strcmp(res->kind, "svc") && !matches(q->st, res, t)) return false;
  if (se->metric != VIZ_M_RT_RESPONSE_TOTAL && se->metric != VIZ_M_RT_LATENCY_BUCKET &&
      se->metric != VIZ_M_RT_ACTUAL_RESPONSE_TOTAL)
    return false;
  return !strcmp(se->l[VIZ_L_DIRECTION], direction);
}

/* The rows of service svc in svc_ns: its profile's routes in order (as
 * they are matched), [DEFAULT], then any other route name seen. */
static void route_rows(rows *rr, const qctx *q, const resource *res, const char *direction,
                       const char *svc, const char *svc_ns) {
  const viz_profile *prof = find_profile(q->st, svc_ns, svc);
  for (size_t i = 0; prof && i < prof->nroutes; i++) row_get(rr, svc, prof->routes[i]);
  row_get(rr, svc, "[DEFAULT]");
  for (size_t k = 0; k < q->n; k++) {
    const tdata *d = &q->td[k];
    for (size_t s = 0; s < d->t->nseries; s++) {
      const viz_series *se = &d->t->series[s];
      char a[256], ans[256];
      if (!route_series(q, res, direction, d->t, se)) continue;
      service_of(se->l[VIZ_L_DST], svc_ns, a, sizeof a, ans, sizeof ans);
      if (strcmp(a, svc) || strcmp(ans, svc_ns)) continue;
      row *r = row_get(rr, a, se->l[VIZ_L_RT_ROUTE]);
      if (r) row_add(r, d, s, se->metric == VIZ_M_RT_ACTUAL_RESPONSE_TOTAL);
    }
  }
}

/* The services res's route series in direction are about (ns and name
 * of each row), sorted: routes deploy/NAME without --to shows each of
 * them, as Linkerd shows the routes of every service a workload serves;
 * routes svc/NAME reads the server side when NAME is one of them. */
static void services_seen(rows *out, const qctx *q, const resource *res, const char *direction) {
  for (size_t k = 0; k < q->n; k++) {
    const viz_target *t = q->td[k].t;
    for (size_t s = 0; s < t->nseries; s++) {
      const viz_series *se = &t->series[s];
      char a[256], ans[256];
      if (!route_series(q, res, direction, t, se)) continue;
      service_of(se->l[VIZ_L_DST], res->ns, a, sizeof a, ans, sizeof ans);
      row_get(out, ans, a);
    }
  }
  if (out->n) qsort(out->v, out->n, sizeof out->v[0], row_cmp);
}

/* A server makes one attempt a request (retries are its callers'): its
 * actual numbers are its effective ones. */
static void actual_is_effective(rows *rr) {
  for (size_t i = 0; i < rr->n; i++) {
    row *r = &rr->v[i];
    r->asucc = r->succ;
    r->afail = r->fail;
    r->arate = r->rate;
  }
}

static json_t *routes(params *p, qctx *q) {
  static const char *const kinds[] = {"svc", "deploy", "po", NULL};
  static const char *const to_kinds[] = {"svc", NULL};
  const char *rs_ = param(p, "resource", NULL), *ts = param(p, "to", NULL);
  resource res = {0}, to = {0};
  if (!rs_) {
    snprintf(p->why, sizeof p->why, "resource: give SVC, svc/NAME, deploy/NAME or po/NAME");
    return NULL;
  }
  char buf[NAME_MAX_BYTES + 24];
  if (!strchr(rs_, '/')) snprintf(buf, sizeof buf, "svc/%s", rs_), rs_ = buf;
  if (!parse_resource(p, "resource", rs_, q->ns, kinds, &res)) return NULL;
  if (ts && !parse_resource(p, "to", ts, param(p, "to_namespace", q->ns), to_kinds, &to)) return NULL;
  if (!*res.name || (to.set && !*to.name)) {
    snprintf(p->why, sizeof p->why, "a resource with a name: svc/NAME, deploy/NAME");
    return NULL;
  }
  if (to.set && !strcmp(res.kind, "svc")) {
    snprintf(p->why, sizeof p->why, "to applies to deploy/NAME or po/NAME (the callers)");
    return NULL;
  }
  /* Which service's routes, and whose metrics (direction). */
  const char *svc = !strcmp(res.kind, "svc") ? res.name : to.set ? to.name : NULL;
  const char *svc_ns = to.set ? to.ns : res.ns;
  const char *direction = to.set ? "outbound" : "inbound";
  if (!strcmp(res.kind, "svc")) {
    /* The server side's route metrics when its proxies have them (as
     * Linkerd's routes svc/NAME), else the callers': never both, which
     * would count each request twice. */
    rows served = {0};
    services_seen(&served, q, &res, "inbound");
    direction = row_find(&served, svc_ns, svc) ? "inbound" : "outbound";
    bool oom = served.oom;
    rows_free(&served);
    if (oom) {
      snprintf(p->why, sizeof p->why, "out of memory");
      return NULL;
    }
  }
  rows rr = {0};
  if (svc) {
    route_rows(&rr, q, &res, direction, svc, svc_ns);
  } else { /* deploy/NAME, po/NAME: every service its proxies served */
    rows seen = {0};
    services_seen(&seen, q, &res, direction);
    for (size_t i = 0; i < seen.n; i++)
      route_rows(&rr, q, &res, direction, seen.v[i].name, seen.v[i].ns);
    rr.oom |= seen.oom;
    rows_free(&seen);
  }
  if (!strcmp(direction, "inbound")) actual_is_effective(&rr);
  json_t *out = rr.oom ? NULL : envelope(res.kind, q, param(p, "window", DEFAULT_WINDOW));
  if (out) {
    json_object_set_new(out, "resource", json_string(rs_));
    json_object_set_new(out, "direction", json_string(direction));
  }
  json_t *arr = json_object_get(out, "rows");
  /* Profile order first (as the routes are matched), [DEFAULT] after them, then the rest. */
  for (size_t i = 0; out && i < rr.n; i++) {
    row *r = &rr.v[i];
    double areq = r->asucc + r->afail, req = r->succ + r->fail;
    json_t *o = json_pack("{s:s, s:s, s:o, s:o, s:o, s:o}", "route", r->name, "service", r->ns,
                          "effective_success", num_or_null(r->has_window && req > 0, r->succ / req),
                          "effective_rps", num_or_null(r->has_window, r->rate), "actual_success",
                          num_or_null(r->has_window && areq > 0, r->asucc / areq), "actual_rps",
                          num_or_null(r->has_window, r->arate));
    if (!o || golden(o, r) || json_array_append_new(arr, o)) {
      json_decref(o);
      json_decref(out);
      out = NULL;
    }
  }
  rows_free(&rr);
  if (!out && !*p->why) snprintf(p->why, sizeof p->why, "out of memory");
  return out;
}

/* ---- /api/edges --------------------------------------------------------- */

/* The client identity d's inbound metrics hold for a caller with service
 * account sa in ns ("<sa>.<ns>.serviceaccount.identity..."), or "". */
static const char *client_id_at(const qctx *q, const viz_target *dst, const viz_target *src) {
  const tdata *d = NULL;
  for (size_t k = 0; k < q->n && !d; k++)
    if (q->td[k].t == dst) d = &q->td[k];
  if (!d || !d->newest || !*src->sa) return "";
  size_t sl = strlen(src->sa), nl = strlen(src->ns);
  for (size_t s = 0; s < dst->nseries; s++) {
    const viz_series *se = &dst->series[s];
    const char *id = se->l[VIZ_L_CLIENT_ID];
    if ((se->metric != VIZ_M_RESPONSE_TOTAL && se->metric != VIZ_M_TCP_OPEN_TOTAL) ||
        strcmp(se->l[VIZ_L_DIRECTION], "inbound") || !(value_in(d->newest, s) > 0))
      continue;
    if (!strncmp(id, src->sa, sl) && id[sl] == '.' && !strncmp(id + sl + 1, src->ns, nl) &&
        !strncmp(id + sl + 1 + nl, ".serviceaccount.", 16))
      return id;
  }
  return "";
}

typedef struct {
  const viz_target *src, *dst;
  const char *server_id, *client_id;
  bool all_tls;
} edge;

static json_t *edges(params *p, qctx *q) {
  const viz_state *st = q->st;
  static const char *const kinds[] = {"deploy", "po", NULL};
  resource kind = {0};
  if (!parse_resource(p, "kind", param(p, "kind", "deploy"), q->ns, kinds, &kind)) return NULL;
  edge *ev = NULL;
  size_t n = 0, cap = 0;
  bool oom = false;
  for (size_t k = 0; k < q->n && !oom; k++) {
    const tdata *d = &q->td[k];
    const viz_target *src = d->t;
    if (!d->newest) continue;
    for (size_t s = 0; s < src->nseries; s++) {
      const viz_series *se = &src->series[s];
      bool tcp = se->metric == VIZ_M_TCP_OPEN_TOTAL;
      if ((se->metric != VIZ_M_RESPONSE_TOTAL && !tcp) || strcmp(se->l[VIZ_L_DIRECTION], "outbound") ||
          (tcp && strcmp(se->l[VIZ_L_PEER], "dst")) || !(value_in(d->newest, s) > 0))
        continue;
      const viz_target *dst = viz_target_by_addr(st, se->l[VIZ_L_TARGET_ADDR]);
      if (!dst || (!in_scope(q, src->ns) && !in_scope(q, dst->ns))) continue;
      edge *e = NULL;
      for (size_t i = 0; i < n && !e; i++)
        if (!strcmp(ev[i].src->ns, src->ns) && !strcmp(ev[i].dst->ns, dst->ns) &&
            !strcmp(group_of(ev[i].src, kind.kind), group_of(src, kind.kind)) &&
            !strcmp(group_of(ev[i].dst, kind.kind), group_of(dst, kind.kind)))
          e = &ev[i];
      if (!e) {
        if (n == cap) {
          cap = cap ? cap * 2 : 16;
          edge *v = realloc(ev, cap * sizeof *v);
          if (!v) {
            oom = true;
            break;
          }
          ev = v;
        }
        e = &ev[n++];
        *e = (edge){src, dst, "", client_id_at(q, dst, src), true};
      }
      if (strcmp(se->l[VIZ_L_TLS], "true")) e->all_tls = false;
      if (*se->l[VIZ_L_SERVER_ID]) e->server_id = se->l[VIZ_L_SERVER_ID];
    }
  }
  json_t *out = oom ? NULL : envelope(kind.kind, q, param(p, "window", DEFAULT_WINDOW));
  json_t *arr = json_object_get(out, "rows");
  for (size_t i = 0; out && i < n; i++) {
    edge *e = &ev[i];
    bool secured = e->all_tls && *e->server_id && *e->client_id;
    const char *reason = secured ? "" : !e->all_tls ? "not every connection is mTLS"
                                      : !*e->server_id ? "no server identity"
                                                       : "no client identity at the destination";
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:b, s:s, s:s, s:s}", "src", group_of(e->src, kind.kind),
                          "dst", group_of(e->dst, kind.kind), "src_namespace", e->src->ns,
                          "dst_namespace", e->dst->ns, "secured", secured, "client_id", e->client_id,
                          "server_id", e->server_id, "no_tls_reason", reason);
    if (!o || json_array_append_new(arr, o)) {
      json_decref(o);
      json_decref(out);
      out = NULL;
    }
  }
  free(ev);
  if (!out) snprintf(p->why, sizeof p->why, "out of memory");
  return out;
}

/* ---- /api/targets ------------------------------------------------------- */

static json_t *targets(params *p, qctx *q) {
  json_t *out = envelope("po", q, param(p, "window", DEFAULT_WINDOW));
  json_t *arr = json_object_get(out, "rows");
  for (size_t k = 0; out && k < q->n; k++) {
    const viz_target *t = q->td[k].t;
    if (!in_scope(q, t->ns)) continue;
    const char *state = !t->admin[0] ? "not_scraped" : t->state == 1 ? "up" : t->state == 0 ? "unknown" : "down";
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:I}", "namespace", t->ns,
                          "name", t->name, "deployment", t->deploy, "service_account", t->sa, "admin",
                          t->admin, "state", state, "error", t->error, "samples", (json_int_t)t->ring_len,
                          "series", (json_int_t)t->nseries, "scrapes_ok", (json_int_t)t->scrapes_ok,
                          "scrapes_failed", (json_int_t)t->scrapes_failed);
    if (!o || json_array_append_new(arr, o)) {
      json_decref(o);
      json_decref(out);
      out = NULL;
    }
  }
  return out;
}

json_t *viz_api(const viz_state *st, const char *path, const char *query, uint64_t now_ms, int *status) {
  static const char *const stat_keys[] = {"kind", "name", "namespace", "all_namespaces", "window", "from",
                                          "to", "from_namespace", "to_namespace", NULL};
  static const char *const routes_keys[] = {"resource", "namespace", "window", "to", "to_namespace", NULL};
  static const char *const edges_keys[] = {"kind", "namespace", "all_namespaces", "window", NULL};
  static const char *const targets_keys[] = {"namespace", "all_namespaces", NULL};
  struct {
    const char *path;
    const char *const *keys;
    json_t *(*fn)(params *, qctx *);
  } const api[] = {{"/api/stat", stat_keys, stat},
                   {"/api/routes", routes_keys, routes},
                   {"/api/edges", edges_keys, edges},
                   {"/api/targets", targets_keys, targets}};
  params p = {.why = ""};
  qctx q = {0};
  json_t *out = NULL;
  uint64_t win = 0;
  *status = 400;
  for (size_t i = 0; i < sizeof api / sizeof api[0]; i++) {
    if (strcmp(path, api[i].path)) continue;
    if (params_parse(&p, query, api[i].keys) && common(&p, &q, st, now_ms, &win)) out = api[i].fn(&p, &q);
    break;
  }
  if (!*p.why && !out) {
    *status = 404;
    snprintf(p.why, sizeof p.why, "not found: /api/stat, /api/routes, /api/edges, /api/targets");
  }
  evhttp_clear_headers(&p.kv);
  qctx_free(&q);
  if (out) {
    *status = 200;
    return out;
  }
  return json_pack("{s:s}", "error", p.why);
}

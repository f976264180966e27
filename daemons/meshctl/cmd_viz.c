/* meshctl viz: golden metrics from mesh-viz (stat, routes, edges), as `linkerd viz` prints them. */
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "meshctl.h"

#define DEFAULT_VIZ_ADDR "127.0.0.1:8085"
#define HTTP_TIMEOUT_MS 3000
#define BODY_LIMIT (16u << 20) /* one answer of mesh-viz */
#define MAX_COLS 12
#define ARG_MAX_BYTES 300 /* a KIND/NAME or namespace as given */

static void usage(FILE *out) {
  fprintf(out,
          "Golden metrics of the mesh from mesh-viz (success rate, requests per second,\n"
          "latency percentiles, connections), as `linkerd viz` shows them.\n\n"
          "Usage:\n"
          "  meshctl viz stat [KIND[/NAME]] [-n NS | -A] [-t WINDOW] [--from KIND/NAME | --to KIND/NAME]\n"
          "                   [-o wide|json]\n"
          "  meshctl viz routes SVC | svc/NAME | deploy/NAME [--to svc/NAME] [-n NS] [-t WINDOW]\n"
          "                   [-o wide|json]\n"
          "  meshctl viz edges [deploy|po] [-n NS | -A] [-o wide|json]\n\n"
          "Kinds: deploy (the default; a Workload's label app), po (a Workload), ns, ts\n"
          "(TrafficSplit: one row a leaf); --from/--to also take svc/NAME.\n"
          "stat shows the inbound metrics of each resource; --to NAME the resource's outbound\n"
          "metrics toward NAME; --from NAME NAME's outbound metrics toward each resource.\n"
          "routes deploy/NAME shows the routes NAME served (its proxies' inbound route\n"
          "metrics); --to svc/NAME the routes it called on that service.\n\n"
          "Flags:\n"
          "  -n, --namespace NS       the namespace (default: default)\n"
          "  -A, --all-namespaces     every namespace\n"
          "  -t, --time-window D      the window rates are taken over (default 1m; 10s, 5m, 1h)\n"
          "      --from KIND/NAME     stat: traffic from this resource\n"
          "      --to KIND/NAME       stat: traffic to this resource; routes: svc/NAME called\n"
          "      --from-namespace NS  the namespace of --from (default: -n's)\n"
          "      --to-namespace NS    the namespace of --to (default: -n's)\n"
          "      --viz-addr ADDR      mesh-viz's API (default " DEFAULT_VIZ_ADDR ")\n"
          "  -o, --output FORMAT      text (default), wide or json\n"
          "  -h, --help               show this help\n\n"
          "'-' means no data in the window. Every call times out after 3 s. Exit status: 0,\n"
          "1 when mesh-viz cannot answer, 2 for a usage error.\n");
}

/* ---- Output --------------------------------------------------------------- */

typedef struct {
  char *c[MAX_COLS];
} trow;

typedef struct {
  const char *head[MAX_COLS];
  size_t ncols;
  trow *rows;
  size_t n;
} table;

/* Takes the row's cells (a NULL among the first ncols: out of memory); on
 * failure they are freed and false comes back. */
static bool table_add(table *t, char *cells[MAX_COLS]) {
  bool whole = true;
  for (size_t i = 0; i < t->ncols; i++) whole = whole && cells[i];
  trow *v = whole ? realloc(t->rows, (t->n + 1) * sizeof *v) : NULL;
  if (!v) {
    for (size_t i = 0; i < MAX_COLS; i++) free(cells[i]);
    return false;
  }
  t->rows = v;
  for (size_t i = 0; i < t->ncols; i++) v[t->n].c[i] = cells[i];
  t->n++;
  return true;
}

/* Aligned columns, three spaces apart, as Linkerd's tabwriter. Widths in
 * characters: √ and × are one column though three and two bytes. */
static size_t width(const char *s) {
  size_t w = 0;
  for (; *s; s++) w += ((unsigned char)*s & 0xc0) != 0x80;
  return w;
}

static void table_print(const table *t) {
  size_t w[MAX_COLS];
  for (size_t c = 0; c < t->ncols; c++) {
    w[c] = width(t->head[c]);
    for (size_t r = 0; r < t->n; r++)
      if (width(t->rows[r].c[c]) > w[c]) w[c] = width(t->rows[r].c[c]);
  }
  for (size_t r = 0; r <= t->n; r++) {
    for (size_t c = 0; c < t->ncols; c++) {
      const char *s = r == 0 ? t->head[c] : t->rows[r - 1].c[c];
      if (c + 1 == t->ncols) printf("%s\n", s);
      else printf("%s%*s", s, (int)(w[c] - width(s) + 3), "");
    }
  }
}

static void table_free(table *t) {
  for (size_t r = 0; r < t->n; r++)
    for (size_t c = 0; c < t->ncols; c++) free(t->rows[r].c[c]);
  free(t->rows);
}

static char *fmt(const char *f, double v) {
  char *s = NULL;
  return asprintf(&s, f, v) < 0 ? NULL : s;
}

/* A number of o as f, or "-" when null (no data). scale multiplies it. */
static char *cell(const json_t *o, const char *key, const char *f, double scale) {
  const json_t *v = json_object_get(o, key);
  if (!json_is_number(v)) return strdup("-");
  return fmt(f, json_number_value(v) * scale);
}

static char *text(const json_t *o, const char *key) {
  const char *s = json_string_value(json_object_get(o, key));
  return strdup(s && *s ? s : "-");
}

/* ---- The query ------------------------------------------------------------ */

/* Appends &key=value, percent-encoded (route names hold spaces). */
static bool qadd(char *q, size_t size, const char *key, const char *value) {
  size_t n = strlen(q);
  int k = snprintf(q + n, size - n, "%s%s=", n ? "&" : "", key);
  if (k < 0 || (size_t)k >= size - n) return false;
  n += (size_t)k;
  for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
    bool plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                 strchr("-._~/", *p);
    if (n + 4 > size) return false;
    if (plain) q[n++] = (char)*p;
    else n += (size_t)snprintf(q + n, 4, "%%%02X", *p);
  }
  q[n] = '\0';
  return true;
}

/* GET path?query from mesh-viz: the JSON answer, or NULL after saying why. */
static json_t *query(const char *prog, const char *addr, const char *path, const char *q) {
  char url[2400], why[512];
  snprintf(url, sizeof url, "%s?%s", path, q);
  int status = 0;
  char *body = NULL;
  size_t len = 0;
  if (meshctl_http_get(addr, url, HTTP_TIMEOUT_MS, BODY_LIMIT, &status, &body, &len, why, sizeof why) < 0) {
    fprintf(stderr, "%s: cannot reach mesh-viz at %s: %s\n"
                    "Is mesh-viz running? Give its address with --viz-addr.\n", prog, addr, why);
    return NULL;
  }
  json_error_t je;
  json_t *j = json_loadb(body, len, 0, &je);
  free(body);
  if (!json_is_object(j)) {
    fprintf(stderr, "%s: mesh-viz at %s answered %d with no JSON object\n", prog, addr, status);
    json_decref(j);
    return NULL;
  }
  if (status != 200) {
    const char *e = json_string_value(json_object_get(j, "error"));
    fprintf(stderr, "%s: mesh-viz: %s\n", prog, e ? e : "request refused");
    json_decref(j);
    return NULL;
  }
  return j;
}

static int print_json(const json_t *j) {
  json_t *rows = json_object_get(j, "rows");
  if (json_dumpf(rows ? rows : json_array(), stdout, JSON_INDENT(2)) < 0) return MESHCTL_FAILED;
  printf("\n");
  return MESHCTL_OK;
}

/* ---- Subcommands ------------------------------------------------------------ */

typedef struct {
  const char *prog, *addr, *ns, *window, *from, *to, *from_ns, *to_ns, *out;
  bool all;
} opts;

/* mesh-viz's answer to path?q (too_long: q could not hold every
 * argument), for a table. NULL when the command ends here, *rc saying how:
 * the answer printed as JSON (-o json), arguments too long, or a failure said. */
static json_t *fetch(const opts *o, const char *path, const char *q, bool too_long, int *rc) {
  if (too_long) {
    fprintf(stderr, "%s: arguments too long\n", o->prog);
    *rc = MESHCTL_USAGE;
    return NULL;
  }
  json_t *j = query(o->prog, o->addr, path, q);
  *rc = MESHCTL_FAILED;
  if (j && !strcmp(o->out, "json")) {
    *rc = print_json(j);
    json_decref(j);
    return NULL;
  }
  return j;
}

static int stat_cmd(const opts *o, int npos, char **pos) {
  char kind[ARG_MAX_BYTES + 1] = "deploy", q[2048] = "";
  if (npos > 2 || (npos == 2 && strchr(pos[0], '/'))) {
    fprintf(stderr, "%s: give KIND, KIND/NAME or KIND NAME\n", o->prog);
    return meshctl_usage_error(o->prog);
  }
  if (npos >= 1) snprintf(kind, sizeof kind, "%s%s%s", pos[0], npos == 2 ? "/" : "", npos == 2 ? pos[1] : "");
  int rc;
  bool too_long = !qadd(q, sizeof q, "kind", kind) || !qadd(q, sizeof q, "window", o->window) ||
                   !qadd(q, sizeof q, "namespace", o->ns) || (o->all && !qadd(q, sizeof q, "all_namespaces", "true")) ||
                   (o->from && !qadd(q, sizeof q, "from", o->from)) || (o->to && !qadd(q, sizeof q, "to", o->to)) ||
                   (o->from_ns && !qadd(q, sizeof q, "from_namespace", o->from_ns)) ||
                   (o->to_ns && !qadd(q, sizeof q, "to_namespace", o->to_ns));
  json_t *j = fetch(o, "/api/stat", q, too_long, &rc);
  if (!j) return rc;
  bool ts = !strcmp(json_string_value(json_object_get(j, "kind")), "ts"), wide = !strcmp(o->out, "wide");
  table t = {.ncols = 0};
  if (o->all) t.head[t.ncols++] = "NAMESPACE";
  t.head[t.ncols++] = "NAME";
  if (ts) {
    t.head[t.ncols++] = "APEX";
    t.head[t.ncols++] = "LEAF";
    t.head[t.ncols++] = "WEIGHT";
  } else {
    t.head[t.ncols++] = "MESHED";
  }
  const char *golden[] = {"SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99"};
  for (size_t i = 0; i < 5; i++) t.head[t.ncols++] = golden[i];
  if (!ts) t.head[t.ncols++] = "TCP_CONN";
  if (wide) {
    t.head[t.ncols++] = "REQUESTS";
    t.head[t.ncols++] = "WINDOW";
  }
  json_t *rows = json_object_get(j, "rows"), *r;
  size_t i;
  bool ok = true;
  json_array_foreach(rows, i, r) {
    char *c[MAX_COLS] = {0};
    size_t n = 0;
    if (o->all) c[n++] = text(r, "namespace");
    c[n++] = text(r, "name");
    if (ts) {
      c[n++] = text(r, "apex");
      c[n++] = text(r, "leaf");
      c[n++] = text(r, "weight");
    } else {
      c[n++] = text(r, "meshed");
    }
    c[n++] = cell(r, "success", "%.2f%%", 100);
    c[n++] = cell(r, "rps", "%.1frps", 1);
    c[n++] = cell(r, "latency_p50", "%.0fms", 1);
    c[n++] = cell(r, "latency_p95", "%.0fms", 1);
    c[n++] = cell(r, "latency_p99", "%.0fms", 1);
    if (!ts) c[n++] = cell(r, "tcp_conn", "%.0f", 1);
    if (wide) {
      c[n++] = cell(r, "requests", "%.0f", 1);
      c[n++] = cell(r, "window_s", "%.0fs", 1);
    }
    if (!(ok = table_add(&t, c))) break;
  }
  if (ok && t.n == 0) printf("No resources found.\n");
  else if (ok) table_print(&t);
  /* Why a proxy is not counted as meshed: under the table, one line each. */
  json_array_foreach(rows, i, r) {
    json_t *u;
    size_t k;
    json_array_foreach(json_object_get(r, "unreachable"), k, u)
      printf("%s %s/%s is not reachable: %s\n", MESHCTL_MARK_ERR, json_string_value(json_object_get(u, "namespace")),
             json_string_value(json_object_get(u, "name")), json_string_value(json_object_get(u, "error")));
  }
  table_free(&t);
  json_decref(j);
  if (!ok) fprintf(stderr, "%s: out of memory\n", o->prog);
  return ok ? MESHCTL_OK : MESHCTL_FAILED;
}

static int routes_cmd(const opts *o, int npos, char **pos) {
  char q[2048] = "";
  if (npos != 1) {
    fprintf(stderr, "%s: give one resource: SVC, svc/NAME or deploy/NAME\n", o->prog);
    return meshctl_usage_error(o->prog);
  }
  if (o->from || o->all || o->from_ns) {
    fprintf(stderr, "%s: routes takes --to, --to-namespace and -n, not --from or -A\n", o->prog);
    return meshctl_usage_error(o->prog);
  }
  int rc;
  bool too_long = !qadd(q, sizeof q, "resource", pos[0]) || !qadd(q, sizeof q, "window", o->window) ||
                   !qadd(q, sizeof q, "namespace", o->ns) || (o->to && !qadd(q, sizeof q, "to", o->to)) ||
                   (o->to_ns && !qadd(q, sizeof q, "to_namespace", o->to_ns));
  json_t *j = fetch(o, "/api/routes", q, too_long, &rc);
  if (!j) return rc;
  bool wide = !strcmp(o->out, "wide");
  table t = {.ncols = 0};
  t.head[t.ncols++] = "ROUTE";
  t.head[t.ncols++] = "SERVICE";
  if (wide) {
    t.head[t.ncols++] = "EFFECTIVE_SUCCESS";
    t.head[t.ncols++] = "EFFECTIVE_RPS";
    t.head[t.ncols++] = "ACTUAL_SUCCESS";
    t.head[t.ncols++] = "ACTUAL_RPS";
  } else {
    t.head[t.ncols++] = "SUCCESS";
    t.head[t.ncols++] = "RPS";
  }
  t.head[t.ncols++] = "LATENCY_P50";
  t.head[t.ncols++] = "LATENCY_P95";
  t.head[t.ncols++] = "LATENCY_P99";
  json_t *rows = json_object_get(j, "rows"), *r;
  size_t i;
  bool ok = true;
  json_array_foreach(rows, i, r) {
    char *c[MAX_COLS] = {0};
    size_t n = 0;
    c[n++] = text(r, "route");
    c[n++] = text(r, "service");
    if (wide) {
      c[n++] = cell(r, "effective_success", "%.2f%%", 100);
      c[n++] = cell(r, "effective_rps", "%.1frps", 1);
      c[n++] = cell(r, "actual_success", "%.2f%%", 100);
      c[n++] = cell(r, "actual_rps", "%.1frps", 1);
    } else {
      c[n++] = cell(r, "success", "%.2f%%", 100);
      c[n++] = cell(r, "rps", "%.1frps", 1);
    }
    c[n++] = cell(r, "latency_p50", "%.0fms", 1);
    c[n++] = cell(r, "latency_p95", "%.0fms", 1);
    c[n++] = cell(r, "latency_p99", "%.0fms", 1);
    if (!(ok = table_add(&t, c))) break;
  }
  if (ok && t.n == 0) printf("No routes found.\n");
  else if (ok) table_print(&t);
  table_free(&t);
  json_decref(j);
  if (!ok) fprintf(stderr, "%s: out of memory\n", o->prog);
  return ok ? MESHCTL_OK : MESHCTL_FAILED;
}

static int edges_cmd(const opts *o, int npos, char **pos) {
  char q[2048] = "";
  if (npos > 1) {
    fprintf(stderr, "%s: give at most one kind: deploy or po\n", o->prog);
    return meshctl_usage_error(o->prog);
  }
  if (o->from || o->to) {
    fprintf(stderr, "%s: edges takes no --from or --to\n", o->prog);
    return meshctl_usage_error(o->prog);
  }
  int rc;
  bool too_long = !qadd(q, sizeof q, "kind", npos ? pos[0] : "deploy") || !qadd(q, sizeof q, "namespace", o->ns) ||
                   (o->all && !qadd(q, sizeof q, "all_namespaces", "true"));
  json_t *j = fetch(o, "/api/edges", q, too_long, &rc);
  if (!j) return rc;
  bool wide = !strcmp(o->out, "wide");
  table t = {.head = {"SRC", "DST", "SRC_NS", "DST_NS", "SECURED", "CLIENT_ID", "SERVER_ID", "MSG"},
             .ncols = wide ? 8 : 7};
  json_t *rows = json_object_get(j, "rows"), *r;
  size_t i;
  bool ok = true;
  json_array_foreach(rows, i, r) {
    char *c[MAX_COLS] = {text(r, "src"), text(r, "dst"), text(r, "src_namespace"), text(r, "dst_namespace"),
                         strdup(json_is_true(json_object_get(r, "secured")) ? MESHCTL_MARK_OK : MESHCTL_MARK_ERR),
                         text(r, "client_id"), text(r, "server_id"), wide ? text(r, "no_tls_reason") : NULL};
    if (!(ok = table_add(&t, c))) break;
  }
  if (ok && t.n == 0) printf("No edges found.\n");
  else if (ok) table_print(&t);
  table_free(&t);
  json_decref(j);
  if (!ok) fprintf(stderr, "%s: out of memory\n", o->prog);
  return ok ? MESHCTL_OK : MESHCTL_FAILED;
}

static int run(int argc, char **argv) {
  enum { OPT_FROM = 256, OPT_TO, OPT_FROM_NS, OPT_TO_NS, OPT_ADDR };
  static const struct option lopts[] = {
      {"namespace", required_argument, NULL, 'n'},
      {"all-namespaces", no_argument, NULL, 'A'},
      {"time-window", required_argument, NULL, 't'},
      {"from", required_argument, NULL, OPT_FROM},
      {"to", required_argument, NULL, OPT_TO},
      {"from-namespace", required_argument, NULL, OPT_FROM_NS},
      {"to-namespace", required_argument, NULL, OPT_TO_NS},
      {"viz-addr", required_argument, NULL, OPT_ADDR},
      {"output", required_argument, NULL, 'o'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  opts o = {.prog = argv[0], .addr = DEFAULT_VIZ_ADDR, .ns = "default", .window = "1m", .out = "text"};
  if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? MESHCTL_USAGE : MESHCTL_OK;
  }
  /* The subcommand is the first word that is not a flag or a flag's value,
   * so that flags may come before it (meshctl viz --viz-addr A stat). */
  int at = 1;
  while (at < argc && argv[at][0] == '-') {
    static const char *const with_value[] = {"-n", "--namespace", "-t", "--time-window", "-o", "--output",
                                             "--from", "--to", "--from-namespace", "--to-namespace",
                                             "--viz-addr"};
    bool takes = false;
    for (size_t i = 0; i < sizeof with_value / sizeof with_value[0] && !takes; i++)
      takes = !strcmp(argv[at], with_value[i]);
    at += takes ? 2 : 1;
  }
  if (at >= argc) {
    fprintf(stderr, "%s: give a subcommand: stat, routes or edges\n", o.prog);
    return meshctl_usage_error(o.prog);
  }
  const char *sub = argv[at];
  int (*fn)(const opts *, int, char **) = !strcmp(sub, "stat")     ? stat_cmd
                                          : !strcmp(sub, "routes") ? routes_cmd
                                          : !strcmp(sub, "edges")  ? edges_cmd
                                                                   : NULL;
  if (!fn) {
    fprintf(stderr, "%s: unknown subcommand '%s' (stat, routes, edges)\n", o.prog, sub);
    return meshctl_usage_error(o.prog);
  }
  /* getopt reads from argv[1]: the subcommand moves to argv[0], where it
   * stands in for the program name. */
  for (int i = at; i > 1; i--) argv[i] = argv[i - 1];
  argv[1] = (char *)sub;
  argv++;
  argc--;
  int c;
  optind = 0;
  while ((c = getopt_long(argc, argv, "n:At:o:h", lopts, NULL)) != -1) {
    const char *a = optarg;
    if (a && strlen(a) > ARG_MAX_BYTES) {
      fprintf(stderr, "%s: an argument longer than %d bytes\n", o.prog, ARG_MAX_BYTES);
      return meshctl_usage_error(o.prog);
    }
    switch (c) {
    case 'n': o.ns = a; break;
    case 'A': o.all = true; break;
    case 't': o.window = a; break;
    case OPT_FROM: o.from = a; break;
    case OPT_TO: o.to = a; break;
    case OPT_FROM_NS: o.from_ns = a; break;
    case OPT_TO_NS: o.to_ns = a; break;
    case OPT_ADDR: o.addr = a; break;
    case 'o':
      if (strcmp(a, "text") && strcmp(a, "wide") && strcmp(a, "json")) {
        fprintf(stderr, "%s: unknown output format '%s' (use text, wide or json)\n", o.prog, a);
        return meshctl_usage_error(o.prog);
      }
      o.out = a;
      break;
    case 'h': usage(stdout); return MESHCTL_OK;
    default: return meshctl_usage_error(o.prog);
    }
  }
  for (int i = optind; i < argc; i++)
    if (strlen(argv[i]) > ARG_MAX_BYTES) {
      fprintf(stderr, "%s: an argument longer than %d bytes\n", o.prog, ARG_MAX_BYTES);
      return meshctl_usage_error(o.prog);
    }
  return fn(&o, argc - optind, argv + optind);
}

const meshctl_command meshctl_cmd_viz = {"viz", "golden metrics from mesh-viz: stat, routes, edges", run,
                                         usage};

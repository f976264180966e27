/* meshctl get: list the resources of the store (a directory, or etcd with its registrations), as kubectl get shows them. */
#include <ctype.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "daemon_etcd.h"
#include "meshctl.h"

static void usage(FILE *out) {
  fprintf(out,
          "Show the resources of the store: what mesh-destination serves.\n\n"
          "Usage:\n"
          "  meshctl get KIND [NAME] --store-dir DIR [-n NS | -A] [-o yaml|json|wide]\n"
          "  meshctl get KIND [NAME] --etcd-endpoints LIST [--etcd-prefix P] [...]\n\n"
          "KIND is one of service (svc), workload (wl), serviceprofile (sp), trafficsplit (ts),\n"
          "server (srv), serverauthorization (saz), authorizationpolicy, meshtlsauthentication,\n"
          "networkauthentication, httproute, or all; plurals work too.\n\n"
          "Flags:\n"
          "      --store-dir DIR       the manifest directory mesh-destination watches\n"
          "                            (default: $MESH_STORE_DIR)\n"
          "      --etcd-endpoints LIST the etcd members mesh-destination reads\n"
          "                            (http://IP:PORT,...), instead of a directory\n"
          "      --etcd-prefix P       the key prefix (default /libmesh/)\n"
          "  -n, --namespace NS        the namespace (default: default)\n"
          "  -A, --all-namespaces      every namespace\n"
          "  -o, --output FORMAT       a table (default), wide (with the file and line of\n"
          "                            each resource), yaml or json\n"
          "  -h, --help                show this help\n\n"
          "The whole store is loaded as mesh-destination loads it: a bad manifest fails the\n"
          "command with its file:line:col (or key). On etcd, the Workloads that proxies\n"
          "registered are listed too (SOURCE \"registration NS/NAME\" with -o wide).\n"
          "Exit status: 0 when found, 1 when NAME is not there or the store does not load,\n"
          "2 for a usage error.\n");
}

static const struct kind_alias {
  const char *kind; /* as the kind: field says it (compared without case) */
  const char *names[3];
} kinds[] = {
    {"Service", {"service", "services", "svc"}},
    {"Workload", {"workload", "workloads", "wl"}},
    {"ServiceProfile", {"serviceprofile", "serviceprofiles", "sp"}},
    {"TrafficSplit", {"trafficsplit", "trafficsplits", "ts"}},
    {"Server", {"server", "servers", "srv"}},
    {"ServerAuthorization", {"serverauthorization", "serverauthorizations", "saz"}},
    {"AuthorizationPolicy", {"authorizationpolicy", "authorizationpolicies", "authzpolicy"}},
    {"MeshTLSAuthentication", {"meshtlsauthentication", "meshtlsauthentications", "meshtls"}},
    {"NetworkAuthentication", {"networkauthentication", "networkauthentications", "netauthn"}},
    {"HTTPRoute", {"httproute", "httproutes", "route"}},
};

static const char *find_kind(const char *arg) {
  for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
    for (int k = 0; k < 3; k++)
      if (strcasecmp(arg, kinds[i].names[k]) == 0) return kinds[i].kind;
  if (strcasecmp(arg, "all") == 0) return "";
  return NULL;
}

/* ---- YAML out of JSON ---------------------------------------------------- */

/* Text that YAML would read as something else (or not at all) is quoted, as JSON. */
static bool needs_quotes(const char *s) {
  static const char *const words[] = {"true", "false", "yes", "no", "on", "off", "null", "~", "y", "n"};
  if (!*s || isspace((unsigned char)s[0]) || isspace((unsigned char)s[strlen(s) - 1])) return true;
  for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
    if (strcasecmp(s, words[i]) == 0) return true;
  if (strchr("-?:,[]{}#&*!|>'\"%@`0123456789.+", s[0])) return true;
  return strstr(s, ": ") || strstr(s, " #") || strpbrk(s, "\n\t\r") || s[strlen(s) - 1] == ':';
}

static void yaml_scalar(json_t *v) {
  if (json_is_string(v)) {
    const char *s = json_string_value(v);
    if (needs_quotes(s)) {
      char *q = json_dumps(v, JSON_ENCODE_ANY);
      printf("%s", q ? q : "\"\"");
      free(q);
    } else {
      printf("%s", s);
    }
  } else {
    char *t = json_dumps(v, JSON_ENCODE_ANY | JSON_REAL_PRECISION(9));
    printf("%s", t ? t : "null");
    free(t);
  }
}

static bool is_container(json_t *v) {
  return (json_is_object(v) && json_object_size(v)) || (json_is_array(v) && json_array_size(v));
}

static void yaml_value(json_t *v, int indent, bool inline_first);

/* After "key:" or "- ": a scalar on the same line, a container below. */
static void yaml_after_key(json_t *v, int indent) {
  if (!is_container(v)) {
    printf(" ");
    if (json_is_object(v)) printf("{}");
    else if (json_is_array(v)) printf("[]");
    else yaml_scalar(v);
    printf("\n");
  } else {
    printf("\n");
    yaml_value(v, json_is_array(v) ? indent : indent + 2, false);
  }
}

/* inline_first: the first line continues a "- " already printed. */
static void yaml_value(json_t *v, int indent, bool inline_first) {
  if (json_is_object(v)) {
    const char *k;
    json_t *x;
    bool first = true;
    json_object_foreach(v, k, x) {
      if (!(first && inline_first)) printf("%*s", indent, "");
      first = false;
      json_t *key = json_string(k);
      yaml_scalar(key);
      json_decref(key);
      printf(":");
      yaml_after_key(x, indent);
    }
  } else if (json_is_array(v)) {
    size_t i;
    json_t *x;
    json_array_foreach(v, i, x) {
      if (!(i == 0 && inline_first)) printf("%*s", indent, "");
      printf("-");
      if (is_container(x) && json_is_object(x)) {
        printf(" ");
        yaml_value(x, indent + 2, true);
      } else {
        yaml_after_key(x, indent + 2);
      }
    }
  } else {
    printf("%*s", indent, "");
    yaml_scalar(v);
    printf("\n");
  }
}

/* ---- Tables --------------------------------------------------------------- */

/* A table row: at most 8 cells. */
typedef struct {
  char *c[8];
} row;

static void print_rows(row *rows, size_t n, size_t ncols) {
  size_t w[8] = {0};
  for (size_t r = 0; r < n; r++)
    for (size_t c = 0; c < ncols; c++)
      if (strlen(rows[r].c[c]) > w[c]) w[c] = strlen(rows[r].c[c]);
  for (size_t r = 0; r < n; r++)
    for (size_t c = 0; c < ncols; c++)
      if (c + 1 < ncols) printf("%-*s   ", (int)w[c], rows[r].c[c]);
      else printf("%s\n", rows[r].c[c]);
}

/* Joins list items with ',' into buf: each item through fmt_item. */
static void join(char *buf, size_t size, json_t *list, void (*item)(json_t *, char *, size_t)) {
  size_t i, off = 0;
  json_t *x;
  buf[0] = '\0';
  json_array_foreach(list, i, x) {
    char one[256];
    item(x, one, sizeof one);
    int n = snprintf(buf + off, size - off, "%s%s", off ? "," : "", one);
    if (n < 0 || (size_t)n >= size - off) break;
    off += (size_t)n;
  }
}

static void scalar_text(json_t *v, char *buf, size_t size) {
  if (json_is_string(v)) snprintf(buf, size, "%s", json_string_value(v));
  else if (json_is_integer(v)) snprintf(buf, size, "%lld", (long long)json_integer_value(v));
  else if (json_is_real(v)) snprintf(buf, size, "%g", json_real_value(v));
  else if (json_is_boolean(v)) snprintf(buf, size, "%s", json_is_true(v) ? "true" : "false");
  else snprintf(buf, size, "-");
}

static void port_item(json_t *p, char *buf, size_t size) {
  char port[32], proto[64] = "";
  scalar_text(json_object_get(p, "port"), port, sizeof port);
  json_t *pr = json_object_get(p, "protocol");
  if (pr) scalar_text(pr, proto, sizeof proto);
  snprintf(buf, size, "%s%s%s", port, *proto ? "/" : "", proto);
}

static void backend_item(json_t *b, char *buf, size_t size) {
  char w[64];
  scalar_text(json_object_get(b, "weight"), w, sizeof w);
  const char *svc = json_string_value(json_object_get(b, "service"));
  snprintf(buf, size, "%s=%s", svc ? svc : "?", w);
}

static void labels_text(json_t *map, char *buf, size_t size) {
  const char *k;
  json_t *v;
  size_t off = 0;
  buf[0] = '\0';
  json_object_foreach(map, k, v) {
    char val[128];
    scalar_text(v, val, sizeof val);
    int n = snprintf(buf + off, size - off, "%s%s=%s", off ? "," : "", k, val);
    if (n < 0 || (size_t)n >= size - off) break;
    off += (size_t)n;
  }
}

static void addr_item(json_t *a, char *buf, size_t size) { scalar_text(a, buf, size); }

/* Kind-specific columns: names into head, values into vals (at most 3). */
static size_t columns(const char *kind, json_t *doc, const char **head, char vals[3][512]) {
  json_t *spec = json_object_get(doc, "spec");
  if (!strcasecmp(kind, "Service")) {
    head[0] = "PORTS";
    head[1] = "SELECTOR";
    join(vals[0], sizeof vals[0], json_object_get(spec, "ports"), port_item);
    labels_text(json_object_get(spec, "selector"), vals[1], sizeof vals[1]);
    return 2;
  }
  if (!strcasecmp(kind, "Workload")) {
    head[0] = "ADDRESS";
    head[1] = "SERVICE-ACCOUNT";
    head[2] = "LABELS";
    json_t *a = json_object_get(spec, "address");
    if (a) scalar_text(a, vals[0], sizeof vals[0]);
    else join(vals[0], sizeof vals[0], json_object_get(spec, "addresses"), addr_item);
    json_t *sa = json_object_get(spec, "serviceAccount");
    snprintf(vals[1], sizeof vals[1], "%s", sa ? json_string_value(sa) : "default");
    labels_text(json_object_get(json_object_get(doc, "metadata"), "labels"), vals[2], sizeof vals[2]);
    return 3;
  }
  if (!strcasecmp(kind, "ServiceProfile")) {
    head[0] = "ROUTES";
    snprintf(vals[0], sizeof vals[0], "%zu", json_array_size(json_object_get(spec, "routes")));
    return 1;
  }
  if (!strcasecmp(kind, "TrafficSplit")) {
    head[0] = "SERVICE";
    head[1] = "BACKENDS";
    scalar_text(json_object_get(spec, "service"), vals[0], sizeof vals[0]);
    join(vals[1], sizeof vals[1], json_object_get(spec, "backends"), backend_item);
    return 2;
  }
  return 0;
}

static void free_rows(row *rows, size_t n) {
  for (size_t r = 0; r < n; r++)
    for (int c = 0; c < 8; c++) free(rows[r].c[c]);
  free(rows);
}

/* ---- The store ------------------------------------------------------------ */

typedef struct {
  const char **src, **buf;
  size_t *len, n, cap;
} kvset;

static bool kvset_add(kvset *s, const char *src, char *val, size_t len) {
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 64;
    const char **a = realloc(s->src, cap * sizeof *a);
    if (a) s->src = a;
    const char **b = a ? realloc(s->buf, cap * sizeof *b) : NULL;
    if (b) s->buf = b;
    size_t *l = b ? realloc(s->len, cap * sizeof *l) : NULL;
    if (l) s->len = l;
    if (!l) return false;
    s->cap = cap;
  }
  char *copy = strdup(src);
  if (!copy) return false;
  s->src[s->n] = copy;
  s->buf[s->n] = val;
  s->len[s->n++] = len;
  return true;
}

static void kvset_free(kvset *s) {
  for (size_t i = 0; i < s->n; i++) {
    free((char *)s->src[i]);
    free((char *)s->buf[i]);
  }
  free(s->src);
  free(s->buf);
  free(s->len);
}

/* Manifests in one set, registrations in the other: mesh-destination loads
 * the manifests first. */
static bool add_kv(void *ud, int kind, const char *key, const char *source, char *val, size_t len) {
  kvset *sets = ud;
  (void)key;
  if (kvset_add(&sets[kind == ETCD_KEY_REGISTRATION], source, val, len)) return true;
  free(val);
  return false;
}

/* The store as mesh-destination serves it: a directory, or etcd's keys. */
static int load_store(mesh_ctx *ctx, const char *prog, const char *dir, const meshctl_etcd *etcd,
                      mesh_store **st) {
  mesh_store_opts *so = NULL;
  mesh_diags *diags = NULL;
  kvset sets[2] = {{0}};
  const char *where = dir ? dir : etcd->prefix;
  long long rev = 0;
  int rc = mesh_store_opts_new(ctx, &so);
  if (!rc && dir) {
    rc = mesh_store_opts_set_dir(so, dir);
    if (!rc) rc = mesh_diags_new(ctx, &diags);
    if (!rc) rc = mesh_store_new(ctx, so, diags, st);
    meshctl_print_diags(stderr, diags);
  } else if (!rc) {
    if (!meshctl_etcd_read(etcd, &rev, add_kv, sets)) rc = MESH_ERR_IO;
    for (size_t i = 0; !rc && i < sets[1].n; i++)
      if (!kvset_add(&sets[0], sets[1].src[i], (char *)sets[1].buf[i], sets[1].len[i])) rc = MESH_ERR_NOMEM;
      else sets[1].buf[i] = NULL; /* moved */
    if (!rc) rc = mesh_store_new_fed(ctx, so, where, st);
    if (!rc) rc = mesh_store_load_buffers(*st, sets[0].n, sets[0].src, sets[0].buf, sets[0].len);
    if (rc == MESH_ERR_PARSE || rc == MESH_ERR_LIMIT)
      fprintf(stderr, "%s\n", mesh_store_last_error(*st) ? mesh_store_last_error(*st) : "");
  }
  if (rc < 0)
    fprintf(stderr, "%s: %s: the store does not load: %s\n", prog, where, mesh_strerror(rc));
  kvset_free(&sets[0]);
  kvset_free(&sets[1]);
  mesh_diags_free(diags);
  mesh_store_opts_free(so);
  return rc;
}

static int run(int argc, char **argv) {
  static const struct option opts[] = {
      {"store-dir", required_argument, NULL, 'd'},
      {"etcd-endpoints", required_argument, NULL, 'E'},
      {"etcd-prefix", required_argument, NULL, 'P'},
      {"namespace", required_argument, NULL, 'n'},
      {"all-namespaces", no_argument, NULL, 'A'},
      {"output", required_argument, NULL, 'o'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *prog = argv[0], *dir = getenv("MESH_STORE_DIR"), *ns = "default", *out = "table";
  const char *endpoints = NULL;
  meshctl_etcd etcd = {.prog = prog, .prefix = MESHCTL_ETCD_DEFAULT_PREFIX, .timeout_ms = 5000};
  bool all_ns = false, dir_flag = false;
  int c;
  optind = 0;
  while ((c = getopt_long(argc, argv, "n:Ao:h", opts, NULL)) != -1) {
    switch (c) {
    case 'd':
      dir = optarg;
      dir_flag = true;
      break;
    case 'E': endpoints = optarg; break;
    case 'P': etcd.prefix = optarg; break;
    case 'n': ns = optarg; break;
    case 'A': all_ns = true; break;
    case 'o':
      if (strcmp(optarg, "yaml") && strcmp(optarg, "json") && strcmp(optarg, "wide")) {
        fprintf(stderr, "%s: unknown output format '%s' (use yaml, json or wide)\n", prog, optarg);
        return meshctl_usage_error(prog);
      }
      out = optarg;
      break;
    case 'h': usage(stdout); return MESHCTL_OK;
    default: return meshctl_usage_error(prog);
    }
  }
  if (optind >= argc || argc - optind > 2) {
    fprintf(stderr, "%s: give a KIND and at most one NAME\n", prog);
    return meshctl_usage_error(prog);
  }
  const char *kind = find_kind(argv[optind]);
  const char *name = argc - optind == 2 ? argv[optind + 1] : NULL;
  if (!kind) {
    fprintf(stderr, "%s: unknown kind '%s'\n", prog, argv[optind]);
    return meshctl_usage_error(prog);
  }
  if (endpoints && dir_flag) {
    fprintf(stderr, "%s: give either --store-dir DIR or --etcd-endpoints LIST\n", prog);
    return meshctl_usage_error(prog);
  }
  if (endpoints) {
    dir = NULL; /* the flag wins over MESH_STORE_DIR */
    if (!*etcd.prefix) {
      fprintf(stderr, "%s: --etcd-prefix is empty\n", prog);
      return meshctl_usage_error(prog);
    }
    if (!meshctl_etcd_endpoints(&etcd, endpoints)) return meshctl_usage_error(prog);
  } else if (!dir || !*dir) {
    fprintf(stderr, "%s: give the store with --store-dir DIR (or MESH_STORE_DIR) or "
                    "--etcd-endpoints LIST\n", prog);
    return meshctl_usage_error(prog);
  }
  mesh_ctx *ctx = meshctl_ctx(prog);
  if (!ctx) return MESHCTL_FAILED;
  mesh_store *st = NULL;
  int status = MESHCTL_FAILED;
  if (load_store(ctx, prog, dir, &etcd, &st) < 0) goto done;
  mesh_snapshot *snap = mesh_store_snapshot(st);
  json_t *items = json_array();
  row *rows = NULL;
  size_t nrows = 0, ncols = 0;
  bool wide = !strcmp(out, "wide"), table_out = wide || !strcmp(out, "table");
  for (size_t i = 0; items && i < mesh_snapshot_count(snap); i++) {
    const char *k = mesh_snapshot_kind_name(snap, i), *n = mesh_snapshot_name(snap, i);
    if (*kind ? (!k || strcasecmp(k, kind) != 0) : mesh_snapshot_kind(snap, i) == MESH_KIND_OTHER)
      continue;
    if (!all_ns && strcmp(mesh_snapshot_namespace(snap, i), ns) != 0) continue;
    if (name && (!n || strcmp(n, name) != 0)) continue;
    char *text = NULL;
    json_t *doc = mesh_snapshot_document_json(snap, i, &text) == 0 ? json_loads(text, 0, NULL) : NULL;
    mesh_free_string(ctx, text);
    if (!doc) continue;
    if (table_out) {
      row *nr = realloc(rows, (nrows + 2) * sizeof *rows);
      if (!nr) {
        json_decref(doc);
        break;
      }
      rows = nr;
      if (nrows == 0) memset(&rows[nrows++], 0, sizeof *rows); /* the header */
      row *r = &rows[nrows++];
      memset(r, 0, sizeof *r);
      const char *head[8];
      size_t col = 0;
      if (all_ns) head[col] = "NAMESPACE", r->c[col++] = strdup(mesh_snapshot_namespace(snap, i));
      head[col] = "NAME", r->c[col++] = strdup(n ? n : "");
      if (!*kind) head[col] = "KIND", r->c[col++] = strdup(k ? k : "");
      const char *spec_head[3];
      char vals[3][512] = {"", "", ""};
      size_t ns_cols = *kind ? columns(kind, doc, spec_head, vals) : 0;
      for (size_t x = 0; x < ns_cols; x++) {
        head[col] = spec_head[x];
        r->c[col++] = strdup(*vals[x] ? vals[x] : "<none>");
      }
      if (wide) {
        char src[4200];
        snprintf(src, sizeof src, "%s:%u", mesh_snapshot_source(snap, i),
                 (unsigned)mesh_snapshot_line(snap, i));
        head[col] = "SOURCE", r->c[col++] = strdup(src);
      }
      if (!rows[0].c[0])
        for (size_t x = 0; x < col; x++) rows[0].c[x] = strdup(head[x]);
      ncols = col;
    }
    json_array_append_new(items, doc);
  }
  mesh_snapshot_unref(snap);
  if (!items) goto done;
  if (name && json_array_size(items) == 0) {
    fprintf(stderr, "%s: %s \"%s\" not found in namespace %s\n", prog, *kind ? kind : "resource",
            name, all_ns ? "(any)" : ns);
  } else if (table_out) {
    if (nrows) print_rows(rows, nrows, ncols);
    else fprintf(stderr, "No resources found%s%s.\n", all_ns ? "" : " in namespace ",
                 all_ns ? "" : ns);
    status = MESHCTL_OK;
  } else {
    json_t *outj = name ? json_incref(json_array_get(items, 0))
                        : json_pack("{s:s, s:s, s:O}", "apiVersion", "v1", "kind", "List",
                                    "items", items);
    if (!strcmp(out, "json")) {
      json_dumpf(outj, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(9));
      printf("\n");
    } else {
      yaml_value(outj, 0, false);
    }
    json_decref(outj);
    status = fflush(stdout) == 0 ? MESHCTL_OK : MESHCTL_FAILED;
  }
  free_rows(rows, nrows);
  json_decref(items);
done:
  mesh_store_free(st);
  mesh_ctx_free(ctx);
  return status;
}

const meshctl_command meshctl_cmd_get = {
    .name = "get",
    .summary = "show the Services, Workloads, profiles... of the store (a directory or etcd)",
    .run = run,
    .usage = usage,
};

/* meshctl authz: which Servers, routes and authorizations decide a workload's inbound traffic, as `linkerd viz authz` lists them. */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "meshctl.h"

static void usage(FILE *out) {
  fprintf(out,
          "Show the inbound authorization policy of a workload: for each of its ports the\n"
          "Server that selects it, the Server's routes, and the authorizations with the\n"
          "clients they admit (identities, service accounts, networks, unauthenticated),\n"
          "in the order a decision tries them; then the default policy of the other ports.\n\n"
          "Usage:\n"
          "  meshctl authz WORKLOAD [-n NS] --store-dir DIR [-o text|json]\n\n"
          "Flags:\n"
          "      --store-dir DIR               the manifest directory mesh-destination watches\n"
          "                                    (default: $MESH_STORE_DIR)\n"
          "  -n, --namespace NS                the Workload's namespace (default: default)\n"
          "  -o, --output FORMAT               text (default) or json\n"
          "      --default-inbound-policy P    as meshd's: for ports no Server selects\n"
          "                                    (default all-unauthenticated)\n"
          "      --cluster-networks CIDRS      as meshd's: for the cluster-* policies\n"
          "      --trust-domain NAME           of the identities serviceAccounts stand for\n"
          "                                    (cluster.local)\n"
          "      --identity-namespace NS       the control plane's namespace in them (linkerd)\n"
          "  -h, --help                        show this help\n\n"
          "The policy is what mesh-destination streams to the workload's proxy\n"
          "(InboundServerPolicies.WatchWorkload), compiled as the proxy compiles it.\n"
          "Exit status: 0 when shown, 1 when the Workload is not in the store or the\n"
          "store or its policy does not load, 2 for a usage error.\n");
}

static const char *const proto_names[] = {"unknown", "HTTP/1", "HTTP/2", "gRPC", "opaque", "TLS"};

static const char *proto_name(int32_t p) {
  return p >= 0 && p < (int32_t)(sizeof proto_names / sizeof proto_names[0]) ? proto_names[p] : "?";
}

/* ---- one authorization, as JSON and as text ---- */

static json_t *authz_json(const mesh_policy_authz *a) {
  mesh_policy_authz_info ai;
  if (!a || mesh_policy_authz_describe(a, &ai) < 0) return NULL;
  json_t *clients = json_array();
  for (size_t k = 0; !ai.never && k < ai.nclauses; k++) {
    mesh_policy_clause_info ci;
    if (mesh_policy_authz_clause(a, k, &ci) < 0) continue;
    json_t *ids = json_array(), *nets = json_array();
    char buf[512];
    for (size_t m = 0; m < ci.nidentities; m++)
      if (mesh_policy_authz_identity(a, k, m, buf, sizeof buf) == 0)
        json_array_append_new(ids, json_string(buf));
    for (size_t m = 0; m < ci.nnetworks; m++) {
      if (mesh_policy_authz_network(a, k, m, 0, buf, sizeof buf) < 0) continue;
      json_t *net = json_pack("{s:s, s:[]}", "cidr", buf, "except");
      for (size_t e = 1; mesh_policy_authz_network(a, k, m, e, buf, sizeof buf) == 0; e++)
        json_array_append_new(json_object_get(net, "except"), json_string(buf));
      json_array_append_new(nets, net);
    }
    const char *authn = ci.authn == MESH_POLICY_AUTHN_MESH  ? "mesh-tls"
                        : ci.authn == MESH_POLICY_AUTHN_TLS ? "tls"
                                                            : "unauthenticated";
    json_array_append_new(clients, json_pack("{s:s, s:o, s:o}", "authentication", authn,
                                             "identities", ids, "networks", nets));
  }
  return json_pack("{s:s, s:s, s:b, s:o}", "kind", ai.kind, "name", ai.name, "admits_no_one",
                   ai.never != 0, "clients", clients);
}

/* Appends to a fixed buffer, cutting with "..." when it is full. */
static void cat(char *buf, size_t size, const char *s) {
  size_t len = strlen(buf), n = strlen(s);
  if (len + n < size) {
    memcpy(buf + len, s, n + 1);
  } else if (size > 4 && len < size - 4) {
    memcpy(buf + len, s, size - 4 - len);
    memcpy(buf + size - 4, "...", 4);
  }
}

/* What an authorization admits, for a person: "mTLS identity a, b from 10.0.0.0/8". */
static void clients_text(const json_t *az, const char *default_name, char *buf, size_t size) {
  buf[0] = '\0';
  if (json_is_true(json_object_get(az, "admits_no_one"))) {
    cat(buf, size, default_name && !strcmp(default_name, "audit")
                       ? "no one (everyone is let in, flagged as audit)"
                       : "no one");
    return;
  }
  size_t k;
  json_t *cl;
  json_array_foreach(json_object_get(az, "clients"), k, cl) {
    if (k) cat(buf, size, "; and ");
    const char *authn = json_string_value(json_object_get(cl, "authentication"));
    json_t *ids = json_object_get(cl, "identities"), *nets = json_object_get(cl, "networks");
    if (!strcmp(authn, "mesh-tls")) {
      size_t n = json_array_size(ids);
      if (n == 1 && !strcmp(json_string_value(json_array_get(ids, 0)), "*")) {
        cat(buf, size, "any mesh identity");
      } else {
        cat(buf, size, n == 1 ? "mTLS identity " : "mTLS identities ");
        size_t i;
        json_t *id;
        json_array_foreach(ids, i, id) {
          if (i) cat(buf, size, ", ");
          cat(buf, size, json_string_value(id));
        }
      }
    } else {
      cat(buf, size, !strcmp(authn, "tls") ? "any TLS client" : "anyone (unauthenticated)");
    }
    size_t i;
    json_t *net;
    json_array_foreach(nets, i, net) {
      cat(buf, size, i ? ", " : " from ");
      cat(buf, size, json_string_value(json_object_get(net, "cidr")));
      size_t e;
      json_t *ex;
      json_array_foreach(json_object_get(net, "except"), e, ex) {
        cat(buf, size, e ? ", " : " except ");
        cat(buf, size, json_string_value(ex));
      }
    }
  }
}

/* ---- the report ---- */

/* The workload's ports from the message: [{"name":..., "port":...}]. */
typedef struct {
  uint32_t port;
  const char *name;
} wport;

static json_t *server_json(const mesh_policy *pol, size_t i) {
  mesh_policy_server_info si;
  if (mesh_policy_server_describe(pol, i, &si) < 0) return NULL;
  json_t *routes = json_array(), *authz = json_array();
  for (size_t j = 0; j < si.nroutes; j++) {
    mesh_policy_route_info ri;
    if (mesh_policy_route_describe(pol, i, j, &ri) < 0) continue;
    json_t *raz = json_array();
    for (size_t k = 0; k < ri.nauthz; k++) {
      json_t *a = authz_json(mesh_policy_route_authz(pol, i, j, k));
      if (a) json_array_append_new(raz, a);
    }
    json_array_append_new(routes, json_pack("{s:s, s:s, s:I, s:o}", "name", ri.name, "namespace",
                                            ri.ns, "rules", (json_int_t)ri.nrules,
                                            "authorizations", raz));
  }
  for (size_t k = 0; k < si.nauthz; k++) {
    json_t *a = authz_json(mesh_policy_server_authz(pol, i, k));
    if (a) json_array_append_new(authz, a);
  }
  json_t *access = authz_json(mesh_policy_default_authz(pol, si.access_policy));
  json_t *s = json_pack("{s:s, s:s, s:s, s:s, s:o, s:o, s:o}", "name", si.name, "namespace", si.ns,
                        "protocol", proto_name(si.protocol), "access_policy",
                        mesh_policy_default_name(si.access_policy), "routes", routes,
                        "authorizations", authz, "access", access ? access : json_null());
  if (s && si.port_name) json_object_set_new(s, "port", json_string(si.port_name));
  else if (s) json_object_set_new(s, "port", json_integer(si.port));
  return s;
}

/* The whole report as JSON: what -o json prints and the table is made from. */
static json_t *report(const mesh_policy *pol, json_t *workload) {
  const char *ns = json_string_value(json_object_get(workload, "namespace"));
  json_t *lj = json_object_get(workload, "labels");
  size_t nl = json_object_size(lj), li = 0;
  mesh_policy_label *labels = calloc(nl ? nl : 1, sizeof *labels);
  const char *key;
  json_t *val;
  json_object_foreach(lj, key, val) {
    if (!labels) break;
    labels[li].name = key;
    labels[li++].value = json_is_string(val) ? json_string_value(val) : "";
  }
  /* The ports: those the Workload declares, then those the Servers that
   * select it name by number (a port need not be declared to be served). */
  json_t *pj = json_object_get(workload, "ports");
  size_t np = 0, cap = json_array_size(pj) + mesh_policy_server_count(pol);
  wport *ports = calloc(cap ? cap : 1, sizeof *ports);
  size_t i;
  json_t *p;
  json_array_foreach(pj, i, p) {
    json_int_t n = json_integer_value(json_object_get(p, "port"));
    if (ports && n > 0 && n <= 65535)
      ports[np++] = (wport){(uint32_t)n, json_string_value(json_object_get(p, "name"))};
  }
  mesh_policy_workload any = {.ns = ns, .labels = labels, .nlabels = li};
  json_t *unmatched = json_array();
  for (size_t s = 0; ports && s < mesh_policy_server_count(pol); s++) {
    if (!mesh_policy_server_selects(pol, s, &any)) continue;
    mesh_policy_server_info si;
    mesh_policy_server_describe(pol, s, &si);
    bool known = false;
    for (size_t k = 0; k < np && !known; k++)
      known = si.port_name ? ports[k].name && !strcmp(ports[k].name, si.port_name)
                           : ports[k].port == si.port;
    if (known) continue;
    if (si.port_name) json_array_append_new(unmatched, server_json(pol, s));
    else ports[np++] = (wport){si.port, NULL};
  }
  json_t *out_ports = json_array();
  for (size_t k = 0; k < np; k++) {
    mesh_policy_workload wl = {.ns = ns, .labels = labels, .nlabels = li, .port = ports[k].port,
                               .port_name = ports[k].name};
    size_t s;
    json_t *e = json_pack("{s:I}", "port", (json_int_t)ports[k].port);
    if (ports[k].name) json_object_set_new(e, "name", json_string(ports[k].name));
    if (mesh_policy_server_find(pol, &wl, &s) == 0) json_object_set_new(e, "server", server_json(pol, s));
    else json_object_set_new(e, "server", json_null());
    json_array_append_new(out_ports, e);
  }
  int32_t dp = mesh_policy_default(pol);
  json_t *dflt = authz_json(mesh_policy_default_authz(pol, dp));
  json_t *r = json_pack("{s:O, s:o, s:o, s:{s:s, s:o}}", "workload", workload, "ports", out_ports,
                        "servers_on_undeclared_ports", unmatched, "default", "policy",
                        mesh_policy_default_name(dp), "authorization", dflt ? dflt : json_null());
  free(labels);
  free(ports);
  return r;
}

typedef struct {
  char *c[6];
} row;

static void add_row(row **rows, size_t *n, const char *a, const char *b, const char *c,
                    const char *d, const char *e, const char *f) {
  row *nr = realloc(*rows, (*n + 1) * sizeof *nr);
  if (!nr) return;
  *rows = nr;
  const char *v[6] = {a, b, c, d, e, f};
  for (int i = 0; i < 6; i++) nr[*n].c[i] = strdup(v[i] ? v[i] : "");
  (*n)++;
}

/* Rows for one server on one port: each route with the authorizations a
 * request on it is tried against, in order (the route's, the Server's,
 * then its accessPolicy). */
static void server_rows(row **rows, size_t *n, const char *port, json_t *s) {
  const char *name = json_string_value(json_object_get(s, "name")),
             *proto = json_string_value(json_object_get(s, "protocol")),
             *access = json_string_value(json_object_get(s, "access_policy"));
  json_t *routes = json_object_get(s, "routes");
  size_t nr = json_array_size(routes);
  for (size_t r = 0; r < (nr ? nr : 1); r++) {
    json_t *rt = nr ? json_array_get(routes, r) : NULL;
    const char *route = rt ? json_string_value(json_object_get(rt, "name")) : "default";
    json_t *lists[2] = {rt ? json_object_get(rt, "authorizations") : NULL,
                        json_object_get(s, "authorizations")};
    char who[2048], what[600];
    for (int l = 0; l < 2; l++) {
      size_t k;
      json_t *az;
      json_array_foreach(lists[l], k, az) {
        snprintf(what, sizeof what, "%s/%s", json_string_value(json_object_get(az, "kind")),
                 json_string_value(json_object_get(az, "name")));
        clients_text(az, NULL, who, sizeof who);
        add_row(rows, n, port, name, proto, route, what, who);
      }
    }
    snprintf(what, sizeof what, "accessPolicy/%s", access);
    clients_text(json_object_get(s, "access"), access, who, sizeof who);
    add_row(rows, n, port, name, proto, route, what, who);
  }
}

static void print_table(row *rows, size_t n) {
  size_t w[6] = {0};
  for (size_t r = 0; r < n; r++)
    for (int c = 0; c < 6; c++)
      if (strlen(rows[r].c[c]) > w[c]) w[c] = strlen(rows[r].c[c]);
  for (size_t r = 0; r < n; r++) {
    for (int c = 0; c < 5; c++) printf("%-*s   ", (int)w[c], rows[r].c[c]);
    printf("%s\n", rows[r].c[5]);
  }
}

static void print_text(json_t *rep) {
  json_t *wl = json_object_get(rep, "workload");
  row *rows = NULL;
  size_t n = 0;
  add_row(&rows, &n, "PORT", "SERVER", "PROTOCOL", "ROUTE", "AUTHORIZATION", "CLIENTS");
  size_t i;
  json_t *p;
  json_array_foreach(json_object_get(rep, "ports"), i, p) {
    char port[96];
    const char *pn = json_string_value(json_object_get(p, "name"));
    snprintf(port, sizeof port, "%lld%s%s", (long long)json_integer_value(json_object_get(p, "port")),
             pn ? "/" : "", pn ? pn : "");
    json_t *s = json_object_get(p, "server");
    if (json_is_object(s)) {
      server_rows(&rows, &n, port, s);
    } else {
      char who[2048], what[96];
      json_t *d = json_object_get(rep, "default");
      const char *dp = json_string_value(json_object_get(d, "policy"));
      snprintf(what, sizeof what, "default/%s", dp);
      clients_text(json_object_get(d, "authorization"), dp, who, sizeof who);
      add_row(&rows, &n, port, "default", "unknown", "default", what, who);
    }
  }
  json_array_foreach(json_object_get(rep, "servers_on_undeclared_ports"), i, p) {
    char port[96];
    snprintf(port, sizeof port, "%s?", json_string_value(json_object_get(p, "port")));
    server_rows(&rows, &n, port, p);
  }
  {
    char who[2048], what[96];
    json_t *d = json_object_get(rep, "default");
    const char *dp = json_string_value(json_object_get(d, "policy"));
    snprintf(what, sizeof what, "default/%s", dp);
    clients_text(json_object_get(d, "authorization"), dp, who, sizeof who);
    add_row(&rows, &n, "*", "default", "unknown", "default", what, who);
  }
  printf("Workload %s/%s\n\n", json_string_value(json_object_get(wl, "namespace")),
         json_string_value(json_object_get(wl, "name")));
  print_table(rows, n);
  if (json_array_size(json_object_get(rep, "servers_on_undeclared_ports")))
    printf("\nPORT \"NAME?\": a Server selects the workload by a port name its Workload does not "
           "declare.\n");
  printf("\nEach route tries its authorizations top to bottom; the first that admits the client "
         "decides. PORT \"*\": every other port.\n");
  for (size_t r = 0; r < n; r++)
    for (int c = 0; c < 6; c++) free(rows[r].c[c]);
  free(rows);
}

static int run(int argc, char **argv) {
  enum { OPT_DIR = 256, OPT_DEFAULT, OPT_NETS, OPT_TD, OPT_NS };
  static const struct option opts[] = {
      {"store-dir", required_argument, NULL, OPT_DIR},
      {"namespace", required_argument, NULL, 'n'},
      {"output", required_argument, NULL, 'o'},
      {"default-inbound-policy", required_argument, NULL, OPT_DEFAULT},
      {"cluster-networks", required_argument, NULL, OPT_NETS},
      {"trust-domain", required_argument, NULL, OPT_TD},
      {"identity-namespace", required_argument, NULL, OPT_NS},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *prog = argv[0], *dir = getenv("MESH_STORE_DIR"), *ns = "default", *nets = NULL,
             *td = NULL, *cpns = NULL;
  int32_t dflt = 0;
  bool json_out = false;
  int c;
  optind = 0;
  while ((c = getopt_long(argc, argv, "n:o:h", opts, NULL)) != -1) {
    switch (c) {
    case OPT_DIR: dir = optarg; break;
    case 'n': ns = optarg; break;
    case 'o':
      if (!meshctl_parse_output(prog, optarg, &json_out)) return meshctl_usage_error(prog);
      break;
    case OPT_DEFAULT:
      if ((dflt = mesh_policy_default_parse(optarg)) < 0) {
        fprintf(stderr, "%s: unknown default policy '%s' (all-unauthenticated, "
                        "all-authenticated, cluster-authenticated, cluster-unauthenticated, deny, "
                        "audit)\n", prog, optarg);
        return meshctl_usage_error(prog);
      }
      break;
    case OPT_NETS: nets = optarg; break;
    case OPT_TD: td = optarg; break;
    case OPT_NS: cpns = optarg; break;
    case 'h': usage(stdout); return MESHCTL_OK;
    default: return meshctl_usage_error(prog);
    }
  }
  if (argc - optind != 1) {
    fprintf(stderr, "%s: give one WORKLOAD\n", prog);
    return meshctl_usage_error(prog);
  }
  const char *name = argv[optind];
  if (!dir || !*dir) {
    fprintf(stderr, "%s: give the store directory with --store-dir DIR (or MESH_STORE_DIR)\n", prog);
    return meshctl_usage_error(prog);
  }
  mesh_ctx *ctx = meshctl_ctx(prog);
  if (!ctx) return MESHCTL_FAILED;
  mesh_store_opts *so = NULL;
  mesh_policy_opts *po = NULL;
  mesh_diags *diags = NULL;
  mesh_store *st = NULL;
  mesh_snapshot *snap = NULL;
  mesh_policy *pol = NULL;
  char *msg = NULL;
  json_t *mj = NULL, *rep = NULL;
  int status = MESHCTL_FAILED;
  const char *why = NULL;
  int rc = mesh_policy_opts_new(ctx, &po);
  if (!rc && dflt) rc = mesh_policy_opts_set_default(po, dflt);
  if (!rc && nets && (rc = mesh_policy_opts_set_cluster_networks(po, nets, &why)) < 0) {
    fprintf(stderr, "%s: --cluster-networks %s: %s\n", prog, nets, why ? why : mesh_strerror(rc));
    status = MESHCTL_USAGE;
    goto done;
  }
  if (!rc && (td || cpns) && (rc = mesh_policy_opts_set_identity_domain(po, cpns, td)) < 0) {
    fprintf(stderr, "%s: --trust-domain is a DNS name, --identity-namespace a DNS label\n", prog);
    status = MESHCTL_USAGE;
    goto done;
  }
  /* As meshd: its peer is another proxy, so loopback earns nothing by itself. */
  if (!rc) rc = mesh_policy_opts_set_allow_localhost(po, 0);
  if (!rc) rc = mesh_store_opts_new(ctx, &so);
  if (!rc) rc = mesh_store_opts_set_dir(so, dir);
  if (!rc) rc = mesh_diags_new(ctx, &diags);
  if (!rc) rc = mesh_store_new(ctx, so, diags, &st);
  if (rc < 0) {
    meshctl_print_diags(stderr, diags);
    fprintf(stderr, "%s: %s: the store does not load: %s\n", prog, dir, mesh_strerror(rc));
    goto done;
  }
  snap = mesh_store_snapshot(st);
  if ((rc = mesh_snapshot_policy_json(snap, ns, name, &msg)) < 0) {
    if (rc == MESH_ERR_NOT_FOUND)
      fprintf(stderr, "%s: no Workload \"%s\" in namespace %s of %s (meshctl get workloads -n %s "
                      "lists them)\n", prog, name, ns, dir, ns);
    else
      fprintf(stderr, "%s: %s/%s: %s\n", prog, ns, name, mesh_strerror(rc));
    goto done;
  }
  /* The same path as a proxy that got this message from mesh-destination. */
  mesh_diags_clear(diags);
  if ((rc = mesh_policy_compile_message(ctx, msg, strlen(msg), po, diags, &pol)) < 0) {
    meshctl_print_diags(stderr, diags);
    fprintf(stderr, "%s: the policy of %s/%s does not compile: %s\n", prog, ns, name,
            mesh_strerror(rc));
    goto done;
  }
  mj = json_loads(msg, 0, NULL);
  rep = mj ? report(pol, json_object_get(mj, "workload")) : NULL;
  if (!rep) {
    fprintf(stderr, "%s: out of memory\n", prog);
    goto done;
  }
  if (json_out) {
    json_dumpf(rep, stdout, JSON_INDENT(2));
    printf("\n");
  } else {
    print_text(rep);
  }
  status = fflush(stdout) == 0 ? MESHCTL_OK : MESHCTL_FAILED;
done:
  json_decref(rep);
  json_decref(mj);
  mesh_free_string(ctx, msg);
  mesh_policy_unref(pol);
  mesh_snapshot_unref(snap);
  mesh_store_free(st);
  mesh_diags_free(diags);
  mesh_store_opts_free(so);
  mesh_policy_opts_free(po);
  mesh_ctx_free(ctx);
  return status;
}

const meshctl_command meshctl_cmd_authz = {
    .name = "authz",
    .summary = "show the Servers, routes and authorizations that admit a workload's clients",
    .run = run,
    .usage = usage,
};

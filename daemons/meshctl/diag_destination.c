/* meshctl diagnostics endpoints / profile: ask mesh-destination what a proxy would be told, as Linkerd's diagnostics commands. */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>

#include "meshctl.h"

#define GET_PATH "/io.linkerd.proxy.destination.Destination/Get"
#define PROFILE_PATH "/io.linkerd.proxy.destination.Destination/GetProfile"
#define DEFAULT_DESTINATION "127.0.0.1:8086"
#define WAIT_S 10 /* for every first message */
#define FILE_MAX 1048576u
/* Linkerd's destination service account, in the default control plane. */
#define DEFAULT_DESTINATION_IDENTITY \
  "linkerd-destination.linkerd.serviceaccount.identity.linkerd.cluster.local"

void meshctl_diagnostics_destination_usage(FILE *out) {
  fprintf(out,
          "  meshctl diagnostics endpoints AUTHORITY... [--destination ADDR] [-n NS] [-o text|json]\n"
          "  meshctl diagnostics profile AUTHORITY [--destination ADDR] [-n NS]\n"
          "      (both also [--identity-dir DIR | --anchors FILE] [--destination-identity NAME])\n");
}

void meshctl_diagnostics_destination_help(FILE *out) {
  fprintf(out,
          "  endpoints      the endpoints mesh-destination gives a proxy for each authority\n"
          "                 (svc.ns.svc.cluster.local:port, svc.ns:port or svc:port): NAMESPACE\n"
          "                 IP PORT POD SERVICE IDENTITY; exit status 1 when one has none\n"
          "  profile        the profile (routes, retry budget, dst_overrides) of an authority,\n"
          "                 as the JSON message a proxy gets\n\n"
          "Flags of endpoints and profile:\n"
          "      --destination ADDR  mesh-destination's address (default 127.0.0.1:8086)\n"
          "  -n, --namespace NS      the caller's namespace, for short names (default: default)\n"
          "  -o, --output FORMAT     text (default) or json (endpoints only)\n"
          "      --identity-dir DIR  speak mTLS with DIR's leaf.crt, key.pem and ca.crt\n"
          "      --anchors FILE      speak TLS trusting FILE, without a client certificate\n"
          "      --destination-identity NAME\n"
          "                          the identity mesh-destination must present over TLS\n"
          "                          (default " DEFAULT_DESTINATION_IDENTITY ")\n"
          "                          Without --identity-dir or --anchors: plaintext h2c.\n");
}

static char *slurp(const char *prog, const char *path, size_t *len) {
  char *buf = NULL;
  return meshctl_read(prog, path, FILE_MAX, &buf, len) ? buf : NULL;
}

/* A client configuration: DIR's certificate and anchors, or anchors alone. */
static mesh_tls_config *client_tls(const char *prog, mesh_ctx *ctx, const char *dir,
                                   const char *anchors_file) {
  char cp[4096], kp[4096], ap[4096];
  size_t cl = 0, kl = 0, al = 0;
  char *chain = NULL, *key = NULL, *anchors = NULL;
  if (dir) {
    snprintf(cp, sizeof cp, "%s/leaf.crt", dir);
    snprintf(kp, sizeof kp, "%s/key.pem", dir);
    snprintf(ap, sizeof ap, "%s/ca.crt", dir);
    anchors_file = ap;
    if (!(chain = slurp(prog, cp, &cl)) || !(key = slurp(prog, kp, &kl))) goto fail;
  }
  if (!(anchors = slurp(prog, anchors_file, &al))) goto fail;
  mesh_tls_opts *o = NULL;
  mesh_tls_config *cfg = NULL;
  const char *why = NULL;
  int rc = mesh_tls_opts_new(ctx, &o);
  if (!rc && chain) rc = mesh_tls_opts_set_credentials(o, chain, cl, key, kl);
  if (!rc) rc = mesh_tls_opts_set_anchors(o, anchors, al);
  if (!rc) rc = mesh_tls_opts_set_alpn(o, "h2");
  if (!rc) rc = mesh_tls_config_new(o, &why, &cfg);
  mesh_tls_opts_free(o);
  if (rc < 0)
    fprintf(stderr, "%s: %s: %s\n", prog, dir ? dir : anchors_file, why ? why : mesh_strerror(rc));
  if (key) memset(key, 0, kl);
  free(key);
  free(chain);
  free(anchors);
  return cfg;
fail:
  free(key);
  free(chain);
  free(anchors);
  return NULL;
}

/* One Get or GetProfile stream, until its first message. */
typedef struct {
  const char *authority;
  mesh_rpc_stream *stream;
  char *first;       /* the first message */
  char error[512];   /* or why there is none */
  bool done;
  size_t *pending;
  struct event_base *base;
} ask;

static void finish(ask *a) {
  a->done = true;
  if (--*a->pending == 0) event_base_loopbreak(a->base);
}

static void on_message(void *ud, const char *line, size_t len) {
  ask *a = ud;
  if (a->done) return;
  a->first = strndup(line, len);
  if (!a->first) snprintf(a->error, sizeof a->error, "out of memory");
  mesh_rpc_stream_cancel(a->stream); /* one message is the answer: stop watching */
  a->stream = NULL;
  finish(a);
}

static void on_end(void *ud, int status, const char *error) {
  ask *a = ud;
  a->stream = NULL;
  if (a->done) return;
  if (status < 0)
    snprintf(a->error, sizeof a->error, "cannot reach mesh-destination: %s: %s",
             mesh_strerror(status), error ? error : "");
  else if (error)
    snprintf(a->error, sizeof a->error, "mesh-destination refused the request (HTTP %d, %s)", status,
             error);
  else snprintf(a->error, sizeof a->error, "the stream ended with no message");
  finish(a);
}

/* Asks every authority at once on one connection; false after printing why on a setup failure. */
typedef struct {
  const char *dest, *ns, *identity_dir, *anchors, *dest_identity;
  bool json;
  int first_arg;
} common_flags;

static bool ask_all(const char *prog, const common_flags *f, const char *path, ask *asks,
                    size_t n) {
  const char *dest = f->dest, *ns = f->ns;
  mesh_ctx *ctx = meshctl_ctx(prog);
  struct event_base *base = ctx ? event_base_new() : NULL;
  mesh_rpc_client *cl = NULL;
  mesh_tls_config *tls = NULL;
  bool ok = false;
  size_t pending = n;
  if (base && (f->identity_dir || f->anchors) &&
      !(tls = client_tls(prog, ctx, f->identity_dir, f->anchors)))
    goto done;
  int rc = base ? mesh_rpc_client_new(ctx, base, tls, dest, tls ? f->dest_identity : NULL, &cl)
                : MESH_ERR_NOMEM;
  if (rc < 0) {
    fprintf(stderr, "%s: --destination %s: %s\n", prog, dest, mesh_strerror(rc));
    goto done;
  }
  for (size_t i = 0; i < n; i++) {
    asks[i].pending = &pending;
    asks[i].base = base;
    json_t *req = json_pack("{s:s}", "path", asks[i].authority);
    if (req && ns) {
      char tok[128];
      snprintf(tok, sizeof tok, "{\"ns\":\"%s\"}", ns);
      json_object_set_new(req, "context_token", json_string(tok));
    }
    char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    rc = body ? mesh_rpc_client_stream(cl, path, body, strlen(body), on_message, on_end, &asks[i],
                                       &asks[i].stream)
              : MESH_ERR_NOMEM;
    free(body);
    if (rc < 0) {
      snprintf(asks[i].error, sizeof asks[i].error, "%s", mesh_strerror(rc));
      asks[i].done = true;
      pending--;
    }
  }
  if (pending) {
    struct timeval tv = {WAIT_S, 0};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
  }
  for (size_t i = 0; i < n; i++) {
    if (asks[i].done) continue;
    snprintf(asks[i].error, sizeof asks[i].error, "no answer from %s within %d s", dest, WAIT_S);
    mesh_rpc_stream_cancel(asks[i].stream);
    asks[i].stream = NULL;
  }
  ok = true;
done:
  mesh_rpc_client_free(cl);
  /* libevent finishes freeing the connection's bufferevents from the loop. */
  if (base) event_base_loop(base, EVLOOP_NONBLOCK);
  mesh_tls_config_unref(tls);
  if (base) event_base_free(base);
  mesh_ctx_free(ctx);
  return ok;
}

/* Parses --destination, -n and (when allowed) -o; returns MESHCTL_OK or an exit status. */
static int parse_flags(int argc, char **argv, bool output, common_flags *f, bool *help) {
  static const struct option opts[] = {
      {"destination", required_argument, NULL, 'd'},
      {"identity-dir", required_argument, NULL, 'I'},
      {"anchors", required_argument, NULL, 'a'},
      {"destination-identity", required_argument, NULL, 'D'},
      {"namespace", required_argument, NULL, 'n'},
      {"output", required_argument, NULL, 'o'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *prog = argv[0];
  f->dest = DEFAULT_DESTINATION;
  f->dest_identity = DEFAULT_DESTINATION_IDENTITY;
  int c;
  optind = 0;
  while ((c = getopt_long(argc, argv, output ? "n:o:h" : "n:h", opts, NULL)) != -1) {
    switch (c) {
    case 'd': f->dest = optarg; break;
    case 'I': f->identity_dir = optarg; break;
    case 'a': f->anchors = optarg; break;
    case 'D': f->dest_identity = optarg; break;
    case 'n':
      if (!mesh_dns_label_valid(optarg)) {
        fprintf(stderr, "%s: -n %s: a namespace is a DNS label\n", prog, optarg);
        return meshctl_usage_error(prog);
      }
      f->ns = optarg;
      break;
    case 'o':
      if (!output) {
        fprintf(stderr, "%s: the profile is printed as JSON only\n", prog);
        return meshctl_usage_error(prog);
      }
      if (!meshctl_parse_output(prog, optarg, &f->json)) return meshctl_usage_error(prog);
      break;
    case 'h': *help = true; return MESHCTL_OK;
    default: return meshctl_usage_error(prog);
    }
  }
  if (f->identity_dir && f->anchors) {
    fprintf(stderr, "%s: give --identity-dir or --anchors, not both\n", prog);
    return meshctl_usage_error(prog);
  }
  f->first_arg = optind;
  return MESHCTL_OK;
}

static const char *or_empty(const char *s) { return s ? s : ""; }
static const char *or_dash(const char *s) { return s ? s : "-"; }

static const char *label(json_t *addr, const char *name) {
  const char *v = json_string_value(json_object_get(json_object_get(addr, "metric_labels"), name));
  return v && *v ? v : "-";
}

int meshctl_diagnostics_endpoints(int argc, char **argv, void (*usage)(FILE *)) {
  const char *prog = argv[0];
  common_flags f = {0};
  bool help = false;
  int st = parse_flags(argc, argv, true, &f, &help);
  if (help) {
    usage(stdout);
    return MESHCTL_OK;
  }
  if (st != MESHCTL_OK) return st;
  size_t n = (size_t)(argc - f.first_arg);
  if (n == 0) {
    fprintf(stderr, "%s: give one or more authorities (web.shop.svc.cluster.local:80)\n", prog);
    return meshctl_usage_error(prog);
  }
  ask *asks = calloc(n, sizeof *asks);
  if (!asks) return MESHCTL_FAILED;
  for (size_t i = 0; i < n; i++) asks[i].authority = argv[f.first_arg + (int)i];
  if (!ask_all(prog, &f, GET_PATH, asks, n)) {
    free(asks);
    return MESHCTL_FAILED;
  }
  int status = MESHCTL_OK;
  json_t *rows = json_array();
  for (size_t i = 0; i < n; i++) {
    ask *a = &asks[i];
    json_t *msg = a->first ? json_loads(a->first, 0, NULL) : NULL;
    json_t *addrs = json_object_get(json_object_get(msg, "add"), "addrs");
    json_t *none = json_object_get(msg, "no_endpoints");
    if (!a->first) {
      fprintf(stderr, "%s: %s: %s\n", prog, a->authority, a->error);
      status = MESHCTL_FAILED;
    } else if (none || json_array_size(addrs) == 0) {
      fprintf(stderr, "%s: %s: no endpoints found%s\n", prog, a->authority,
              json_is_false(json_object_get(none, "exists")) ? " (no such service)" : "");
      status = MESHCTL_FAILED;
    }
    size_t k;
    json_t *x;
    json_array_foreach(addrs, k, x) {
      const char *addr = json_string_value(json_object_get(x, "addr"));
      char ip[64] = "-";
      if (addr) {
        const char *colon = strrchr(addr, ':');
        size_t il = colon ? (size_t)(colon - addr) : strlen(addr);
        if (addr[0] == '[' && il >= 2) {
          addr++;
          il -= 2;
        }
        snprintf(ip, sizeof ip, "%.*s", (int)il, addr);
      }
      const char *id = json_string_value(
          json_object_get(json_object_get(json_object_get(x, "tls_identity"), "dns_like_identity"),
                          "name"));
      char svc[300];
      snprintf(svc, sizeof svc, "%s.%s", label(x, "service"), label(x, "namespace"));
      json_t *row = json_pack("{s:s, s:s, s:s, s:I, s:s, s:s, s:s, s:I}", "authority",
                              a->authority, "namespace", label(x, "namespace"), "ip", ip, "port",
                              json_integer_value(json_object_get(x, "target_port")), "pod",
                              label(x, "pod"), "service", svc, "addr",
                              or_empty(json_string_value(json_object_get(x, "addr"))), "weight",
                              json_integer_value(json_object_get(x, "weight")));
      if (row && id) json_object_set_new(row, "identity", json_string(id));
      if (row) json_array_append_new(rows, row);
    }
    json_decref(msg);
    free(a->first);
  }
  free(asks);
  if (f.json) {
    json_dumpf(rows, stdout, JSON_INDENT(2));
    printf("\n");
  } else if (json_array_size(rows)) {
    static const char *const head[] = {"NAMESPACE", "IP", "PORT", "POD", "SERVICE", "IDENTITY"};
    static const char *const keys[] = {"namespace", "ip", "port", "pod", "service", "identity"};
    size_t w[6];
    for (int c = 0; c < 6; c++) w[c] = strlen(head[c]);
    size_t k;
    json_t *row;
    char cell[6][300];
    json_array_foreach(rows, k, row) for (int c = 0; c < 6; c++) {
      json_t *v = json_object_get(row, keys[c]);
      if (json_is_integer(v)) snprintf(cell[c], sizeof cell[c], "%lld", (long long)json_integer_value(v));
      else snprintf(cell[c], sizeof cell[c], "%s", or_dash(json_string_value(v)));
      if (strlen(cell[c]) > w[c]) w[c] = strlen(cell[c]);
    }
    for (int c = 0; c < 5; c++) printf("%-*s   ", (int)w[c], head[c]);
    printf("%s\n", head[5]);
    json_array_foreach(rows, k, row) for (int c = 0; c < 6; c++) {
      json_t *v = json_object_get(row, keys[c]);
      if (json_is_integer(v)) snprintf(cell[c], sizeof cell[c], "%lld", (long long)json_integer_value(v));
      else snprintf(cell[c], sizeof cell[c], "%s", or_dash(json_string_value(v)));
      if (c < 5) printf("%-*s   ", (int)w[c], cell[c]);
      else printf("%s\n", cell[c]);
    }
  }
  json_decref(rows);
  if (fflush(stdout) != 0) status = MESHCTL_FAILED;
  return status;
}

int meshctl_diagnostics_profile(int argc, char **argv, void (*usage)(FILE *)) {
  const char *prog = argv[0];
  common_flags f = {0};
  bool help = false;
  int st = parse_flags(argc, argv, false, &f, &help);
  if (help) {
    usage(stdout);
    return MESHCTL_OK;
  }
  if (st != MESHCTL_OK) return st;
  if (argc - f.first_arg != 1) {
    fprintf(stderr, "%s: give exactly one authority (web.shop.svc.cluster.local:80)\n", prog);
    return meshctl_usage_error(prog);
  }
  ask a = {.authority = argv[f.first_arg]};
  if (!ask_all(prog, &f, PROFILE_PATH, &a, 1)) return MESHCTL_FAILED;
  if (!a.first) {
    fprintf(stderr, "%s: %s: %s\n", prog, a.authority, a.error);
    return MESHCTL_FAILED;
  }
  json_t *msg = json_loads(a.first, 0, NULL);
  free(a.first);
  if (!msg) {
    fprintf(stderr, "%s: %s: mesh-destination sent a message that is not JSON\n", prog, a.authority);
    return MESHCTL_FAILED;
  }
  json_dumpf(msg, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(9));
  printf("\n");
  json_decref(msg);
  return fflush(stdout) == 0 ? MESHCTL_OK : MESHCTL_FAILED;
}

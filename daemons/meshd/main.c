/* meshd: the mesh's proxy; parses flags and MESH_PROXY_* environment, runs libmesh's proxy on one event loop. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include <mesh/mesh.h>

#include "daemon_log.h"

enum {
  OPT_OUTBOUND = 256, OPT_INBOUND, OPT_ADMIN, OPT_PORT_MAP, OPT_ENDPOINTS, OPT_IDENTITY_DIR,
  OPT_CERT, OPT_KEY, OPT_ANCHORS, OPT_ALLOW_UNAUTH, OPT_INBOUND_PORTS, OPT_INBOUND_FORWARD_IP, OPT_CONNECT_TIMEOUT,
  OPT_HEADER_TIMEOUT, OPT_IDLE_TIMEOUT, OPT_GRACE, OPT_MAX_CONNS, OPT_BUFFER, OPT_LOG_LEVEL,
  OPT_DETECT_TIMEOUT, OPT_RESPONSE_TIMEOUT, OPT_INBOUND_CONNECT_TIMEOUT, OPT_MAX_HEADER_BYTES,
  OPT_MAX_HEADER_FIELDS, OPT_OPAQUE_PORTS, OPT_PROFILES, OPT_POLICY, OPT_WORKLOAD_NS,
  OPT_WORKLOAD_LABELS, OPT_DEFAULT_POLICY, OPT_CLUSTER_NETWORKS, OPT_MAX_IN_FLIGHT, OPT_DESTINATION,
  OPT_DESTINATION_ID, OPT_IDENTITY_ADDR, OPT_IDENTITY_TOKEN_FILE, OPT_SERVICE_ACCOUNT,
  OPT_IDENTITY_SVC_NAME, OPT_WORKLOAD_NAME, OPT_OUTBOUND_FAILFAST, OPT_INBOUND_FAILFAST,
  OPT_OUTBOUND_QUEUE, OPT_INBOUND_QUEUE, OPT_REGISTER, OPT_REGISTER_LEASE, OPT_WORKLOAD_PORTS
};

static const struct option LONG[] = {
    {"outbound-listen-addr", required_argument, NULL, OPT_OUTBOUND},
    {"inbound-listen-addr", required_argument, NULL, OPT_INBOUND},
    {"admin-listen-addr", required_argument, NULL, OPT_ADMIN},
    {"outbound-port-map", required_argument, NULL, OPT_PORT_MAP},
    {"endpoints", required_argument, NULL, OPT_ENDPOINTS},
    {"profiles", required_argument, NULL, OPT_PROFILES},
    {"destination-addr", required_argument, NULL, OPT_DESTINATION},
    {"destination-identity", required_argument, NULL, OPT_DESTINATION_ID},
    {"policy", required_argument, NULL, OPT_POLICY},
    {"workload-namespace", required_argument, NULL, OPT_WORKLOAD_NS},
    {"workload-labels", required_argument, NULL, OPT_WORKLOAD_LABELS},
    {"workload-name", required_argument, NULL, OPT_WORKLOAD_NAME},
    {"default-inbound-policy", required_argument, NULL, OPT_DEFAULT_POLICY},
    {"cluster-networks", required_argument, NULL, OPT_CLUSTER_NETWORKS},
    {"identity-dir", required_argument, NULL, OPT_IDENTITY_DIR},
    {"cert", required_argument, NULL, OPT_CERT},
    {"key", required_argument, NULL, OPT_KEY},
    {"anchors", required_argument, NULL, OPT_ANCHORS},
    {"identity-addr", required_argument, NULL, OPT_IDENTITY_ADDR},
    {"identity-token-file", required_argument, NULL, OPT_IDENTITY_TOKEN_FILE},
    {"service-account", required_argument, NULL, OPT_SERVICE_ACCOUNT},
    {"identity-svc-name", required_argument, NULL, OPT_IDENTITY_SVC_NAME},
    {"inbound-allow-unauthenticated", no_argument, NULL, OPT_ALLOW_UNAUTH},
    {"inbound-ports", required_argument, NULL, OPT_INBOUND_PORTS},
    {"register", no_argument, NULL, OPT_REGISTER},
    {"register-lease", required_argument, NULL, OPT_REGISTER_LEASE},
    {"workload-ports", required_argument, NULL, OPT_WORKLOAD_PORTS},
    {"inbound-forward-ip", required_argument, NULL, OPT_INBOUND_FORWARD_IP},
    {"connect-timeout", required_argument, NULL, OPT_CONNECT_TIMEOUT},
    {"header-timeout", required_argument, NULL, OPT_HEADER_TIMEOUT},
    {"idle-timeout", required_argument, NULL, OPT_IDLE_TIMEOUT},
    {"shutdown-grace", required_argument, NULL, OPT_GRACE},
    {"max-connections", required_argument, NULL, OPT_MAX_CONNS},
    {"buffer-bytes", required_argument, NULL, OPT_BUFFER},
    {"max-in-flight", required_argument, NULL, OPT_MAX_IN_FLIGHT},
    {"outbound-failfast-timeout", required_argument, NULL, OPT_OUTBOUND_FAILFAST},
    {"inbound-failfast-timeout", required_argument, NULL, OPT_INBOUND_FAILFAST},
    {"outbound-queue-capacity", required_argument, NULL, OPT_OUTBOUND_QUEUE},
    {"inbound-queue-capacity", required_argument, NULL, OPT_INBOUND_QUEUE},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"detect-timeout", required_argument, NULL, OPT_DETECT_TIMEOUT},
    {"response-timeout", required_argument, NULL, OPT_RESPONSE_TIMEOUT},
    {"inbound-connect-timeout", required_argument, NULL, OPT_INBOUND_CONNECT_TIMEOUT},
    {"max-header-bytes", required_argument, NULL, OPT_MAX_HEADER_BYTES},
    {"max-header-fields", required_argument, NULL, OPT_MAX_HEADER_FIELDS},
    {"opaque-ports", required_argument, NULL, OPT_OPAQUE_PORTS},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

/* Every flag has an environment variable; the flag wins. */
static const struct {
  int opt;
  const char *env;
} ENV[] = {
    {OPT_OUTBOUND, "MESH_PROXY_OUTBOUND_LISTEN_ADDR"},
    {OPT_INBOUND, "MESH_PROXY_INBOUND_LISTEN_ADDR"},
    {OPT_ADMIN, "MESH_PROXY_ADMIN_LISTEN_ADDR"},
    {OPT_PORT_MAP, "MESH_PROXY_OUTBOUND_PORT_MAP"}, /* comma-separated */
    {OPT_ENDPOINTS, "MESH_PROXY_ENDPOINTS"},
    {OPT_PROFILES, "MESH_PROXY_PROFILES"},
    {OPT_DESTINATION, "MESH_PROXY_DESTINATION_ADDR"},
    {OPT_DESTINATION_ID, "MESH_PROXY_DESTINATION_IDENTITY"},
    {OPT_POLICY, "MESH_PROXY_POLICY"},
    {OPT_WORKLOAD_NS, "MESH_PROXY_WORKLOAD_NAMESPACE"},
    {OPT_WORKLOAD_LABELS, "MESH_PROXY_WORKLOAD_LABELS"},
    {OPT_WORKLOAD_NAME, "MESH_PROXY_WORKLOAD_NAME"},
    {OPT_REGISTER, "MESH_PROXY_REGISTER"},
    {OPT_REGISTER_LEASE, "MESH_PROXY_REGISTER_LEASE"},
    {OPT_WORKLOAD_PORTS, "MESH_PROXY_WORKLOAD_PORTS"},
    {OPT_DEFAULT_POLICY, "MESH_PROXY_DEFAULT_INBOUND_POLICY"},
    {OPT_CLUSTER_NETWORKS, "MESH_PROXY_CLUSTER_NETWORKS"},
    {OPT_IDENTITY_DIR, "MESH_PROXY_IDENTITY_DIR"},
    {OPT_CERT, "MESH_PROXY_CERT"},
    {OPT_KEY, "MESH_PROXY_KEY"},
    {OPT_ANCHORS, "MESH_PROXY_ANCHORS"},
    {OPT_IDENTITY_ADDR, "MESH_PROXY_IDENTITY_ADDR"},
    {OPT_IDENTITY_TOKEN_FILE, "MESH_PROXY_IDENTITY_TOKEN_FILE"},
    {OPT_SERVICE_ACCOUNT, "MESH_PROXY_SERVICE_ACCOUNT"},
    {OPT_IDENTITY_SVC_NAME, "MESH_PROXY_IDENTITY_SVC_NAME"},
    {OPT_ALLOW_UNAUTH, "MESH_PROXY_INBOUND_ALLOW_UNAUTHENTICATED"},
    {OPT_INBOUND_PORTS, "MESH_PROXY_INBOUND_PORTS"},
    {OPT_INBOUND_FORWARD_IP, "MESH_PROXY_INBOUND_FORWARD_IP"},
    {OPT_CONNECT_TIMEOUT, "MESH_PROXY_CONNECT_TIMEOUT"},
    {OPT_HEADER_TIMEOUT, "MESH_PROXY_HEADER_TIMEOUT"},
    {OPT_IDLE_TIMEOUT, "MESH_PROXY_IDLE_TIMEOUT"},
    {OPT_GRACE, "MESH_PROXY_SHUTDOWN_GRACE"},
    {OPT_MAX_CONNS, "MESH_PROXY_MAX_CONNECTIONS"},
    {OPT_BUFFER, "MESH_PROXY_BUFFER_BYTES"},
    {OPT_MAX_IN_FLIGHT, "MESH_PROXY_MAX_IN_FLIGHT"},
    {OPT_OUTBOUND_FAILFAST, "MESH_PROXY_OUTBOUND_FAILFAST_TIMEOUT"},
    {OPT_INBOUND_FAILFAST, "MESH_PROXY_INBOUND_FAILFAST_TIMEOUT"},
    {OPT_OUTBOUND_QUEUE, "MESH_PROXY_OUTBOUND_QUEUE_CAPACITY"},
    {OPT_INBOUND_QUEUE, "MESH_PROXY_INBOUND_QUEUE_CAPACITY"},
    {OPT_LOG_LEVEL, "MESH_PROXY_LOG_LEVEL"},
    {OPT_DETECT_TIMEOUT, "MESH_PROXY_DETECT_TIMEOUT"},
    {OPT_RESPONSE_TIMEOUT, "MESH_PROXY_RESPONSE_TIMEOUT"},
    {OPT_INBOUND_CONNECT_TIMEOUT, "MESH_PROXY_INBOUND_CONNECT_TIMEOUT"},
    {OPT_MAX_HEADER_BYTES, "MESH_PROXY_MAX_HEADER_BYTES"},
    {OPT_MAX_HEADER_FIELDS, "MESH_PROXY_MAX_HEADER_FIELDS"},
    {OPT_OPAQUE_PORTS, "MESH_PROXY_OPAQUE_PORTS"},
};
#define NENV (sizeof ENV / sizeof ENV[0])

static void usage(FILE *out) {
  fprintf(out,
          "Usage: meshd [flags]\n\n"
          "The libmesh proxy: HTTP/1, HTTP/2 and opaque TCP over mTLS between proxies\n"
          "(doc/meshd.md).\n\n"
          "Listeners (\"\" turns one off):\n"
          "  --outbound-listen-addr ADDR   transparent outbound (iptables REDIRECT) [127.0.0.1:4140]\n"
          "  --inbound-listen-addr ADDR    mTLS from other proxies [0.0.0.0:4143]\n"
          "  --admin-listen-addr ADDR      /live /ready /metrics /env.json /shutdown [127.0.0.1:4191]\n"
          "  --outbound-port-map L=AUTH    listen on L, send to AUTH's endpoints (repeatable)\n"
          "Destinations and identity:\n"
          "  --endpoints FILE              the static endpoints file (JSON; re-read on SIGHUP and change)\n"
          "  --profiles DIR                ServiceProfiles and TrafficSplits (*.yaml; re-read likewise)\n"
          "  --destination-addr ADDR       mesh-destination (e.g. 127.0.0.1:8086): discover what the\n"
          "                                endpoints file does not know, and profiles\n"
          "  --destination-identity ID     mesh-destination's identity (mTLS even on loopback)\n"
          "  --namespace NS                this proxy's namespace, for short names (default: default)\n"
          "  --policy DIR                  inbound authorization: Servers, authorizations, routes\n"
          "  --workload-namespace NS --workload-labels app=web,...   who this proxy fronts [default]\n"
          "  --workload-name NAME          its Workload in the store: with --destination-addr and\n"
          "                                no --policy, the inbound policy (and labels) come from\n"
          "                                mesh-destination; not ready until the first one\n"
          );
  /* Two strings: one would pass the 4095 bytes C requires compilers to take. */
  fprintf(out,
          "  --register                    register the Workload (--workload-name, namespace, labels,\n"
          "                                the inbound listener's address) with mesh-destination\n"
          "                                under a lease; deregister on SIGTERM before draining\n"
          "  --register-lease DURATION     the lease, 3s to 300s, renewed at a third [30s]\n"
          "  --workload-ports LIST         the application's ports in it, e.g. http=8080,grpc=9090\n"
          "  --default-inbound-policy P    for ports no Server selects [all-unauthenticated]\n"
          "  --cluster-networks CIDRS      [10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8]\n"
          "  --identity-dir DIR            DIR/leaf.crt, DIR/key.pem, DIR/ca.crt\n"
          "  --cert FILE --key FILE --anchors FILE   the same, as three files\n"
          "  --identity-addr ADDR          or certify with mesh-identity (key in memory, renewed):\n"
          "    --identity-token-file FILE --service-account SA --anchors FILE\n"
          "                                the workload token (re-read at each renewal), the\n"
          "                                identity <sa>.<workload-namespace>.serviceaccount...\n"
          "  --identity-svc-name ID        mesh-identity's identity\n"
          "                                [identity.linkerd.serviceaccount.identity.linkerd.cluster.local]\n"
          "  --inbound-allow-unauthenticated         accept inbound clients without a certificate\n"
          "  --inbound-ports LIST          ports inbound may connect to, e.g. 8080,9090 [all]\n"
          "  --inbound-forward-ip IP       where inbound reaches the application [127.0.0.1]\n"
          "Limits (durations: 500ms, 5s, 1m, 1h; plain numbers are milliseconds):\n"
          "  --connect-timeout D [1s]  --header-timeout D [10s]  --idle-timeout D [1h, 0: none]\n"
          "  --shutdown-grace D [5s]   --max-connections N [10000]  --buffer-bytes N [65536]\n"
          "  --max-in-flight N [100000] HTTP requests at once; past it 503 (load shed)\n"
          "  --outbound-failfast-timeout D [3s]  --inbound-failfast-timeout D [1s]\n"
          "                             how long a request waits for a ready endpoint or a\n"
          "                             connection; then 503 (fail_fast)\n"
          "  --outbound-queue-capacity N [10000]  --inbound-queue-capacity N [10000]\n"
          "                             requests waiting at once; past it 503 (load_shed)\n"
          "  --detect-timeout D [10s]  --response-timeout D [0: none]\n"
          "  --inbound-connect-timeout D [300ms]\n"
          "  --max-header-bytes N [65536]  --max-header-fields N [100]\n"
          "  --opaque-ports LIST        no protocol detection on these [25,587,3306,4444,5432,\n"
          "                             6379,9300,11211]\n"
          "  --log-level error|warn|info|debug [info]\n"
          "Every flag has an environment variable: MESH_PROXY_<FLAG> (e.g.\n"
          "MESH_PROXY_OUTBOUND_LISTEN_ADDR, MESH_PROXY_ENDPOINTS); flags win.\n"
          "Signals: SIGHUP reloads the endpoints file, profiles and credentials; SIGTERM/SIGINT drain and exit.\n");
}

static int parse_duration(const char *s, uint64_t *ms) {
  char *end;
  double v = strtod(s, &end);
  if (end == s || v < 0) return -1;
  double mult = 1;
  if (!strcmp(end, "") || !strcmp(end, "ms")) mult = 1;
  else if (!strcmp(end, "s")) mult = 1000;
  else if (!strcmp(end, "m")) mult = 60000;
  else if (!strcmp(end, "h")) mult = 3600000;
  else return -1;
  *ms = (uint64_t)(v * mult);
  return 0;
}

static int log_level = MESH_LOG_INFO;
/* The workload's namespace and labels are set together, as are the two
 * head limits. */
static const char *workload_ns = "default";
static const char *workload_labels = "";
static uint32_t head_bytes = MESH_PROXY_DEFAULT_MAX_HEAD_BYTES;
static uint32_t head_fields = MESH_PROXY_DEFAULT_MAX_FIELDS;
/* Self-certification takes four settings at once, and is checked against
 * the file credentials once every flag is in. */
static const char *identity_addr, *identity_token_file, *service_account, *identity_svc_name;
static int identity_dir_given;
/* --register, its lease and the workload's ports are set together. */
static int register_on;
static uint32_t register_lease_s;
static const char *workload_ports;

typedef struct {
  struct event_base *base;
  mesh_proxy *proxy;
} daemon_state;

static void on_signal(evutil_socket_t sig, short what, void *arg) {
  daemon_state *d = arg;
  (void)what;
  if (sig == SIGHUP) mesh_proxy_reload(d->proxy);
  else mesh_proxy_shutdown(d->proxy);
}

static void on_shutdown(void *arg) {
  daemon_state *d = arg;
  event_base_loopexit(d->base, NULL);
}

static int bad(const char *what, const char *arg, int rc, const char *why) {
  fprintf(stderr, "meshd: %s '%s': %s%s%s\n", what, arg, mesh_strerror(rc), why ? ": " : "",
          why ? why : "");
  return 2;
}

/* Apply one setting (from a flag or the environment). */
static int apply(mesh_proxy_opts *o, int opt, const char *arg, const char **cert,
                 const char **key, const char **anchors) {
  const char *why = NULL;
  uint64_t ms;
  int rc = 0;
  switch (opt) {
  case OPT_OUTBOUND: rc = mesh_proxy_opts_set_outbound_addr(o, arg, &why); break;
  case OPT_INBOUND: rc = mesh_proxy_opts_set_inbound_addr(o, arg, &why); break;
  case OPT_ADMIN: rc = mesh_proxy_opts_set_admin_addr(o, arg, &why); break;
  case OPT_PORT_MAP: {
    char *copy = strdup(arg), *save = NULL;
    for (char *m = strtok_r(copy, ",", &save); m && !rc; m = strtok_r(NULL, ",", &save))
      rc = mesh_proxy_opts_add_port_map(o, m, &why);
    free(copy);
    break;
  }
  case OPT_ENDPOINTS: rc = mesh_proxy_opts_set_endpoints_file(o, *arg ? arg : NULL); break;
  case OPT_PROFILES: rc = mesh_proxy_opts_set_profiles_dir(o, *arg ? arg : NULL); break;
  case OPT_DESTINATION: rc = mesh_proxy_opts_set_destination_addr(o, arg, &why); break;
  case OPT_DESTINATION_ID: rc = mesh_proxy_opts_set_destination_identity(o, arg, &why); break;
  case OPT_POLICY: rc = mesh_proxy_opts_set_policy_dir(o, *arg ? arg : NULL); break;
  case OPT_WORKLOAD_NS:
  case OPT_WORKLOAD_LABELS:
    if (opt == OPT_WORKLOAD_NS) workload_ns = arg;
    else workload_labels = arg;
    rc = mesh_proxy_opts_set_workload(o, workload_ns, workload_labels, &why);
    break;
  case OPT_WORKLOAD_NAME: rc = mesh_proxy_opts_set_workload_name(o, arg, &why); break;
  case OPT_REGISTER:
  case OPT_REGISTER_LEASE:
  case OPT_WORKLOAD_PORTS:
    if (opt == OPT_REGISTER) register_on = !arg || !strcmp(arg, "1") || !strcmp(arg, "true");
    else if (opt == OPT_WORKLOAD_PORTS) workload_ports = arg;
    else if (parse_duration(arg, &ms) || ms % 1000 || ms / 1000 < MESH_PROXY_REGISTER_LEASE_MIN_S ||
             ms / 1000 > MESH_PROXY_REGISTER_LEASE_MAX_S) {
      rc = MESH_ERR_RANGE;
      why = "whole seconds from 3s to 300s";
      break;
    } else {
      register_lease_s = (uint32_t)(ms / 1000);
    }
    rc = mesh_proxy_opts_set_register(o, register_on, register_lease_s, workload_ports, &why);
    break;
  case OPT_DEFAULT_POLICY: rc = mesh_proxy_opts_set_default_inbound_policy(o, arg, &why); break;
  case OPT_CLUSTER_NETWORKS: rc = mesh_proxy_opts_set_cluster_networks(o, arg); break;
  case OPT_IDENTITY_DIR:
    identity_dir_given = *arg != '\0';
    rc = mesh_proxy_opts_set_identity_dir(o, *arg ? arg : NULL);
    break;
  case OPT_IDENTITY_ADDR: identity_addr = *arg ? arg : NULL; break;
  case OPT_IDENTITY_TOKEN_FILE: identity_token_file = *arg ? arg : NULL; break;
  case OPT_SERVICE_ACCOUNT: service_account = *arg ? arg : NULL; break;
  case OPT_IDENTITY_SVC_NAME: identity_svc_name = *arg ? arg : NULL; break;
  case OPT_CERT: *cert = arg; break;
  case OPT_KEY: *key = arg; break;
  case OPT_ANCHORS: *anchors = arg; break;
  case OPT_ALLOW_UNAUTH:
    rc = mesh_proxy_opts_set_inbound_allow_unauthenticated(
        o, !arg || !strcmp(arg, "1") || !strcmp(arg, "true"));
    break;
  case OPT_INBOUND_PORTS: rc = mesh_proxy_opts_set_inbound_ports(o, arg, &why); break;
  case OPT_INBOUND_FORWARD_IP: rc = mesh_proxy_opts_set_inbound_forward_ip(o, arg, &why); break;
  case OPT_OPAQUE_PORTS: rc = mesh_proxy_opts_set_opaque_ports(o, arg, &why); break;
  case OPT_CONNECT_TIMEOUT:
  case OPT_HEADER_TIMEOUT:
  case OPT_IDLE_TIMEOUT:
  case OPT_GRACE:
  case OPT_DETECT_TIMEOUT:
  case OPT_RESPONSE_TIMEOUT:
  case OPT_INBOUND_CONNECT_TIMEOUT:
  case OPT_OUTBOUND_FAILFAST:
  case OPT_INBOUND_FAILFAST:
    if (parse_duration(arg, &ms) || (opt != OPT_IDLE_TIMEOUT && ms > UINT32_MAX)) {
      rc = MESH_ERR_PARSE;
      why = "a duration such as 500ms, 5s, 1m, 1h";
      break;
    }
    rc = opt == OPT_CONNECT_TIMEOUT ? mesh_proxy_opts_set_connect_timeout(o, (uint32_t)ms)
         : opt == OPT_HEADER_TIMEOUT ? mesh_proxy_opts_set_header_timeout(o, (uint32_t)ms)
         : opt == OPT_IDLE_TIMEOUT   ? mesh_proxy_opts_set_idle_timeout(o, ms)
         : opt == OPT_DETECT_TIMEOUT ? mesh_proxy_opts_set_detect_timeout(o, (uint32_t)ms)
         : opt == OPT_RESPONSE_TIMEOUT ? mesh_proxy_opts_set_response_timeout(o, (uint32_t)ms)
         : opt == OPT_INBOUND_CONNECT_TIMEOUT
             ? mesh_proxy_opts_set_inbound_connect_timeout(o, (uint32_t)ms)
         : opt == OPT_OUTBOUND_FAILFAST || opt == OPT_INBOUND_FAILFAST
             ? mesh_proxy_opts_set_failfast_timeout(o, opt == OPT_INBOUND_FAILFAST, (uint32_t)ms)
             : mesh_proxy_opts_set_shutdown_grace(o, (uint32_t)ms);
    break;
  case OPT_MAX_CONNS:
  case OPT_BUFFER:
  case OPT_MAX_IN_FLIGHT:
  case OPT_OUTBOUND_QUEUE:
  case OPT_INBOUND_QUEUE:
  case OPT_MAX_HEADER_BYTES:
  case OPT_MAX_HEADER_FIELDS: {
    char *end;
    unsigned long v = strtoul(arg, &end, 10);
    if (*end || end == arg || v > UINT32_MAX) {
      rc = MESH_ERR_PARSE;
      why = "a number";
      break;
    }
    if (opt == OPT_MAX_HEADER_BYTES) head_bytes = (uint32_t)v;
    if (opt == OPT_MAX_HEADER_FIELDS) head_fields = (uint32_t)v;
    rc = opt == OPT_MAX_CONNS ? mesh_proxy_opts_set_max_connections(o, (uint32_t)v)
         : opt == OPT_BUFFER  ? mesh_proxy_opts_set_buffer_bytes(o, (uint32_t)v)
         : opt == OPT_MAX_IN_FLIGHT ? mesh_proxy_opts_set_max_in_flight(o, (uint32_t)v)
         : opt == OPT_OUTBOUND_QUEUE || opt == OPT_INBOUND_QUEUE
             ? mesh_proxy_opts_set_queue_capacity(o, opt == OPT_INBOUND_QUEUE, (uint32_t)v)
                              : mesh_proxy_opts_set_http_limits(o, head_bytes, head_fields);
    break;
  }
  case OPT_LOG_LEVEL:
    if (!strcmp(arg, "error")) log_level = MESH_LOG_ERROR;
    else if (!strcmp(arg, "warn")) log_level = MESH_LOG_WARN;
    else if (!strcmp(arg, "info")) log_level = MESH_LOG_INFO;
    else if (!strcmp(arg, "debug")) log_level = MESH_LOG_DEBUG;
    else {
      rc = MESH_ERR_PARSE;
      why = "error, warn, info or debug";
    }
    break;
  }
  if (rc) {
    const char *name = "setting";
    for (size_t i = 0; LONG[i].name; i++)
      if (LONG[i].val == opt) name = LONG[i].name;
    char flag[80];
    snprintf(flag, sizeof flag, "--%s", name);
    return bad(flag, arg, rc, why);
  }
  return 0;
}

int main(int argc, char **argv) {
  mesh_ctx *ctx;
  mesh_proxy_opts *o;
  if (mesh_ctx_new(&ctx) || mesh_proxy_opts_new(ctx, &o)) {
    fprintf(stderr, "meshd: out of memory\n");
    return 1;
  }
  const char *cert = NULL, *key = NULL, *anchors = NULL;
  /* The environment first, so that flags override it. */
  for (size_t i = 0; i < NENV; i++) {
    const char *v = getenv(ENV[i].env);
    if (v && apply(o, ENV[i].opt, v, &cert, &key, &anchors)) return 2;
  }
  int c;
  while ((c = getopt_long(argc, argv, "hV", LONG, NULL)) != -1) {
    if (c == 'h') {
      usage(stdout);
      return 0;
    }
    if (c == 'V') {
      printf("meshd %s\n", mesh_version_string());
      return 0;
    }
    if (c == '?') {
      usage(stderr);
      return 2;
    }
    if (apply(o, c, optarg, &cert, &key, &anchors)) return 2;
  }
  if (optind < argc) {
    fprintf(stderr, "meshd: unexpected argument '%s'\n", argv[optind]);
    return 2;
  }
  if (identity_addr) {
    /* One source of credentials: two would race to install theirs. */
    if (identity_dir_given || cert || key) {
      fprintf(stderr, "meshd: --identity-addr and %s are exclusive: the credentials come from "
                      "mesh-identity or from files, not both\n",
              identity_dir_given ? "--identity-dir" : "--cert/--key");
      return 2;
    }
    if (!identity_token_file || !service_account || !anchors) {
      fprintf(stderr, "meshd: --identity-addr needs --identity-token-file, --service-account "
                      "and --anchors (the trust anchors)\n");
      return 2;
    }
    const char *why = NULL;
    int rc = mesh_proxy_opts_set_identity_service(o, identity_addr, identity_token_file,
                                                  service_account, anchors, &why);
    if (rc && !mesh_dns_label_valid(service_account))
      return bad("--service-account", service_account, rc, why);
    if (rc) return bad("--identity-addr", identity_addr, rc, why);
    if (identity_svc_name &&
        (rc = mesh_proxy_opts_set_identity_service_name(o, identity_svc_name, &why)))
      return bad("--identity-svc-name", identity_svc_name, rc, why);
  } else if (identity_token_file || service_account || identity_svc_name) {
    fprintf(stderr, "meshd: --identity-token-file, --service-account and --identity-svc-name "
                    "only go with --identity-addr\n");
    return 2;
  } else if (cert || key || anchors) {
    if (!cert || !key || !anchors) {
      fprintf(stderr, "meshd: --cert, --key and --anchors go together\n");
      return 2;
    }
    mesh_proxy_opts_set_credential_files(o, cert, key, anchors);
  }
  mesh_ctx_set_log(ctx, log_level, daemon_log_lib, "meshd: ");
  signal(SIGPIPE, SIG_IGN);

  daemon_state d = {event_base_new(), NULL};
  if (!d.base) {
    fprintf(stderr, "meshd: cannot create the event loop\n");
    return 1;
  }
  mesh_proxy_opts_set_on_shutdown(o, on_shutdown, &d);
  const char *why = NULL;
  int rc = mesh_proxy_new(ctx, d.base, o, &why, &d.proxy);
  mesh_proxy_opts_free(o);
  if (rc) {
    fprintf(stderr, "meshd: %s%s%s\n", mesh_strerror(rc), why ? ": " : "", why ? why : "");
    return 1;
  }
  struct event *sig[4];
  const int sigs[4] = {SIGHUP, SIGTERM, SIGINT, SIGQUIT};
  for (int i = 0; i < 4; i++) {
    sig[i] = evsignal_new(d.base, sigs[i], on_signal, &d);
    evsignal_add(sig[i], NULL);
  }
  if (log_level >= MESH_LOG_INFO) daemon_log("INFO", "meshd: running (one event loop, one worker thread)");
  event_base_dispatch(d.base);
  for (int i = 0; i < 4; i++) event_free(sig[i]);
  mesh_proxy_free(d.proxy);
  event_base_free(d.base);
  mesh_ctx_free(ctx);
  return 0;
}

/* meshctl check: is the machine ready for the mesh (--pre), is the mesh healthy; as `linkerd check`. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "meshctl.h"

extern char **environ;

#define DEFAULT_PORTS "4140,4143,4191,8080,8086,9990,9996"
#define HTTP_TIMEOUT_MS 3000
#define BODY_LIMIT (4u << 20) /* /metrics of a busy proxy stays well below */
#define MAX_PROXIES 64

static void usage(FILE *out) {
  fprintf(out,
          "Check that the machine is ready for the mesh, or that the mesh is healthy.\n\n"
          "Usage:\n"
          "  meshctl check --pre [--ports LIST] [--identity-dir DIR] [-o text|json]\n"
          "  meshctl check [--identity-addr ADDR] [--destination-addr ADDR] [--identity-dir DIR]\n"
          "                [--proxy ADDR...] [--store-dir DIR] [-o text|json]\n\n"
          "Flags:\n"
          "      --pre                    the machine: kernel features, ports, tools, clock\n"
          "      --ports LIST             --pre: the ports that must be free\n"
          "                               (default " DEFAULT_PORTS ")\n"
          "      --identity-addr ADDR     mesh-identity's admin (default 127.0.0.1:9990)\n"
          "      --destination-addr ADDR  mesh-destination's admin (default 127.0.0.1:9996)\n"
          "      --identity-dir DIR       the anchor and issuer of 'meshctl identity init'\n"
          "      --proxy ADDR             a meshd admin address (repeatable)\n"
          "      --store-dir DIR          the manifests mesh-destination serves\n"
          "  -o, --output FORMAT          text (default) or json\n"
          "  -h, --help                   show this help\n\n"
          "The identity, data-plane and manifests checks run when --identity-dir, --proxy\n"
          "and --store-dir are given. Every network call times out after 3 s.\n"
          "Each check is " MESHCTL_MARK_OK " (ok), " MESHCTL_MARK_WARN " (warning) or "
          MESHCTL_MARK_ERR " (error).\n"
          "Exit status: 0 when nothing is " MESHCTL_MARK_ERR ", 1 otherwise, 2 for a usage error.\n");
}

/* snprintf for messages, where cutting a long path short is fine. */
__attribute__((format(printf, 3, 4))) static int say(char *buf, size_t size, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, size, fmt, ap);
  va_end(ap);
  return n;
}

/* ---- the report ---- */

typedef struct {
  const char *category;
  char *description, *hint;
  int result;
} check;

typedef struct {
  check *v;
  size_t n, cap;
  int worst;
  bool oom;
} report;

static char *vfmt(const char *fmt, va_list ap) {
  char *s = NULL;
  return vasprintf(&s, fmt, ap) < 0 ? NULL : s;
}

/* Adds a check; desc is a printf format, hint (may be NULL) a plain string. */
__attribute__((format(printf, 5, 6))) static void add(report *r, const char *category, int result,
                                                      const char *hint, const char *fmt, ...) {
  if (r->n == r->cap) {
    size_t cap = r->cap ? r->cap * 2 : 32;
    check *v = realloc(r->v, cap * sizeof *v);
    if (!v) {
      r->oom = true;
      return;
    }
    r->v = v;
    r->cap = cap;
  }
  va_list ap;
  va_start(ap, fmt);
  char *d = vfmt(fmt, ap);
  va_end(ap);
  char *h = strdup(hint ? hint : "");
  if (!d || !h) {
    free(d);
    free(h);
    r->oom = true;
    return;
  }
  r->v[r->n++] = (check){category, d, h, result};
  if (result > r->worst) r->worst = result;
}

static const char *mark(int st) {
  return st == MESHCTL_ST_ERR ? MESHCTL_MARK_ERR : st == MESHCTL_ST_WARN ? MESHCTL_MARK_WARN
                                                                           : MESHCTL_MARK_OK;
}

static void print_text(const report *r) {
  const char *cat = NULL;
  for (size_t i = 0; i < r->n; i++) {
    const check *c = &r->v[i];
    if (!cat || strcmp(cat, c->category) != 0) {
      if (cat) printf("\n");
      cat = c->category;
      printf("%s\n", cat);
      for (size_t k = strlen(cat); k > 0; k--) putchar('-');
      printf("\n");
    }
    printf("%s %s\n", mark(c->result), c->description);
    if (c->result != MESHCTL_ST_OK && *c->hint) {
      /* Every line of the hint indented under its check. */
      for (const char *p = c->hint; *p;) {
        size_t l = strcspn(p, "\n");
        printf("    %.*s\n", (int)l, p);
        p += l + (p[l] == '\n');
      }
    }
  }
  printf("\nStatus check results are %s\n", mark(r->worst));
}

static bool print_json(const report *r) {
  static const char *const names[] = {"ok", "warning", "error"};
  json_t *cats = json_array(), *cur = NULL;
  const char *cat = NULL;
  bool ok = cats != NULL;
  for (size_t i = 0; ok && i < r->n; i++) {
    const check *c = &r->v[i];
    if (!cat || strcmp(cat, c->category) != 0) {
      cat = c->category;
      cur = json_array();
      ok = cur && json_array_append_new(
                      cats, json_pack("{s:s, s:o}", "name", cat, "checks", cur)) == 0;
      if (!ok) break;
    }
    ok = json_array_append_new(cur, json_pack("{s:s, s:s, s:s}", "description", c->description,
                                              "result", names[c->result], "hint", c->hint)) == 0;
  }
  json_t *root = ok ? json_pack("{s:o, s:s, s:b}", "categories", cats, "status", names[r->worst],
                                "success", r->worst != MESHCTL_ST_ERR)
                    : NULL;
  if (!root) json_decref(cats);
  ok = root && json_dumpf(root, stdout, JSON_INDENT(2)) == 0;
  if (ok) printf("\n");
  json_decref(root);
  return ok;
}

/* ---- --pre: the machine ---- */

/* The full path of an executable in PATH, or false. */
static bool in_path(const char *name, char *buf, size_t size) {
  const char *path = getenv("PATH");
  if (!path || !*path) path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  while (*path) {
    size_t l = strcspn(path, ":");
    say(buf, size, "%.*s/%s", (int)l, l ? path : ".", name);
    struct stat st;
    if (stat(buf, &st) == 0 && S_ISREG(st.st_mode) && access(buf, X_OK) == 0) return true;
    path += l + (path[l] == ':');
  }
  return false;
}

/* Runs argv quietly, for at most timeout_ms: its exit status, or -1 (could
 * not run, killed at the timeout). */
static int run_quiet(char *const argv[], int timeout_ms) {
  posix_spawn_file_actions_t fa;
  if (posix_spawn_file_actions_init(&fa) != 0) return -1;
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  pid_t pid;
  int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) return -1;
  int status = 0;
  for (int waited = 0;; waited += 20) {
    pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) return -1;
    if (waited >= timeout_ms) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    struct timespec ts = {0, 20 * 1000000};
    nanosleep(&ts, NULL);
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void pre_kernel(report *r) {
  static const char cat[] = "kernel";
  char path[4096];
  if (!in_path("iptables", path, sizeof path)) {
    add(r, cat, MESHCTL_ST_WARN,
        "iptables is not installed: transparent mode (iptables REDIRECT) is unavailable;\n"
        "explicit mode (--outbound-port-map) works without it",
        "iptables nat table is usable");
  } else {
    char *argv[] = {path, "-w", "2", "-t", "nat", "-S", NULL};
    int st = run_quiet(argv, 5000);
    add(r, cat, st == 0 ? MESHCTL_ST_OK : MESHCTL_ST_WARN,
        "'iptables -t nat -S' failed (it needs root and the nat table): transparent mode is\n"
        "unavailable; explicit mode (--outbound-port-map) works without it",
        "iptables nat table is usable");
  }

  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
  bool reuseport = fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) == 0;
  char why[256];
  say(why, sizeof why, "setsockopt(SO_REUSEPORT): %s", strerror(errno));
  if (fd >= 0) close(fd);
  add(r, cat, reuseport ? MESHCTL_ST_OK : MESHCTL_ST_WARN, why, "SO_REUSEPORT is supported");

  fd = inotify_init1(IN_CLOEXEC);
  say(why, sizeof why,
           "inotify_init1: %s: mesh-destination watches its store directory with inotify",
           strerror(errno));
  if (fd >= 0) close(fd);
  add(r, cat, fd >= 0 ? MESHCTL_ST_OK : MESHCTL_ST_ERR, why, "inotify is available");
}

static bool parse_ports(const char *list, uint16_t *ports, size_t max, size_t *n) {
  *n = 0;
  for (const char *p = list; *p;) {
    char *end;
    errno = 0;
    unsigned long v = strtoul(p, &end, 10);
    if (end == p || errno || v == 0 || v > 65535 || (*end && *end != ',') || *n == max)
      return false;
    ports[(*n)++] = (uint16_t)v;
    p = *end ? end + 1 : end;
  }
  return *n > 0;
}

static void pre_ports(report *r, const uint16_t *ports, size_t n) {
  for (size_t i = 0; i < n; i++) {
    /* The daemons' defaults listen on 0.0.0.0 and 127.0.0.1: a wildcard bind
     * conflicts with both, and SO_REUSEADDR ignores sockets in TIME_WAIT. */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1, err = 0;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(ports[i])};
    sa.sin_addr.s_addr = htonl(INADDR_ANY);
    if (fd < 0) err = errno;
    else {
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 1) < 0) err = errno;
      close(fd);
    }
    char hint[256];
    say(hint, sizeof hint,
             err == EADDRINUSE ? "another process listens on port %u: stop it or choose other "
                                 "ports for the mesh (--ports to check them)"
                               : "cannot bind port %u: %s",
             ports[i], strerror(err));
    add(r, "ports", err ? MESHCTL_ST_ERR : MESHCTL_ST_OK, hint, "port %u is free", ports[i]);
  }
}

static void pre_tools(report *r) {
  static const char *const tools[][2] = {
      {"openssl", "not needed by the mesh at runtime; handy to inspect certificates"},
      {"curl", "not needed by the mesh at runtime; handy to query admin endpoints"},
  };
  for (size_t i = 0; i < sizeof tools / sizeof tools[0]; i++) {
    char path[4096];
    bool found = in_path(tools[i][0], path, sizeof path);
    add(r, "tools", found ? MESHCTL_ST_OK : MESHCTL_ST_WARN, found ? path : tools[i][1],
        "%s is installed", tools[i][0]);
  }
}

/* The build date from __DATE__ ("Nov 26 2026"), as seconds at midnight UTC. */
static uint64_t build_time(void) {
  static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
  char mon[4] = {0};
  int day = 0, year = 0;
  /* A reproducible build would pin this; a clock before it is still wrong. */
  if (sscanf(__DATE__, "%3s %d %d", mon, &day, &year) != 3) return 0;
  const char *m = strstr(months, mon);
  struct tm tm = {.tm_year = year - 1900, .tm_mon = m ? (int)(m - months) / 3 : 0, .tm_mday = day};
  time_t t = timegm(&tm);
  return t > 0 ? (uint64_t)t : 0;
}

static void join(char *buf, size_t size, const char *dir, const char *name) {
  size_t dl = strlen(dir);
  say(buf, size, "%s%s%s", dir, dl && dir[dl - 1] == '/' ? "" : "/", name);
}

static void pre_clock(report *r, mesh_ctx *ctx, const char *identity_dir, uint64_t now) {
  static const char cat[] = "clock";
  uint64_t built = build_time();
  char when[32], hint[512];
  meshctl_rfc3339(built, when);
  say(hint, sizeof hint, "the system time is before meshctl was built (%s): set the clock", when);
  bool ok = now + 86400 >= built; /* a day: __DATE__ is local time */
  add(r, cat, ok ? MESHCTL_ST_OK : MESHCTL_ST_ERR, ok ? NULL : hint,
      "system time is after meshctl's build date");
  if (!identity_dir) return;
  char path[4096], why[1024], *text = NULL;
  size_t len;
  mesh_certs *anchors = NULL;
  join(path, sizeof path, identity_dir, "ca.crt");
  if (!meshctl_certs_load(ctx, path, &text, &len, &anchors, why, sizeof why)) {
    add(r, cat, MESHCTL_ST_WARN, why, "system time is after the trust anchor's notBefore");
    return;
  }
  uint64_t nb = 0;
  for (size_t i = 0; i < mesh_certs_count(anchors); i++)
    if (mesh_certs_not_before(anchors, i) > nb) nb = mesh_certs_not_before(anchors, i);
  meshctl_rfc3339(nb, when);
  say(hint, sizeof hint, "the trust anchor in %s is not valid until %s: set the clock", path,
           when);
  add(r, cat, now >= nb ? MESHCTL_ST_OK : MESHCTL_ST_ERR, now >= nb ? NULL : hint,
      "system time is after the trust anchor's notBefore");
  mesh_certs_free(anchors);
  free(text);
}

/* ---- the control plane ---- */

/* GET ADDR/ready: a check "NAME is ready at ADDR". */
static bool ready(report *r, const char *cat, const char *name, const char *addr,
                  const char *start_hint) {
  int status = 0;
  char *body = NULL, why[512], hint[1024];
  size_t len = 0;
  bool ok = false;
  if (meshctl_http_get(addr, "/ready", HTTP_TIMEOUT_MS, 4096, &status, &body, &len, why,
                       sizeof why) < 0) {
    say(hint, sizeof hint, "%s\n%s", why, start_hint);
  } else {
    ok = status == 200;
    len = strcspn(body, "\r\n");
    say(hint, sizeof hint, "GET http://%s/ready answered %d: %.*s", addr, status,
             (int)(len > 200 ? 200 : len), body);
  }
  free(body);
  add(r, cat, ok ? MESHCTL_ST_OK : MESHCTL_ST_ERR, ok ? NULL : hint, "%s is ready at %s", name,
      addr);
  return ok;
}

typedef struct {
  mesh_certs *anchors, *issuer;
  char *anchors_text, *issuer_text;
  size_t issuer_len;
  char anchors_file[4096];
} trust;

/* Linkerd's linkerd-identity checks, on the files of `meshctl identity init`. */
static void identity(report *r, mesh_ctx *ctx, const char *dir, uint64_t now, trust *t) {
  static const char cat[] = "identity";
  char issuer_file[4096], why[1024], msg[256];
  size_t len;
  join(t->anchors_file, sizeof t->anchors_file, dir, "ca.crt");
  join(issuer_file, sizeof issuer_file, dir, "issuer.crt");

  if (!meshctl_certs_load(ctx, t->anchors_file, &t->anchors_text, &len, &t->anchors, why,
                          sizeof why)) {
    add(r, cat, MESHCTL_ST_ERR, why, "trust anchors are valid");
  } else {
    int valid = MESHCTL_ST_OK, soon = MESHCTL_ST_OK;
    char vh[512] = "", sh[512] = "";
    for (size_t i = 0; i < mesh_certs_count(t->anchors); i++) {
      int st = mesh_certs_is_ca(t->anchors, i) == 1 ? MESHCTL_ST_OK : MESHCTL_ST_ERR;
      if (st)
        say(msg, sizeof msg, "trust anchor %s is not a CA", mesh_certs_subject(t->anchors, i));
      else
        st = meshctl_cert_dates("trust anchor", mesh_certs_not_before(t->anchors, i),
                                mesh_certs_not_after(t->anchors, i), true, now, msg, sizeof msg);
      if (st == MESHCTL_ST_ERR && !valid) {
        valid = st;
        say(vh, sizeof vh, "%s: %s", t->anchors_file, msg);
      } else if (st == MESHCTL_ST_WARN && !soon) {
        soon = st;
        say(sh, sizeof sh, "%s: %s", t->anchors_file, msg);
      }
    }
    add(r, cat, valid, vh, "trust anchors are valid");
    add(r, cat, soon, sh, "trust anchors are valid for at least 60 days");
  }

  if (!meshctl_certs_load(ctx, issuer_file, &t->issuer_text, &t->issuer_len, &t->issuer, why,
                          sizeof why)) {
    add(r, cat, MESHCTL_ST_ERR, why, "issuer certificate is valid");
    return;
  }
  int st = mesh_certs_is_ca(t->issuer, 0) == 1 ? MESHCTL_ST_OK : MESHCTL_ST_ERR;
  if (st) say(msg, sizeof msg, "the issuer is not a CA: it cannot sign workload certificates");
  else
    st = meshctl_cert_dates("issuer", mesh_certs_not_before(t->issuer, 0),
                            mesh_certs_not_after(t->issuer, 0), true, now, msg, sizeof msg);
  char hint[1400];
  say(hint, sizeof hint, "%s: %s", issuer_file, msg);
  add(r, cat, st == MESHCTL_ST_ERR ? st : MESHCTL_ST_OK, st == MESHCTL_ST_ERR ? hint : NULL,
      "issuer certificate is valid");
  if (t->anchors) {
    const char *reason = NULL;
    int rc = mesh_certs_verify(t->issuer, t->anchors, now, &reason);
    say(hint, sizeof hint, "%s is not signed by the trust anchors in %s: %s", issuer_file,
             t->anchors_file, reason ? reason : mesh_strerror(rc));
    /* Dates have their own checks. */
    bool bad = rc < 0 && rc != MESH_ERR_EXPIRED;
    add(r, cat, bad ? MESHCTL_ST_ERR : MESHCTL_ST_OK, bad ? hint : NULL,
        "issuer certificate is issued by the trust anchor");
  }
  say(hint, sizeof hint, "%s: %s", issuer_file, msg);
  add(r, cat, st == MESHCTL_ST_WARN ? st : MESHCTL_ST_OK, st == MESHCTL_ST_WARN ? hint : NULL,
      "issuer certificate is valid for at least 60 days");
}

/* ---- the data plane ---- */

/* The value of an unlabelled sample in Prometheus text, or false. */
static bool metric(const char *text, const char *name, double *v) {
  size_t nl = strlen(name);
  for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
    if (!strncmp(p, name, nl) && p[nl] == ' ') {
      char *end;
      *v = strtod(p + nl + 1, &end);
      return end != p + nl + 1;
    }
  return false;
}

/* Whether the certificates the proxy uses chain to the anchors: the PEM its
 * /env.json serves (public), so this holds wherever the proxy got them from
 * (files or mesh-identity) and whichever machine it runs on. */
static void proxy_chain(report *r, mesh_ctx *ctx, const char *addr, json_t *env, const trust *t,
                        uint64_t now) {
  static const char cat[] = "data-plane";
  const char *text = json_string_value(json_object_get(env, "identity_chain_pem"));
  char hint[1400];
  mesh_certs *chain = NULL;
  if (!text || mesh_certs_parse(ctx, text, strlen(text), NULL, &chain) != 0) {
    say(hint, sizeof hint, "cannot tell: %s",
        text ? "its /env.json identity_chain_pem is not PEM certificates"
             : "its /env.json has no identity_chain_pem (an older meshd?)");
    add(r, cat, MESHCTL_ST_WARN, hint, "proxy %s's certificate is issued by the trust anchor",
        addr);
    return;
  }
  const char *reason = NULL;
  int rc = mesh_certs_verify(chain, t->anchors, now, &reason);
  if (rc == MESH_ERR_TLS && t->issuer_text && mesh_certs_count(chain) == 1) {
    /* A bare leaf: the issuer of this mesh completes the chain. */
    size_t len = strlen(text), jl = len + t->issuer_len + 2;
    char *joined = malloc(jl);
    mesh_certs *full = NULL;
    if (joined) {
      say(joined, jl, "%s\n%s", text, t->issuer_text);
      if (mesh_certs_parse(ctx, joined, strlen(joined), NULL, &full) == 0)
        rc = mesh_certs_verify(full, t->anchors, now, &reason);
    }
    mesh_certs_free(full);
    free(joined);
  }
  say(hint, sizeof hint, "its certificate is not signed by the trust anchors in %s: %s",
      t->anchors_file, reason ? reason : mesh_strerror(rc));
  bool bad = rc < 0 && rc != MESH_ERR_EXPIRED;
  add(r, cat, bad ? MESHCTL_ST_ERR : MESHCTL_ST_OK, bad ? hint : NULL,
      "proxy %s's certificate is issued by the trust anchor", addr);
  mesh_certs_free(chain);
}

static void proxy(report *r, mesh_ctx *ctx, const char *addr, const trust *t, uint64_t now) {
  static const char cat[] = "data-plane";
  char hint[1400], why[512];
  if (!ready(r, cat, "proxy", addr, "is meshd running with --admin-listen-addr at this address?"))
    return;

  int status = 0;
  char *body = NULL;
  size_t len = 0;
  json_t *env = NULL;
  if (meshctl_http_get(addr, "/env.json", HTTP_TIMEOUT_MS, BODY_LIMIT, &status, &body, &len, why,
                       sizeof why) < 0 ||
      status != 200 || !(env = json_loadb(body, len, 0, NULL))) {
    if (status && status != 200) say(why, sizeof why, "GET /env.json answered %d", status);
    else if (!env && status == 200) say(why, sizeof why, "/env.json is not JSON");
    add(r, cat, MESHCTL_ST_ERR, why, "proxy %s reports its identity", addr);
    free(body);
    return;
  }
  free(body);
  body = NULL;

  /* The certificate: who it names (/env.json) and when it ends (/metrics). */
  const char *id = json_string_value(json_object_get(env, "identity"));
  double exp = 0;
  bool have_exp = false;
  if (meshctl_http_get(addr, "/metrics", HTTP_TIMEOUT_MS, BODY_LIMIT, &status, &body, &len, why,
                       sizeof why) == 0 &&
      status == 200)
    have_exp = metric(body, "identity_cert_expiration_timestamp_seconds", &exp);
  free(body);
  if (!have_exp && json_integer_value(json_object_get(env, "identity_not_after")) > 0) {
    exp = (double)json_integer_value(json_object_get(env, "identity_not_after"));
    have_exp = true;
  }
  int st = MESHCTL_ST_OK;
  if (!id) {
    st = MESHCTL_ST_ERR;
    say(hint, sizeof hint, "the proxy holds no certificate (its /env.json identity is null)");
  } else if (!have_exp) {
    st = MESHCTL_ST_WARN;
    say(hint, sizeof hint, "%s: no identity_cert_expiration_timestamp_seconds on /metrics", id);
  } else if (exp < (double)now) {
    char when[32];
    meshctl_rfc3339((uint64_t)exp, when);
    st = MESHCTL_ST_ERR;
    say(hint, sizeof hint, "%s: the certificate expired on %s", id, when);
  } else {
    say(hint, sizeof hint, "%s", id);
  }
  add(r, cat, st, hint, "proxy %s holds a valid certificate%s%s", addr, id ? " for " : "",
      id ? id : "");
  if (id && t->anchors) proxy_chain(r, ctx, addr, env, t, now);

  const char *v = json_string_value(json_object_get(env, "version"));
  const char *mine = mesh_version_string();
  if (!v) say(hint, sizeof hint, "the proxy's /env.json has no version");
  else say(hint, sizeof hint, "the proxy runs %s, meshctl is %s: upgrade the older one", v, mine);
  bool same = v && !strcmp(v, mine);
  add(r, cat, same ? MESHCTL_ST_OK : MESHCTL_ST_WARN, same ? NULL : hint,
      "proxy %s runs meshctl's version (%s)", addr, mine);
  json_decref(env);
}

/* ---- the manifests ---- */

static int pick(const struct dirent *e) { return mesh_manifest_file_name(e->d_name); }

/* As `meshctl validate -f DIR` judges them, one file at a time. */
static void manifests(report *r, mesh_ctx *ctx, const char *dir) {
  static const char cat[] = "manifests";
  struct dirent **names = NULL;
  int n = scandir(dir, &names, pick, alphasort);
  char hint[2048] = "";
  if (n < 0) {
    say(hint, sizeof hint, "%s: %s", dir, strerror(errno));
    add(r, cat, MESHCTL_ST_ERR, hint, "manifests in %s are valid", dir);
    return;
  }
  size_t used = 0, bad = 0, files = 0;
  for (int i = 0; i < n; i++) {
    char path[4096];
    join(path, sizeof path, dir, names[i]->d_name);
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) continue;
    files++;
    mesh_diags *d = NULL;
    mesh_manifest *m = NULL;
    int rc = mesh_diags_new(ctx, &d);
    if (rc == 0) rc = mesh_manifest_load_file(ctx, path, d, &m);
    if (rc < 0) {
      bad++;
      /* The first errors, as validate prints them; enough to act on. */
      size_t nd = mesh_diags_count(d);
      if (nd == 0 && used < sizeof hint)
        used += (size_t)say(hint + used, sizeof hint - used, "%s%s: %s", used ? "\n" : "",
                                 path, mesh_strerror(rc));
      for (size_t k = 0; k < nd && k < 3 && used < sizeof hint; k++)
        used += (size_t)say(hint + used, sizeof hint - used, "%s%s", used ? "\n" : "",
                                 mesh_diags_text(d, k));
    }
    mesh_manifest_free(m);
    mesh_diags_free(d);
  }
  for (int i = 0; i < n; i++) free(names[i]);
  free(names);
  if (files == 0) {
    say(hint, sizeof hint, "no manifests (*.yaml, *.yml, *.json) in %s", dir);
    add(r, cat, MESHCTL_ST_WARN, hint, "manifests in %s are valid", dir);
    return;
  }
  if (bad && used >= sizeof hint) strcpy(hint + sizeof hint - 5, "...");
  add(r, cat, bad ? MESHCTL_ST_ERR : MESHCTL_ST_OK, hint, "manifests in %s are valid (%zu file%s)",
      dir, files, files == 1 ? "" : "s");
}

/* ---- the command ---- */

static int run(int argc, char **argv) {
  enum { OPT_PRE = 256, OPT_PORTS, OPT_IDADDR, OPT_DSTADDR, OPT_IDDIR, OPT_PROXY, OPT_STORE };
  static const struct option opts[] = {
      {"pre", no_argument, NULL, OPT_PRE},
      {"ports", required_argument, NULL, OPT_PORTS},
      {"identity-addr", required_argument, NULL, OPT_IDADDR},
      {"destination-addr", required_argument, NULL, OPT_DSTADDR},
      {"identity-dir", required_argument, NULL, OPT_IDDIR},
      {"proxy", required_argument, NULL, OPT_PROXY},
      {"store-dir", required_argument, NULL, OPT_STORE},
      {"output", required_argument, NULL, 'o'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *prog = argv[0], *ports_arg = DEFAULT_PORTS, *id_addr = "127.0.0.1:9990",
             *dst_addr = "127.0.0.1:9996", *id_dir = NULL, *store = NULL;
  const char *proxies[MAX_PROXIES];
  size_t nproxies = 0;
  bool pre = false, json = false, cp_flags = false;
  int c;
  optind = 0;
  while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
    switch (c) {
    case OPT_PRE: pre = true; break;
    case OPT_PORTS: ports_arg = optarg; break;
    case OPT_IDADDR: id_addr = optarg; cp_flags = true; break;
    case OPT_DSTADDR: dst_addr = optarg; cp_flags = true; break;
    case OPT_IDDIR: id_dir = optarg; break;
    case OPT_PROXY:
      if (nproxies == MAX_PROXIES) {
        fprintf(stderr, "%s: at most %d --proxy flags\n", prog, MAX_PROXIES);
        return meshctl_usage_error(prog);
      }
      proxies[nproxies++] = optarg;
      cp_flags = true;
      break;
    case OPT_STORE: store = optarg; cp_flags = true; break;
    case 'o':
      if (!meshctl_parse_output(prog, optarg, &json)) return meshctl_usage_error(prog);
      break;
    case 'h': usage(stdout); return MESHCTL_OK;
    default: return meshctl_usage_error(prog);
    }
  }
  if (optind < argc) {
    fprintf(stderr, "%s: unexpected argument '%s'\n", prog, argv[optind]);
    return meshctl_usage_error(prog);
  }
  uint16_t ports[128];
  size_t nports = 0;
  if (pre && cp_flags) {
    fprintf(stderr, "%s: --pre checks the machine only: drop the control-plane flags\n", prog);
    return meshctl_usage_error(prog);
  }
  if (!parse_ports(ports_arg, ports, sizeof ports / sizeof ports[0], &nports)) {
    fprintf(stderr, "%s: --ports %s: expected a comma-separated list of ports 1-65535\n", prog,
            ports_arg);
    return meshctl_usage_error(prog);
  }

  mesh_ctx *ctx = meshctl_ctx(prog);
  if (!ctx) return MESHCTL_FAILED;
  report r = {0};
  trust t = {0};
  uint64_t now = (uint64_t)time(NULL);
  if (pre) {
    pre_kernel(&r);
    pre_ports(&r, ports, nports);
    pre_tools(&r);
    pre_clock(&r, ctx, id_dir, now);
  } else {
    ready(&r, "control-plane", "mesh-identity", id_addr,
          "is mesh-identity running? It serves /ready on its --admin address");
    ready(&r, "control-plane", "mesh-destination", dst_addr,
          "is mesh-destination running? It serves /ready on its --admin address");
    if (id_dir) identity(&r, ctx, id_dir, now, &t);
    for (size_t i = 0; i < nproxies; i++) proxy(&r, ctx, proxies[i], &t, now);
    if (store) manifests(&r, ctx, store);
  }

  int status = MESHCTL_FAILED;
  if (r.oom) fprintf(stderr, "%s: out of memory\n", prog);
  else if (json && !print_json(&r)) fprintf(stderr, "%s: cannot write the JSON report\n", prog);
  else {
    if (!json) print_text(&r);
    status = r.worst == MESHCTL_ST_ERR || fflush(stdout) != 0 ? MESHCTL_FAILED : MESHCTL_OK;
  }
  for (size_t i = 0; i < r.n; i++) {
    free(r.v[i].description);
    free(r.v[i].hint);
  }
  free(r.v);
  mesh_certs_free(t.anchors);
  mesh_certs_free(t.issuer);
  free(t.anchors_text);
  free(t.issuer_text);
  mesh_ctx_free(ctx);
  return status;
}

const meshctl_command meshctl_cmd_check = {
    .name = "check",
    .summary = "check the machine (--pre) or the mesh's health, as linkerd check",
    .run = run,
    .usage = usage,
};

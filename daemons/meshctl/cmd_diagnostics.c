/* meshctl diagnostics: check the mesh's certificates for expiry and trust, as `linkerd check` reports them. */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "meshctl.h"

static const char OK_MARK[] = MESHCTL_MARK_OK, WARN_MARK[] = MESHCTL_MARK_WARN,
                  ERR_MARK[] = MESHCTL_MARK_ERR;

static void usage(FILE *out) {
  fprintf(out,
          "Diagnose the mesh's state.\n\n"
          "Usage:\n"
          "  meshctl diagnostics certificates --dir DIR [--certs FILE...] [-o text|json]\n");
  meshctl_diagnostics_destination_usage(out);
  fprintf(out,
          "\nSubcommands:\n"
          "  certificates   list the trust anchors (DIR/ca.crt), the issuer (DIR/issuer.crt)\n"
          "                 and any given workload certificates, with their expiry\n");
  meshctl_diagnostics_destination_help(out);
  fprintf(out,
          "\n"
          "Flags of certificates:\n"
          "      --dir DIR           the directory of 'meshctl identity init'\n"
          "      --certs FILE...     PEM files of workload certificates (leaf first, then its\n"
          "                          chain); more files may follow as arguments\n"
          "  -o, --output FORMAT     text (default) or json\n"
          "  -h, --help              show this help\n\n"
          "STATUS is " "\u221a" " when valid, " "\u203c" " for a trust anchor or issuer that "
          "expires within 60 days,\n"
          "and " "\u00d7" " for a certificate that has expired, is not valid yet, or does not "
          "chain to\nthe trust anchors.\n"
          "Exit status: 0 when nothing is " "\u00d7" ", 1 otherwise, 2 for a usage error.\n");
}

enum { ST_OK = MESHCTL_ST_OK, ST_WARN = MESHCTL_ST_WARN, ST_ERR = MESHCTL_ST_ERR };

typedef struct {
  char name[128];
  const char *kind; /* "trust anchor", "issuer", "intermediate", "leaf" */
  const char *file;
  const char *subject;
  uint64_t not_before, not_after;
  int status;
  char message[512]; /* why it is not √ */
} row;

typedef struct {
  row *rows;
  size_t n, cap;
  int worst;
  bool failed; /* a file could not be read: × too */
} report;

/* The CN of "CN=a, O=b", or the whole subject when it has none. */
static void common_name(const char *subject, char *buf, size_t size) {
  const char *p = subject;
  while (p && *p) {
    if (strncmp(p, "CN=", 3) == 0) {
      size_t n = strcspn(p + 3, ",");
      snprintf(buf, size, "%.*s", (int)n, p + 3);
      return;
    }
    p = strchr(p, ',');
    if (p) p += strspn(p, ", ");
  }
  snprintf(buf, size, "%s", subject && *subject ? subject : "(no subject)");
}

/* "364d", "23h", "59m", or "expired". */
static void expires_in(uint64_t not_after, uint64_t now, char buf[32]) {
  if (now > not_after) {
    snprintf(buf, 32, "expired");
    return;
  }
  uint64_t left = not_after - now;
  if (left >= 2 * 86400) snprintf(buf, 32, "%llud", (unsigned long long)(left / 86400));
  else if (left >= 3600) snprintf(buf, 32, "%lluh", (unsigned long long)(left / 3600));
  else snprintf(buf, 32, "%llum", (unsigned long long)(left / 60));
}

static row *add_row(report *r, const mesh_certs *c, size_t i, const char *kind, const char *file) {
  if (r->n == r->cap) {
    size_t cap = r->cap ? r->cap * 2 : 16;
    row *rows = realloc(r->rows, cap * sizeof *rows);
    if (!rows) return NULL;
    r->rows = rows;
    r->cap = cap;
  }
  row *w = &r->rows[r->n++];
  memset(w, 0, sizeof *w);
  common_name(mesh_certs_subject(c, i), w->name, sizeof w->name);
  w->kind = kind;
  w->file = file;
  w->subject = mesh_certs_subject(c, i);
  w->not_before = mesh_certs_not_before(c, i);
  w->not_after = mesh_certs_not_after(c, i);
  return w;
}

static void set_status(report *r, row *w, int status, const char *fmt, const char *a,
                       const char *b) {
  if (status <= w->status) return; /* keep the worst, and its message */
  w->status = status;
  snprintf(w->message, sizeof w->message, fmt, a, b);
  if (status > r->worst) r->worst = status;
}

/* The checks on dates: × expired or not yet valid; ‼ a CA expiring soon. */
static void check_dates(report *r, row *w, bool ca, uint64_t now) {
  char msg[256];
  int st = meshctl_cert_dates(w->kind, w->not_before, w->not_after, ca, now, msg, sizeof msg);
  if (st != ST_OK) set_status(r, w, st, "%s%s", msg, "");
}

static bool load(const char *prog, mesh_ctx *ctx, const char *path, char **text, size_t *len,
                 mesh_certs **ret) {
  char why[1024];
  if (meshctl_certs_load(ctx, path, text, len, ret, why, sizeof why)) return true;
  fprintf(stderr, "%s: %s\n", prog, why);
  return false;
}

/* Whether chain leads to anchors: a failure other than dates (reported on
 * their own rows) makes w ×. */
static void check_chain(report *r, row *w, const mesh_certs *chain, const mesh_certs *anchors,
                        const char *anchors_file, uint64_t now) {
  if (!chain || !anchors) return;
  const char *why = NULL;
  int rc = mesh_certs_verify(chain, anchors, now, &why);
  if (rc < 0 && rc != MESH_ERR_EXPIRED)
    set_status(r, w, ST_ERR, "not signed by the trust anchors in %s: %s", anchors_file,
               why ? why : mesh_strerror(rc));
}

static void print_text(const report *r) {
  static const char *const head[] = {"NAME", "KIND", "NOT_AFTER", "EXPIRES_IN", "STATUS"};
  size_t w[4];
  for (int k = 0; k < 4; k++) w[k] = strlen(head[k]);
  uint64_t now = (uint64_t)time(NULL);
  for (size_t i = 0; i < r->n; i++) {
    if (strlen(r->rows[i].name) > w[0]) w[0] = strlen(r->rows[i].name);
    if (strlen(r->rows[i].kind) > w[1]) w[1] = strlen(r->rows[i].kind);
  }
  w[2] = 20; /* an RFC 3339 time */
  printf("%-*s   %-*s   %-*s   %-*s   %s\n", (int)w[0], head[0], (int)w[1], head[1], (int)w[2],
         head[2], (int)w[3], head[3], head[4]);
  for (size_t i = 0; i < r->n; i++) {
    const row *x = &r->rows[i];
    char na[32], left[32];
    meshctl_rfc3339(x->not_after, na);
    expires_in(x->not_after, now, left);
    printf("%-*s   %-*s   %-*s   %-*s   %s\n", (int)w[0], x->name, (int)w[1], x->kind, (int)w[2],
           na, (int)w[3], left,
           x->status == ST_ERR ? ERR_MARK : x->status == ST_WARN ? WARN_MARK : OK_MARK);
  }
  bool any = false;
  for (size_t i = 0; i < r->n; i++) {
    const row *x = &r->rows[i];
    if (x->status == ST_OK) continue;
    if (!any) printf("\n");
    any = true;
    printf("%s %s (%s): %s\n", x->status == ST_ERR ? ERR_MARK : WARN_MARK, x->name, x->file,
           x->message);
  }
  int worst = r->failed ? ST_ERR : r->worst;
  printf("\nStatus check results are %s\n",
         worst == ST_ERR ? ERR_MARK : worst == ST_WARN ? WARN_MARK : OK_MARK);
}

static bool print_json(const report *r) {
  static const char *const names[] = {"ok", "warning", "error"};
  uint64_t now = (uint64_t)time(NULL);
  json_t *list = json_array();
  for (size_t i = 0; list && i < r->n; i++) {
    const row *x = &r->rows[i];
    char nb[32], na[32];
    meshctl_rfc3339(x->not_before, nb);
    meshctl_rfc3339(x->not_after, na);
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:s, s:s}", "name", x->name, "kind",
                          x->kind, "file", x->file, "subject", x->subject, "notBefore", nb,
                          "notAfter", na, "expiresInSeconds",
                          (json_int_t)((long long)x->not_after - (long long)now), "status",
                          names[x->status], "message", x->message);
    if (!o || json_array_append_new(list, o) != 0) {
      json_decref(list);
      list = NULL;
    }
  }
  json_t *root = list ? json_pack("{s:o, s:s}", "certificates", list, "status",
                                  names[r->failed ? ST_ERR : r->worst])
                      : NULL;
  bool ok = root && json_dumpf(root, stdout, JSON_INDENT(2)) == 0;
  if (ok) printf("\n");
  json_decref(root);
  return ok;
}

static int certificates(int argc, char **argv) {
  enum { OPT_DIR = 256, OPT_CERTS };
  static const struct option opts[] = {
      {"dir", required_argument, NULL, OPT_DIR},
      {"certs", required_argument, NULL, OPT_CERTS},
      {"output", required_argument, NULL, 'o'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *prog = argv[0], *dir = NULL;
  const char **leaves = calloc((size_t)argc, sizeof *leaves);
  size_t nleaves = 0;
  bool json = false;
  int c, status = MESHCTL_OK;
  if (!leaves) {
    fprintf(stderr, "%s: out of memory\n", prog);
    return MESHCTL_FAILED;
  }
  optind = 0;
  while (status == MESHCTL_OK && (c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
    switch (c) {
    case OPT_DIR: dir = optarg; break;
    case OPT_CERTS: leaves[nleaves++] = optarg; break;
    case 'o':
      if (!meshctl_parse_output(prog, optarg, &json)) status = meshctl_usage_error(prog);
      break;
    case 'h':
      usage(stdout);
      free(leaves);
      return MESHCTL_OK;
    default: status = meshctl_usage_error(prog); break;
    }
  }
  /* `--certs a.pem b.pem` reads as two files, as a user would expect. */
  while (status == MESHCTL_OK && optind < argc) leaves[nleaves++] = argv[optind++];
  if (status == MESHCTL_OK && !dir) {
    fprintf(stderr, "%s: give the directory of 'meshctl identity init' with --dir DIR\n", prog);
    status = meshctl_usage_error(prog);
  }
  if (status != MESHCTL_OK) {
    free(leaves);
    return status;
  }

  char anchors_file[4096], issuer_file[4096];
  size_t dl = strlen(dir);
  const char *sep = dl && dir[dl - 1] == '/' ? "" : "/";
  int a = snprintf(anchors_file, sizeof anchors_file, "%s%sca.crt", dir, sep);
  int b = snprintf(issuer_file, sizeof issuer_file, "%s%sissuer.crt", dir, sep);
  if (a < 0 || b < 0 || (size_t)a >= sizeof anchors_file || (size_t)b >= sizeof issuer_file) {
    fprintf(stderr, "%s: %s: path too long\n", prog, dir);
    free(leaves);
    return MESHCTL_FAILED;
  }

  report r = {0};
  mesh_certs *anchors = NULL, *issuer = NULL;
  char *anchors_text = NULL, *issuer_text = NULL;
  size_t anchors_len = 0, issuer_len = 0;
  mesh_certs **leaf_certs = calloc(nleaves ? nleaves : 1, sizeof *leaf_certs);
  mesh_ctx *ctx = meshctl_ctx(prog);
  uint64_t now = (uint64_t)time(NULL);
  status = MESHCTL_FAILED;
  if (!ctx || !leaf_certs) {
    if (!leaf_certs) fprintf(stderr, "%s: out of memory\n", prog);
    goto done;
  }

  if (!load(prog, ctx, anchors_file, &anchors_text, &anchors_len, &anchors)) r.failed = true;
  for (size_t i = 0; anchors && i < mesh_certs_count(anchors); i++) {
    row *w = add_row(&r, anchors, i, "trust anchor", anchors_file);
    if (!w) goto nomem;
    if (!mesh_certs_is_ca(anchors, i))
      set_status(&r, w, ST_ERR, "%s is not a CA%s", w->kind, "");
    check_dates(&r, w, true, now);
  }

  if (!load(prog, ctx, issuer_file, &issuer_text, &issuer_len, &issuer)) r.failed = true;
  for (size_t i = 0; issuer && i < mesh_certs_count(issuer); i++) {
    row *w = add_row(&r, issuer, i, i == 0 ? "issuer" : "intermediate", issuer_file);
    if (!w) goto nomem;
    if (!mesh_certs_is_ca(issuer, i))
      set_status(&r, w, ST_ERR, "%s is not a CA: it cannot sign workload certificates%s", w->kind,
                 "");
    check_dates(&r, w, true, now);
    if (i == 0) check_chain(&r, w, issuer, anchors, anchors_file, now);
  }

  for (size_t f = 0; f < nleaves; f++) {
    char *text = NULL;
    size_t len = 0;
    if (!load(prog, ctx, leaves[f], &text, &len, &leaf_certs[f])) {
      r.failed = true;
      continue;
    }
    mesh_certs *lc = leaf_certs[f];
    size_t first = r.n; /* an index: add_row may move the rows */
    for (size_t i = 0; i < mesh_certs_count(lc); i++) {
      bool ca = mesh_certs_is_ca(lc, i) == 1;
      row *w = add_row(&r, lc, i, ca ? "intermediate" : "leaf", leaves[f]);
      if (!w) {
        free(text);
        goto nomem;
      }
      check_dates(&r, w, ca, now);
    }
    /* The leaf's chain: the file, then the issuer (the proxy sends both). */
    if (first < r.n && issuer_text && r.rows[first].status != ST_ERR) {
      size_t tl = len + issuer_len + 2;
      char *joined = malloc(tl);
      mesh_certs *chain = NULL;
      if (!joined) {
        free(text);
        goto nomem;
      }
      snprintf(joined, tl, "%s\n%s", text, issuer_text);
      if (mesh_certs_parse(ctx, joined, strlen(joined), NULL, &chain) == 0)
        check_chain(&r, &r.rows[first], chain, anchors, anchors_file, now);
      mesh_certs_free(chain);
      free(joined);
    }
    free(text);
  }

  if (!json) {
    print_text(&r);
  } else if (!print_json(&r)) {
    fprintf(stderr, "%s: cannot write the JSON report\n", prog);
    goto done;
  }
  status = r.failed || r.worst == ST_ERR || fflush(stdout) != 0 ? MESHCTL_FAILED : MESHCTL_OK;
  goto done;
nomem:
  fprintf(stderr, "%s: out of memory\n", prog);
done:
  for (size_t f = 0; leaf_certs && f < nleaves; f++) mesh_certs_free(leaf_certs[f]);
  free(leaf_certs);
  mesh_certs_free(issuer);
  mesh_certs_free(anchors);
  free(issuer_text);
  free(anchors_text);
  free(r.rows);
  free(leaves);
  mesh_ctx_free(ctx);
  return status;
}

static int run(int argc, char **argv) {
  const char *prog = argv[0];
  if (argc < 2) {
    fprintf(stderr, "%s: give a subcommand: certificates, endpoints, profile\n\n", prog);
    usage(stderr);
    return MESHCTL_USAGE;
  }
  const char *name = argv[1];
  if (!strcmp(name, "-h") || !strcmp(name, "--help") || !strcmp(name, "help")) {
    usage(stdout);
    return MESHCTL_OK;
  }
  bool endpoints = !strcmp(name, "endpoints"), profile = !strcmp(name, "profile");
  if (strcmp(name, "certificates") != 0 && !endpoints && !profile) {
    fprintf(stderr, "%s: unknown subcommand '%s'\n\n", prog, name);
    usage(stderr);
    return MESHCTL_USAGE;
  }
  char sub[96];
  snprintf(sub, sizeof sub, "%s %s", prog, name);
  argv[1] = sub;
  if (endpoints) return meshctl_diagnostics_endpoints(argc - 1, argv + 1, usage);
  if (profile) return meshctl_diagnostics_profile(argc - 1, argv + 1, usage);
  return certificates(argc - 1, argv + 1);
}

const meshctl_command meshctl_cmd_diagnostics = {
    .name = "diagnostics",
    .summary = "check certificates; show a destination's endpoints and profile",
    .run = run,
    .usage = usage,
};

/* meshctl validate: load manifests as the mesh would and report every problem with its position. */
#include <dirent.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "meshctl.h"

static void usage(FILE *out) {
  fprintf(out,
          "Check manifests (ServiceProfile, TrafficSplit, policy resources...) for errors.\n\n"
          "Usage:\n  meshctl validate -f FILE [-f FILE...] [-o text|json]\n\n"
          "Flags:\n"
          "  -f, --filename FILE   a YAML or JSON file; '-' reads standard input; a directory\n"
          "                        means its *.yaml, *.yml and *.json files, in name order\n"
          "  -o, --output FORMAT   text (default): a line per document on stdout and\n"
          "                        diagnostics on stderr; json: one JSON report on stdout\n"
          "  -h, --help            show this help\n\n"
          "Exit status: 0 when every file is valid (warnings allowed), 1 when any has an\n"
          "error, 2 for a usage error.\n");
}

/* What was checked: a file and its outcome, or a directory with no manifests. */
typedef struct {
  char *file;        /* as named in diagnostics: the path, or "<stdin>" */
  char *path;        /* what to open */
  const char *note;  /* an error about the input itself (empty directory) */
  mesh_manifest *m;  /* NULL unless valid */
  mesh_diags *diags;
  int rc;
} result;

typedef struct {
  result *items;
  size_t n, cap;
} results;

static result *add(results *rs, const char *path, const char *file) {
  if (rs->n == rs->cap) {
    size_t cap = rs->cap ? rs->cap * 2 : 8;
    result *items = realloc(rs->items, cap * sizeof *items);
    if (!items) return NULL;
    rs->items = items;
    rs->cap = cap;
  }
  result *r = &rs->items[rs->n];
  memset(r, 0, sizeof *r);
  r->path = strdup(path);
  r->file = strdup(file);
  if (!r->path || !r->file) {
    free(r->path);
    free(r->file);
    return NULL;
  }
  rs->n++;
  return r;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A directory's manifests, sorted by name so that output is reproducible. */
static bool expand_dir(const char *prog, results *rs, const char *dir) {
  DIR *d = opendir(dir);
  if (!d) {
    result *r = add(rs, dir, dir);
    if (!r) return false;
    r->note = "cannot read the directory";
    return true;
  }
  char **names = NULL;
  size_t n = 0, cap = 0;
  bool ok = true;
  struct dirent *e;
  while (ok && (e = readdir(d))) {
    if (!mesh_manifest_file_name(e->d_name)) continue;
    size_t dl = strlen(dir);
    char *p = malloc(dl + strlen(e->d_name) + 2);
    if (!p) {
      ok = false;
      break;
    }
    sprintf(p, "%s%s%s", dir, dl && dir[dl - 1] == '/' ? "" : "/", e->d_name);
    struct stat st;
    if (stat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
      free(p);
      continue;
    }
    if (n == cap) {
      cap = cap ? cap * 2 : 16;
      char **nn = realloc(names, cap * sizeof *nn);
      if (!nn) {
        free(p);
        ok = false;
        break;
      }
      names = nn;
    }
    names[n++] = p;
  }
  closedir(d);
  if (ok && n) qsort(names, n, sizeof *names, cmp_str);
  for (size_t i = 0; i < n; i++) {
    if (ok && !add(rs, names[i], names[i])) ok = false;
    free(names[i]);
  }
  free(names);
  if (ok && n == 0) {
    result *r = add(rs, dir, dir);
    if (!r) ok = false;
    else r->note = "no manifests (*.yaml, *.yml, *.json) in this directory";
  }
  if (!ok) fprintf(stderr, "%s: out of memory\n", prog);
  return ok;
}

static bool expand(const char *prog, results *rs, const char *arg) {
  struct stat st;
  if (strcmp(arg, "-") != 0 && stat(arg, &st) == 0 && S_ISDIR(st.st_mode))
    return expand_dir(prog, rs, arg);
  /* Anything else is loaded as a file; libmesh says why one cannot be read. */
  if (add(rs, arg, strcmp(arg, "-") == 0 ? "<stdin>" : arg)) return true;
  fprintf(stderr, "%s: out of memory\n", prog);
  return false;
}

/* 9000 of 10000 -> "90%", 3333 -> "33.33%". */
static void percent(char *buf, size_t size, uint32_t w) {
  if (w % 100 == 0)
    snprintf(buf, size, "%u%%", w / 100);
  else if (w % 10 == 0)
    snprintf(buf, size, "%u.%u%%", w / 100, (w % 100) / 10);
  else
    snprintf(buf, size, "%u.%02u%%", w / 100, w % 100);
}

/* The one-line summary of document i. */
static void describe(FILE *out, const mesh_manifest *m, size_t i) {
  const char *kind = mesh_manifest_kind_name(m, i), *name = mesh_manifest_name(m, i);
  fprintf(out, "%s", kind ? kind : "(no kind)");
  if (name) fprintf(out, " %s/%s", mesh_manifest_namespace(m, i), name);
  switch (mesh_manifest_kind(m, i)) {
  case MESH_KIND_SERVICE_PROFILE: {
    size_t n = mesh_profile_route_count(mesh_manifest_profile(m, i));
    fprintf(out, ": %zu route%s", n, n == 1 ? "" : "s");
    break;
  }
  case MESH_KIND_TRAFFIC_SPLIT: {
    const mesh_split *s = mesh_manifest_split(m, i);
    fprintf(out, ": %s \u2192", mesh_split_service(s));
    for (size_t b = 0; b < mesh_split_count(s); b++) {
      char pct[16];
      percent(pct, sizeof pct, mesh_split_weight(s, b));
      fprintf(out, "%s %s %s", b ? "," : "", mesh_split_backend(s, b), pct);
    }
    break;
  }
  case MESH_KIND_OTHER: fprintf(out, ": not a mesh resource, ignored"); break;
  default: break;
  }
  fprintf(out, "\n");
}

static void print_text(const results *rs) {
  for (size_t i = 0; i < rs->n; i++) {
    const result *r = &rs->items[i];
    if (r->note) fprintf(stderr, "%s: error: %s\n", r->file, r->note);
    meshctl_print_diags(stderr, r->diags);
    if (!r->m) continue;
    size_t n = mesh_manifest_count(r->m);
    if (n == 0) printf("%s: no documents\n", r->file);
    for (size_t d = 0; d < n; d++) {
      printf("%s: ", r->file);
      describe(stdout, r->m, d);
    }
  }
}

static json_t *jstr_or_null(const char *s) { return s ? json_string(s) : json_null(); }

static json_t *json_diag(const char *sev, const char *file, uint32_t line, uint32_t col,
                         const char *msg) {
  return json_pack("{s:s, s:s, s:I, s:I, s:s}", "severity", sev, "file", file, "line",
                   (json_int_t)line, "column", (json_int_t)col, "message", msg);
}

static json_t *json_file(const result *r) {
  json_t *docs = json_array(), *diags = json_array();
  size_t n = r->m ? mesh_manifest_count(r->m) : 0;
  for (size_t d = 0; d < n; d++)
    json_array_append_new(
        docs, json_pack("{s:o, s:o, s:o, s:o, s:I}", "kind", jstr_or_null(mesh_manifest_kind_name(r->m, d)),
                        "apiVersion", jstr_or_null(mesh_manifest_api_version(r->m, d)), "name",
                        jstr_or_null(mesh_manifest_name(r->m, d)), "namespace",
                        jstr_or_null(mesh_manifest_namespace(r->m, d)), "line",
                        (json_int_t)mesh_manifest_line(r->m, d)));
  if (r->note) json_array_append_new(diags, json_diag("error", r->file, 0, 0, r->note));
  for (size_t i = 0; i < mesh_diags_count(r->diags); i++)
    json_array_append_new(
        diags, json_diag(mesh_diags_severity(r->diags, i) == MESH_DIAG_ERROR ? "error" : "warning",
                         mesh_diags_file(r->diags, i), mesh_diags_line(r->diags, i),
                         mesh_diags_column(r->diags, i), mesh_diags_message(r->diags, i)));
  return json_pack("{s:s, s:b, s:o, s:o}", "file", r->file, "valid", r->m != NULL, "documents",
                   docs, "diagnostics", diags);
}

static bool print_json(const results *rs, bool valid) {
  json_t *files = json_array();
  for (size_t i = 0; i < rs->n; i++) json_array_append_new(files, json_file(&rs->items[i]));
  json_t *root = json_pack("{s:o, s:b}", "files", files, "valid", valid);
  bool ok = root && json_dumpf(root, stdout, JSON_INDENT(2)) == 0;
  if (ok) printf("\n");
  json_decref(root);
  return ok;
}

static int run(int argc, char **argv) {
  static const struct option opts[] = {
      {"filename", required_argument, NULL, 'f'},
      {"output", required_argument, NULL, 'o'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *prog = argv[0];
  results rs = {0};
  bool json = false, ok = true;
  int c, status = MESHCTL_OK;
  optind = 0;
  while (status == MESHCTL_OK && (c = getopt_long(argc, argv, "f:o:h", opts, NULL)) != -1) {
    switch (c) {
    case 'f':
      if (!expand(prog, &rs, optarg)) status = MESHCTL_FAILED;
      break;
    case 'o':
      if (!meshctl_parse_output(prog, optarg, &json)) status = meshctl_usage_error(prog);
      break;
    case 'h':
      usage(stdout);
      status = -1;
      break;
    default: status = meshctl_usage_error(prog); break;
    }
  }
  if (status == MESHCTL_OK && optind < argc) {
    fprintf(stderr, "%s: unexpected argument '%s' (files are given with -f)\n", prog, argv[optind]);
    status = meshctl_usage_error(prog);
  } else if (status == MESHCTL_OK && rs.n == 0) {
    fprintf(stderr, "%s: no input: give at least one -f FILE\n", prog);
    status = meshctl_usage_error(prog);
  }

  mesh_ctx *ctx = status == MESHCTL_OK ? meshctl_ctx(prog) : NULL;
  if (status == MESHCTL_OK && !ctx) status = MESHCTL_FAILED;
  for (size_t i = 0; status == MESHCTL_OK && i < rs.n; i++) {
    result *r = &rs.items[i];
    if (r->note) {
      ok = false;
      continue;
    }
    r->rc = mesh_diags_new(ctx, &r->diags);
    if (r->rc == 0) r->rc = mesh_manifest_load_file(ctx, r->path, r->diags, &r->m);
    if (r->rc == MESH_ERR_NOMEM || r->rc == MESH_ERR_INVALID) {
      fprintf(stderr, "%s: %s: %s\n", prog, r->file, mesh_strerror(r->rc));
      status = MESHCTL_FAILED;
    }
    if (r->rc < 0) ok = false;
  }
  if (status == MESHCTL_OK) {
    if (json) {
      if (!print_json(&rs, ok)) {
        fprintf(stderr, "%s: cannot write the JSON report\n", prog);
        status = MESHCTL_FAILED;
      }
    } else {
      print_text(&rs);
    }
    if (!ok) status = MESHCTL_FAILED;
  }
  for (size_t i = 0; i < rs.n; i++) {
    mesh_manifest_free(rs.items[i].m);
    mesh_diags_free(rs.items[i].diags);
    free(rs.items[i].path);
    free(rs.items[i].file);
  }
  free(rs.items);
  mesh_ctx_free(ctx);
  return status < 0 ? MESHCTL_OK : status;
}

const meshctl_command meshctl_cmd_validate = {
    .name = "validate",
    .summary = "check manifests for errors, with file:line:column",
    .run = run,
    .usage = usage,
};

/* meshctl apply and delete: manifests into the store mesh-destination reads (a directory, or keys in etcd), checked first, all or nothing. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "daemon_etcd.h"
#include "daemon_flag.h"
#include "meshctl.h"

#define DEFAULT_TIMEOUT_MS 5000
#define TXN_MAX_OPS 128 /* etcd's default --max-txn-ops */

/* One manifest file of the target (a file of the directory, a key), or one to write. */
typedef struct {
  char *name;   /* the file's name in the directory, or the whole key */
  char *source; /* how diagnostics name it: the input path, else name */
  char *buf;
  size_t len;
  bool is_new;  /* from the command line */
  bool registration; /* an etcd registration: checked with the rest, never written */
} entry;

typedef struct {
  entry *items;
  size_t n, cap;
} entries;

/* Where the manifests go: exactly one of dir and etcd (its endpoints). */
typedef struct {
  const char *prog, *dir, *prefix;
  meshctl_etcd etcd;
  long long rev; /* etcd: the revision the entries were read at */
} target;

static void entries_free(entries *es) {
  for (size_t i = 0; i < es->n; i++) {
    free(es->items[i].name);
    free(es->items[i].source);
    free(es->items[i].buf);
  }
  free(es->items);
  es->items = NULL;
  es->n = es->cap = 0;
}

/* Takes name, source and buf. NULL when out of memory (all freed). */
static entry *entries_add(entries *es, char *name, char *source, char *buf, size_t len) {
  if (name && source && es->n == es->cap) {
    size_t cap = es->cap ? es->cap * 2 : 16;
    entry *it = realloc(es->items, cap * sizeof *it);
    if (it) {
      es->items = it;
      es->cap = cap;
    }
  }
  if (!name || !source || es->n == es->cap) {
    free(name);
    free(source);
    free(buf);
    return NULL;
  }
  entry *e = &es->items[es->n++];
  *e = (entry){name, source, buf, len, false, false};
  return e;
}

static entry *entries_find(entries *es, const char *name) {
  for (size_t i = 0; i < es->n; i++)
    if (!strcmp(es->items[i].name, name)) return &es->items[i];
  return NULL;
}

/* ---- etcd ------------------------------------------------------------------------ */

static bool add_kv(void *ud, int kind, const char *key, const char *source, char *val, size_t len) {
  entry *e = entries_add(ud, strdup(key), strdup(source), val, len);
  if (e) e->registration = kind == ETCD_KEY_REGISTRATION;
  return e != NULL;
}

/* Every manifest and registration under the prefix, at one revision. */
static bool etcd_read(target *t, entries *es) { return meshctl_etcd_read(&t->etcd, &t->rev, add_kv, es); }

/* A compare: no key in [from, to) was written after revision rev. */
static json_t *unchanged_since(const char *from, const char *to, long long rev) {
  char *k = etcd_b64_encode(from, strlen(from)), *e = etcd_b64_encode(to, strlen(to));
  json_t *c = k && e ? json_pack("{s:s,s:s,s:s,s:s,s:I}", "key", k, "range_end", e, "target", "MOD",
                                 "result", "LESS", "mod_revision", (json_int_t)(rev + 1))
                     : NULL;
  free(k);
  free(e);
  return c;
}

/* Puts (put) or deletes the entries' keys, at most TXN_MAX_OPS a
 * transaction, each only if no manifest key under the prefix changed since
 * the read. Registrations come and go with proxies: they are left out of
 * the check (the keys between <prefix>registrations/ and its range end). */
static bool etcd_write(target *t, entries *es, bool put) {
  size_t rl = strlen(t->prefix) + strlen(ETCD_REGISTRATIONS) + 1;
  char *regs = malloc(rl), *regs_end = NULL, *end = etcd_range_end(t->prefix);
  if (regs) snprintf(regs, rl, "%s" ETCD_REGISTRATIONS, t->prefix);
  if (regs) regs_end = etcd_range_end(regs);
  bool ok = regs && regs_end && end;
  size_t done = 0;
  while (ok && done < es->n) {
    json_t *ops = json_array();
    size_t i = done;
    for (; ok && i < es->n && json_array_size(ops) < TXN_MAX_OPS; i++) {
      if (!es->items[i].is_new) continue; /* what stays as it is */
      char *kb = etcd_b64_encode(es->items[i].name, strlen(es->items[i].name));
      char *vb = put ? etcd_b64_encode(es->items[i].buf, es->items[i].len) : NULL;
      json_t *op = !kb || (put && !vb) ? NULL
                   : put ? json_pack("{s:{s:s,s:s}}", "request_put", "key", kb, "value", vb)
                         : json_pack("{s:{s:s}}", "request_delete_range", "key", kb);
      if (!op || json_array_append_new(ops, op) < 0) ok = false;
      free(kb);
      free(vb);
    }
    done = i;
    if (!ok || json_array_size(ops) == 0) {
      json_decref(ops);
      break;
    }
    /* No manifest was written after the read that was checked. */
    json_t *cmp = json_pack("[o,o]", unchanged_since(t->prefix, regs, t->rev),
                            unchanged_since(regs_end, end, t->rev));
    json_t *res = meshctl_etcd_call(&t->etcd, "/v3/kv/txn",
                                    json_pack("{s:o,s:o}", "compare", cmp, "success", ops));
    if (!res) {
      ok = false;
      break;
    }
    if (!json_is_true(json_object_get(res, "succeeded"))) {
      fprintf(stderr, "%s: etcd: the keys under %s changed since they were read: nothing more "
                      "written; run the command again\n", t->prog, t->prefix);
      ok = false;
    }
    t->rev = etcd_i64(json_object_get(json_object_get(res, "header"), "revision"));
    json_decref(res);
  }
  free(regs);
  free(regs_end);
  free(end);
  return ok;
}

/* ---- The directory ---------------------------------------------------------------- */

static bool dir_read(target *t, entries *es) {
  DIR *d = opendir(t->dir);
  if (!d) {
    fprintf(stderr, "%s: --store-dir %s: %s\n", t->prog, t->dir, strerror(errno));
    return false;
  }
  bool ok = true;
  struct dirent *de;
  while (ok && (de = readdir(d))) {
    if (!mesh_manifest_file_name(de->d_name)) continue;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", t->dir, de->d_name);
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
    char *buf = NULL;
    size_t len = 0;
    if (!meshctl_read(t->prog, path, MESH_MANIFEST_MAX_BYTES, &buf, &len)) ok = false;
    else if (!entries_add(es, strdup(de->d_name), strdup(path), buf, len)) ok = false;
  }
  closedir(d);
  return ok;
}

/* The file written whole under a temporary name, then renamed: the
 * store's watch never sees half a file. */
static bool dir_put(target *t, const entry *e) {
  char tmp[4096], path[4096];
  snprintf(path, sizeof path, "%s/%s", t->dir, e->name);
  snprintf(tmp, sizeof tmp, "%s/.%s.%ld.tmp", t->dir, e->name, (long)getpid());
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  bool ok = fd >= 0;
  for (size_t off = 0; ok && off < e->len;) {
    ssize_t w = write(fd, e->buf + off, e->len - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) ok = false;
    else off += (size_t)w;
  }
  if (ok && fsync(fd) < 0) ok = false;
  if (fd >= 0 && close(fd) < 0) ok = false;
  if (ok && rename(tmp, path) < 0) ok = false;
  if (!ok) {
    fprintf(stderr, "%s: %s: %s\n", t->prog, path, strerror(errno));
    if (fd >= 0) unlink(tmp);
  }
  return ok;
}

/* ---- Shared ------------------------------------------------------------------------ */

static bool read_target(target *t, entries *es) { return t->dir ? dir_read(t, es) : etcd_read(t, es); }

/* The inputs of -f: files, and the manifests of directories, in name order. */
static bool expand(const char *prog, const char *arg, entries *in) {
  struct stat st;
  if (!strcmp(arg, "-")) {
    fprintf(stderr, "%s: -f -: standard input has no file name to store it under\n", prog);
    return false;
  }
  if (stat(arg, &st) != 0) {
    fprintf(stderr, "%s: %s: %s\n", prog, arg, strerror(errno));
    return false;
  }
  if (!S_ISDIR(st.st_mode)) return entries_add(in, strdup(arg), strdup(arg), NULL, 0) != NULL;
  struct dirent **names = NULL;
  int n = scandir(arg, &names, NULL, alphasort);
  if (n < 0) {
    fprintf(stderr, "%s: %s: %s\n", prog, arg, strerror(errno));
    return false;
  }
  bool ok = true;
  size_t found = 0;
  for (int i = 0; i < n; i++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", arg, names[i]->d_name);
    if (ok && mesh_manifest_file_name(names[i]->d_name) && stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
      found++;
      if (!entries_add(in, strdup(path), strdup(path), NULL, 0)) ok = false;
    }
    free(names[i]);
  }
  free(names);
  if (ok && !found) {
    fprintf(stderr, "%s: %s: error: no manifests (*.yaml, *.yml, *.json) in this directory\n", prog, arg);
    ok = false;
  }
  return ok;
}

/* Where input path goes: its file name in the directory, or the key
 * <prefix>manifests/<namespace of its first document>/<file name>. */
static char *target_name(const target *t, const char *path, const mesh_manifest *m) {
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  if (t->dir) return strdup(base);
  const char *ns = m && mesh_manifest_count(m) ? mesh_manifest_namespace(m, 0) : NULL;
  size_t n = strlen(t->prefix) + strlen("manifests/") + strlen(ns ? ns : "default") + strlen(base) + 2;
  char *k = malloc(n);
  if (k) snprintf(k, n, "%smanifests/%s/%s", t->prefix, ns ? ns : "default", base);
  return k;
}

/* Reads and checks each input as `meshctl validate` does; fills in its
 * bytes and its target name. false when any is invalid (diagnostics printed). */
static bool load_inputs(mesh_ctx *ctx, const target *t, entries *in) {
  bool ok = true;
  for (size_t i = 0; i < in->n; i++) {
    entry *e = &in->items[i];
    e->is_new = true;
    if (!meshctl_read(t->prog, e->source, MESH_MANIFEST_MAX_BYTES, &e->buf, &e->len)) {
      ok = false;
      continue;
    }
    mesh_diags *d = NULL;
    mesh_manifest *m = NULL;
    int rc = mesh_diags_new(ctx, &d);
    if (rc == 0) rc = mesh_manifest_load_buffer(ctx, e->source, e->buf, e->len, d, &m);
    meshctl_print_diags(stderr, d);
    if (rc < 0) {
      if (rc != MESH_ERR_PARSE && rc != MESH_ERR_LIMIT)
        fprintf(stderr, "%s: %s: %s\n", t->prog, e->source, mesh_strerror(rc));
      ok = false;
    } else {
      char *name = target_name(t, e->source, m);
      if (!name) ok = false;
      free(e->name);
      e->name = name;
    }
    mesh_manifest_free(m);
    mesh_diags_free(d);
  }
  for (size_t i = 0; ok && i < in->n; i++)
    for (size_t j = i + 1; j < in->n; j++)
      if (!strcmp(in->items[i].name, in->items[j].name)) {
        fprintf(stderr, "%s: %s and %s would both be stored as %s\n", t->prog,
                in->items[i].source, in->items[j].source, in->items[i].name);
        ok = false;
      }
  return ok;
}

/* The whole set after the change, checked as mesh-destination will load it
 * (the same kind, namespace and name twice is an error naming both). */
static bool check_set(mesh_ctx *ctx, const target *t, const entries *set) {
  mesh_snapshot_builder *b = NULL;
  mesh_diags *d = NULL;
  mesh_snapshot *snap = NULL;
  int rc = mesh_diags_new(ctx, &d), bad = 0;
  if (rc == 0) rc = mesh_snapshot_builder_new(ctx, NULL, &b);
  for (size_t i = 0; rc == 0 && i < set->n; i++) {
    int r = mesh_snapshot_builder_add(b, set->items[i].source, set->items[i].buf, set->items[i].len, d);
    if (r == MESH_ERR_NOMEM || r == MESH_ERR_INVALID) rc = r;
    else if (r < 0) bad = r;
  }
  if (rc == 0 && !bad) {
    rc = mesh_snapshot_builder_finish(b, d, &snap);
    b = NULL;
  }
  mesh_snapshot_builder_free(b);
  mesh_snapshot_unref(snap);
  meshctl_print_diags(stderr, d);
  mesh_diags_free(d);
  if (rc == 0 && bad) rc = bad;
  if (rc < 0)
    fprintf(stderr, "%s: refused: with this change, %s would not load (%s): nothing changed\n",
            t->prog, t->dir ? t->dir : t->prefix, mesh_strerror(rc));
  return rc == 0;
}

static void common_usage(FILE *out) {
  fprintf(out,
          "  --store-dir DIR          the directory mesh-destination --store-dir reads; files\n"
          "                           are written whole (a temporary file, then a rename)\n"
          "  --etcd-endpoints LIST    or etcd, through its JSON gateway (http://HOST:PORT,...;\n"
          "                           the first member that answers is used)\n"
          "  --etcd-prefix P          the key prefix (default /libmesh/); a file goes to\n"
          "                           P" "manifests/<namespace of its first document>/<file name>\n"
          "  --timeout-ms MS          for each request to etcd (default 5000)\n"
          "  -h, --help               show this help\n\n");
}

static void apply_usage(FILE *out) {
  fprintf(out,
          "Store manifests where mesh-destination reads them, after checking them.\n\n"
          "Usage:\n  meshctl apply -f FILE|DIR [-f ...] (--store-dir DIR | --etcd-endpoints LIST)\n\n"
          "Flags:\n"
          "  -f, --filename FILE|DIR  a YAML or JSON manifest file, or a directory's *.yaml,\n"
          "                           *.yml and *.json files\n");
  common_usage(out);
  fprintf(out,
          "Each file is checked as `meshctl validate` does, then the whole store as it would\n"
          "be after the change, as mesh-destination loads it. Any error (file:line:col on\n"
          "stderr) refuses the whole command and changes nothing. With etcd, the files go in\n"
          "one transaction (of up to 128), which fails if a key under the prefix was written\n"
          "after it was read.\n\n"
          "Exit status: 0 when stored, 1 when refused or failed, 2 for a usage error.\n");
}

static void delete_usage(FILE *out) {
  fprintf(out,
          "Remove manifests from where mesh-destination reads them.\n\n"
          "Usage:\n  meshctl delete -f FILE|DIR [-f ...] (--store-dir DIR | --etcd-endpoints LIST)\n"
          "  meshctl delete KIND NAME [-n NAMESPACE] (--store-dir DIR | --etcd-endpoints LIST)\n\n"
          "Flags:\n"
          "  -f, --filename FILE|DIR  remove what `meshctl apply -f` stored for these files\n"
          "  -n, --namespace NS       KIND NAME's namespace (default: default)\n");
  common_usage(out);
  fprintf(out,
          "KIND NAME removes the file or key holding that document (KIND as written, in\n"
          "any case: Service, Workload, TrafficSplit...); one that holds other documents\n"
          "too is refused, to be edited instead. Anything not found refuses the whole\n"
          "command and changes nothing.\n\n"
          "Exit status: 0 when removed, 1 when refused or failed, 2 for a usage error.\n");
}

static int run_cmd(int argc, char **argv, bool del) {
  static const struct option opts[] = {
      {"filename", required_argument, NULL, 'f'},
      {"namespace", required_argument, NULL, 'n'},
      {"store-dir", required_argument, NULL, 'D'},
      {"etcd-endpoints", required_argument, NULL, 'E'},
      {"etcd-prefix", required_argument, NULL, 'P'},
      {"timeout-ms", required_argument, NULL, 'T'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  target t = {.prog = argv[0],
              .prefix = MESHCTL_ETCD_DEFAULT_PREFIX,
              .etcd = {.prog = argv[0], .timeout_ms = DEFAULT_TIMEOUT_MS}};
  const char *endpoints = NULL, *ns = NULL;
  entries in = {0}, set = {0};
  int c, status = MESHCTL_OK;
  optind = 0;
  while (status == MESHCTL_OK && (c = getopt_long(argc, argv, del ? "f:n:h" : "f:h", opts, NULL)) != -1) {
    switch (c) {
    case 'f':
      if (!expand(t.prog, optarg, &in)) status = MESHCTL_FAILED;
      break;
    case 'n': ns = optarg; break;
    case 'D': t.dir = optarg; break;
    case 'E': endpoints = optarg; break;
    case 'P': t.prefix = optarg; break;
    case 'T': {
      long v = 0;
      if (daemon_flag_long(t.prog, "timeout-ms", optarg, 1, 600000, &v)) t.etcd.timeout_ms = (int)v;
      else status = meshctl_usage_error(t.prog);
      break;
    }
    case 'h':
      (del ? delete_usage : apply_usage)(stdout);
      entries_free(&in);
      return MESHCTL_OK;
    default: status = meshctl_usage_error(t.prog); break;
    }
  }
  int rest = argc - optind;
  t.etcd.prefix = t.prefix;
  if (status == MESHCTL_OK) {
    const char *why = NULL;
    if (!t.dir == !endpoints) why = "give either --store-dir DIR or --etcd-endpoints LIST";
    else if (!*t.prefix) why = "--etcd-prefix is empty";
    else if (!del && rest) why = "unexpected argument (files are given with -f)";
    else if (!del && !in.n) why = "no input: give at least one -f FILE";
    else if (del && in.n && rest) why = "give -f FILE or KIND NAME, not both";
    else if (del && !in.n && rest != 2) why = "give -f FILE, or KIND NAME";
    else if (del && ns && in.n) why = "-n goes with KIND NAME";
    if (why) {
      fprintf(stderr, "%s: %s\n", t.prog, why);
      status = meshctl_usage_error(t.prog);
    } else if (endpoints && !meshctl_etcd_endpoints(&t.etcd, endpoints)) {
      status = meshctl_usage_error(t.prog);
    }
  }
  mesh_ctx *ctx = status == MESHCTL_OK ? meshctl_ctx(t.prog) : NULL;
  if (status == MESHCTL_OK && !ctx) status = MESHCTL_FAILED;
  if (status == MESHCTL_OK && in.n && !load_inputs(ctx, &t, &in)) status = MESHCTL_FAILED;
  if (status == MESHCTL_OK && !read_target(&t, &set)) status = MESHCTL_FAILED;

  if (status == MESHCTL_OK && !del) {
    /* The set as it will be: inputs replace the entries of their names. */
    for (size_t i = 0; status == MESHCTL_OK && i < in.n; i++) {
      entry *ie = &in.items[i], *cur = entries_find(&set, ie->name);
      if (cur && cur->len == ie->len && !memcmp(cur->buf, ie->buf, ie->len)) {
        printf("%s: %s unchanged\n", ie->source, ie->name);
        continue;
      }
      if (!cur && !(cur = entries_add(&set, strdup(ie->name), strdup(ie->source), NULL, 0))) {
        status = MESHCTL_FAILED;
        break;
      }
      free(cur->buf);
      free(cur->source);
      cur->source = strdup(ie->source); /* diagnostics name the user's file */
      cur->buf = ie->buf;
      cur->len = ie->len;
      cur->is_new = true;
      ie->buf = NULL;
      if (!cur->source) status = MESHCTL_FAILED;
    }
    if (status == MESHCTL_OK && !check_set(ctx, &t, &set)) status = MESHCTL_FAILED;
    bool ok = true;
    if (status == MESHCTL_OK && t.dir) {
      for (size_t i = 0; ok && i < set.n; i++)
        if (set.items[i].is_new) ok = dir_put(&t, &set.items[i]);
    } else if (status == MESHCTL_OK) {
      ok = etcd_write(&t, &set, true);
    }
    if (!ok) status = MESHCTL_FAILED;
    for (size_t i = 0; status == MESHCTL_OK && i < set.n; i++)
      if (set.items[i].is_new) printf("%s: stored as %s\n", set.items[i].source, set.items[i].name);
  } else if (status == MESHCTL_OK) {
    /* is_new marks what goes. */
    for (size_t i = 0; i < in.n; i++) {
      entry *cur = entries_find(&set, in.items[i].name);
      if (cur) cur->is_new = true;
      else {
        fprintf(stderr, "%s: %s: no %s %s\n", t.prog, in.items[i].source, t.dir ? "file" : "key",
                in.items[i].name);
        status = MESHCTL_FAILED;
      }
    }
    if (!in.n) {
      const char *kind = argv[optind], *name = argv[optind + 1];
      size_t hits = 0;
      for (size_t i = 0; status == MESHCTL_OK && i < set.n; i++) {
        mesh_manifest *m = NULL;
        if (mesh_manifest_load_buffer(ctx, set.items[i].source, set.items[i].buf, set.items[i].len,
                                      NULL, &m) < 0)
          continue; /* a bad file holds no document mesh-destination serves */
        size_t n = mesh_manifest_count(m), found = 0;
        for (size_t d = 0; d < n; d++) {
          const char *k = mesh_manifest_kind_name(m, d), *nm = mesh_manifest_name(m, d),
                     *dns = mesh_manifest_namespace(m, d);
          if (k && nm && !strcasecmp(k, kind) && !strcmp(nm, name) &&
              !strcmp(dns ? dns : "default", ns ? ns : "default"))
            found++;
        }
        mesh_manifest_free(m);
        if (!found) continue;
        hits++;
        if (set.items[i].registration) { /* its proxy would only register it again */
          fprintf(stderr, "%s: %s %s/%s is a %s: it goes when its proxy deregisters or its "
                          "lease lapses\n", t.prog, kind, ns ? ns : "default", name,
                  set.items[i].source);
          status = MESHCTL_FAILED;
          continue;
        }
        if (n > found) {
          fprintf(stderr, "%s: %s %s/%s is in %s with %zu other documents: edit it and apply "
                          "it instead\n", t.prog, kind, ns ? ns : "default", name, set.items[i].source,
                  n - found);
          status = MESHCTL_FAILED;
        } else {
          set.items[i].is_new = true;
        }
      }
      if (status == MESHCTL_OK && !hits) {
        fprintf(stderr, "%s: no %s %s in namespace %s\n", t.prog, kind, name, ns ? ns : "default");
        status = MESHCTL_FAILED;
      }
    }
    bool ok = true;
    if (status == MESHCTL_OK && t.dir) {
      for (size_t i = 0; ok && i < set.n; i++) {
        if (!set.items[i].is_new) continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", t.dir, set.items[i].name);
        if (unlink(path) < 0 && errno != ENOENT) {
          fprintf(stderr, "%s: %s: %s\n", t.prog, path, strerror(errno));
          ok = false;
        }
      }
    } else if (status == MESHCTL_OK) {
      ok = etcd_write(&t, &set, false);
    }
    if (!ok) status = MESHCTL_FAILED;
    for (size_t i = 0; status == MESHCTL_OK && i < set.n; i++)
      if (set.items[i].is_new) printf("%s deleted\n", set.items[i].name);
  }
  entries_free(&in);
  entries_free(&set);
  mesh_ctx_free(ctx);
  return status;
}

static int run_apply(int argc, char **argv) { return run_cmd(argc, argv, false); }
static int run_delete(int argc, char **argv) { return run_cmd(argc, argv, true); }

const meshctl_command meshctl_cmd_apply = {
    .name = "apply",
    .summary = "store manifests for mesh-destination (a directory or etcd), checked first",
    .run = run_apply,
    .usage = apply_usage,
};

const meshctl_command meshctl_cmd_delete = {
    .name = "delete",
    .summary = "remove manifests from mesh-destination's directory or etcd",
    .run = run_delete,
    .usage = delete_usage,
};

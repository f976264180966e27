/* libmesh proxy profiles: the ServiceProfiles and TrafficSplits meshd routes by, read from a directory of manifests and swapped whole. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <mesh/error.h>

#include "ctx_internal.h"
#include "diag_internal.h"
#include "manifest_internal.h"
#include "proxy_conn_internal.h"
#include "proxy_profiles_internal.h"

#define PROFILE_FILES_MAX 1000u

static uint64_t now_ms(void) { return mesh__proxy_now_ns() / 1000000u; }

void mesh__proxy_profiles_unref(proxy_profiles *t) {
  if (!t || --t->refs > 0) return;
  for (size_t i = 0; i < t->n; i++) {
    proxy_dst *d = &t->d[i];
    mesh_profile_unref(d->prof);
    mesh_split_unref(d->split);
    mesh_budget_free(d->budget);
    for (size_t r = 0; r < d->nroutes; r++) mesh_budget_free(d->route_budgets[r]);
    mesh__free(t->ctx, d->route_budgets);
  }
  mesh__free(t->ctx, t->d);
  mesh__free(t->ctx, t);
}

static int cmp_dst(const void *a, const void *b) {
  return strcmp(((const proxy_dst *)a)->name, ((const proxy_dst *)b)->name);
}

const proxy_dst *mesh__proxy_profiles_find(const proxy_profiles *t, const char *host, size_t len) {
  if (!t || !t->n || len >= sizeof t->d[0].name) return NULL;
  proxy_dst key;
  memcpy(key.name, host, len);
  key.name[len] = 0;
  return bsearch(&key, t->d, t->n, sizeof *t->d, cmp_dst);
}

mesh_budget *mesh__proxy_dst_budget(const proxy_dst *d, const mesh_route *r) {
  if (r && mesh_route_index(r) < d->nroutes && d->route_budgets[mesh_route_index(r)])
    return d->route_budgets[mesh_route_index(r)];
  return d->budget;
}

/* The entry for name (FQDN), added when absent. */
static proxy_dst *dst_get(mesh_ctx *ctx, proxy_profiles *t, size_t *cap, const char *name) {
  for (size_t i = 0; i < t->n; i++)
    if (strcmp(t->d[i].name, name) == 0) return &t->d[i];
  if (strlen(name) >= sizeof t->d[0].name) return NULL;
  if (t->n == *cap) {
    size_t nc = *cap ? *cap * 2 : 16;
    proxy_dst *d = mesh__calloc(ctx, nc, sizeof *d);
    if (!d) return NULL;
    if (t->n) memcpy(d, t->d, t->n * sizeof *d);
    mesh__free(ctx, t->d);
    t->d = d;
    *cap = nc;
  }
  proxy_dst *d = &t->d[t->n++];
  memset(d, 0, sizeof *d);
  snprintf(d->name, sizeof d->name, "%s", name);
  for (char *c = d->name; *c; c++) *c = (char)(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c);
  return d;
}

static int budget_new(mesh_ctx *ctx, double ratio, uint32_t min, uint64_t ttl, mesh_budget **ret) {
  /* The budget's own bounds; a profile outside them was already refused. */
  if (ttl < 1000) ttl = 1000;
  if (ttl > 60000) ttl = 60000;
  return mesh_budget_new(ctx, ratio, min, ttl, now_ms(), ret);
}

/* Budgets: one per destination, and one for each route that has its own. */
static int dst_finish(mesh_ctx *ctx, proxy_dst *d) {
  double ratio = MESH_BUDGET_DEFAULT_RATIO;
  uint32_t min = MESH_BUDGET_DEFAULT_MIN_PER_SEC;
  uint64_t ttl = MESH_BUDGET_DEFAULT_TTL_MS;
  if (d->prof) mesh_profile_retry_budget(d->prof, &ratio, &min, &ttl);
  int rc = budget_new(ctx, ratio, min, ttl, &d->budget);
  if (rc || !d->prof) return rc;
  size_t n = mesh_profile_route_count(d->prof);
  if (!n) return 0;
  d->route_budgets = mesh__calloc(ctx, n, sizeof *d->route_budgets);
  if (!d->route_budgets) return MESH_ERR_NOMEM; /* nroutes stays 0: unref reads no budget */
  d->nroutes = n;
  for (size_t i = 0; i < d->nroutes; i++) {
    const mesh_route *r = mesh_profile_route(d->prof, i);
    if (mesh_route_retry_budget(r, &ratio, &min, &ttl) == 1 &&
        (rc = budget_new(ctx, ratio, min, ttl, &d->route_budgets[i])))
      return rc;
  }
  return 0;
}

/* A table of one destination named name, which fill completes before its
 * budgets are made (dst_finish). */
static int one_dst(mesh_ctx *ctx, const char *name, void (*fill)(proxy_dst *d, const void *arg),
                   const void *arg, proxy_profiles **ret) {
  proxy_profiles *t = mesh__calloc(ctx, 1, sizeof *t);
  if (!t) return MESH_ERR_NOMEM;
  t->ctx = ctx;
  t->refs = 1;
  int rc = MESH_ERR_NOMEM;
  if ((t->d = mesh__calloc(ctx, 1, sizeof *t->d))) {
    t->n = 1;
    snprintf(t->d->name, sizeof t->d->name, "%s", name);
    fill(t->d, arg);
    rc = dst_finish(ctx, t->d);
  }
  if (rc) {
    mesh__proxy_profiles_unref(t);
    return rc;
  }
  *ret = t;
  return 0;
}

static void fill_profile(proxy_dst *d, const void *prof) { d->prof = mesh_profile_ref(prof); }

int mesh__proxy_profiles_one(mesh_ctx *ctx, const mesh_profile *prof, proxy_profiles **ret) {
  return one_dst(ctx, mesh_profile_name(prof), fill_profile, prof, ret);
}

/* Annotation retries are bounded by their limit, not a budget; the budget
 * exists anyway so that every destination has one. */
static void fill_ann(proxy_dst *d, const void *ann) {
  d->ann = *(const mesh__ann *)ann;
  d->has_ann = 1;
}

int mesh__proxy_profiles_ann(mesh_ctx *ctx, const char *name, const mesh__ann *ann,
                             proxy_profiles **ret) {
  return one_dst(ctx, name, fill_ann, ann, ret);
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

int mesh__proxy_dir_files(mesh_ctx *ctx, const char *dir, char ***ret, size_t *n,
                          const char **why) {
  DIR *dh = opendir(dir);
  if (!dh) {
    *why = strerror(errno);
    return MESH_ERR_IO;
  }
  char **v = mesh__calloc(ctx, PROFILE_FILES_MAX, sizeof *v);
  size_t k = 0;
  int rc = v ? 0 : MESH_ERR_NOMEM;
  struct dirent *e;
  while (!rc && (e = readdir(dh))) {
    if (!mesh_manifest_file_name(e->d_name)) continue;
    if (k == PROFILE_FILES_MAX) {
      *why = "more than 1000 manifest files";
      rc = MESH_ERR_LIMIT;
      break;
    }
    size_t len = strlen(dir) + strlen(e->d_name) + 2;
    if (!(v[k] = mesh__malloc(ctx, len))) rc = MESH_ERR_NOMEM;
    else snprintf(v[k++], len, "%s/%s", dir, e->d_name);
  }
  closedir(dh);
  if (rc) {
    for (size_t i = 0; i < k; i++) mesh__free(ctx, v[i]);
    mesh__free(ctx, v);
    return rc;
  }
  qsort(v, k, sizeof *v, cmp_str);
  *ret = v;
  *n = k;
  return 0;
}

void mesh__proxy_dir_files_free(mesh_ctx *ctx, char **files, size_t n) {
  for (size_t i = 0; i < n; i++) mesh__free(ctx, files[i]);
  mesh__free(ctx, files);
}

uint64_t mesh__proxy_dir_stamp(const char *dir) {
  /* Names, sizes and mtimes folded together: any edit, addition or
   * removal changes it. */
  DIR *dh = opendir(dir);
  if (!dh) return 0;
  uint64_t h = 1469598103934665603u;
  struct dirent *e;
  char path[4096];
  while ((e = readdir(dh))) {
    if (!mesh_manifest_file_name(e->d_name)) continue;
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    struct stat st;
    if (stat(path, &st) != 0) continue;
    uint64_t x = (uint64_t)st.st_mtim.tv_sec * 1000000007u ^ (uint64_t)st.st_mtim.tv_nsec ^
                 (uint64_t)st.st_size << 20 ^ (uint64_t)st.st_ino;
    for (const char *c = e->d_name; *c; c++) x = (x ^ (uint8_t)*c) * 1099511628211u;
    h += x * 0x9e3779b97f4a7c15u; /* order-independent */
  }
  closedir(dh);
  return h;
}

int mesh__proxy_profiles_load(mesh_ctx *ctx, const char *dir, mesh_diags *diags,
                              proxy_profiles **ret, const char **why) {
  char **files = NULL;
  size_t nfiles = 0, cap = 0;
  *why = NULL;
  int rc = mesh__proxy_dir_files(ctx, dir, &files, &nfiles, why);
  if (rc) return rc;
  proxy_profiles *t = mesh__calloc(ctx, 1, sizeof *t);
  if (!t) rc = MESH_ERR_NOMEM;
  else {
    t->ctx = ctx;
    t->refs = 1;
  }
  for (size_t f = 0; !rc && f < nfiles; f++) {
    mesh_manifest *m = NULL;
    rc = mesh_manifest_load_file(ctx, files[f], diags, &m);
    for (size_t i = 0; !rc && i < mesh_manifest_count(m); i++) {
      const mesh_profile *pr = mesh_manifest_profile(m, i);
      const mesh_split *sp = mesh_manifest_split(m, i);
      char name[300];
      if (pr) snprintf(name, sizeof name, "%s", mesh_profile_name(pr));
      else if (sp)
        snprintf(name, sizeof name, "%s.%s.svc.cluster.local", mesh_split_service(sp),
                 mesh_split_namespace(sp));
      else continue;
      proxy_dst *d = dst_get(ctx, t, &cap, name);
      if (!d) {
        rc = MESH_ERR_NOMEM;
        break;
      }
      if ((pr && d->prof) || (sp && d->split)) {
        mesh__diag_add(diags, MESH_DIAG_ERROR, files[f], mesh_manifest_line(m, i), 1, "%s",
                       pr ? "a second ServiceProfile for this service"
                          : "a second TrafficSplit for this service");
        rc = MESH_ERR_PARSE;
        break;
      }
      if (pr) d->prof = mesh_profile_ref(pr);
      else d->split = mesh_split_ref(sp);
    }
    mesh_manifest_free(m);
  }
  for (size_t i = 0; !rc && i < t->n; i++) rc = dst_finish(ctx, &t->d[i]);
  mesh__proxy_dir_files_free(ctx, files, nfiles);
  if (rc) {
    mesh__proxy_profiles_unref(t);
    return rc;
  }
  qsort(t->d, t->n, sizeof *t->d, cmp_dst);
  *ret = t;
  return 0;
}

/* libmesh proxy profiles internals: the destinations meshd knows ServiceProfiles and TrafficSplits for. */
#ifndef MESH_PROXY_PROFILES_INTERNAL_H
#define MESH_PROXY_PROFILES_INTERNAL_H

#include <mesh/diag.h>
#include <mesh/profile.h>
#include <mesh/retry.h>
#include <mesh/split.h>

#include "annotations_internal.h"

/* One destination (a service's FQDN): its ServiceProfile, its TrafficSplit
 * (the apex service's), and the retry budgets its routes draw on. */
typedef struct {
  char name[256]; /* "web.default.svc.cluster.local", lowercase */
  mesh_profile *prof;
  mesh_split *split;
  mesh_budget *budget;         /* the profile's (shared by its routes) */
  mesh_budget **route_budgets; /* a route's own, or NULL: the profile's */
  size_t nroutes;
  /* The Service's retry and timeout annotations (discovery, and only when
   * it has no ServiceProfile: prof is NULL then). */
  mesh__ann ann;
  int has_ann;
} proxy_dst;

/* Immutable once loaded and swapped whole on reload; requests hold a
 * reference while they use one of its destinations. */
typedef struct proxy_profiles {
  mesh_ctx *ctx;
  long refs;
  proxy_dst *d; /* sorted by name */
  size_t n;
} proxy_profiles;

/* Every *.yaml, *.yml, *.json file of dir (at most 1000), all valid or
 * nothing: MESH_ERR_PARSE with diags, MESH_ERR_IO / MESH_ERR_LIMIT with
 * *why, MESH_ERR_NOMEM. A second profile or split for one service is an
 * error. Kinds other than ServiceProfile and TrafficSplit are ignored. */
int mesh__proxy_profiles_load(mesh_ctx *ctx, const char *dir, mesh_diags *diags,
                              proxy_profiles **ret, const char **why);
void mesh__proxy_profiles_unref(proxy_profiles *t);
/* A set of one destination, prof (a reference is taken), with its budgets:
 * how a profile from the control plane reaches the request path, held and
 * swapped as a loaded directory is. MESH_ERR_NOMEM. */
int mesh__proxy_profiles_one(mesh_ctx *ctx, const mesh_profile *prof, proxy_profiles **ret);
/* A set of one destination named name without a profile, governed by a
 * Service's annotations (copied). MESH_ERR_NOMEM. */
int mesh__proxy_profiles_ann(mesh_ctx *ctx, const char *name, const mesh__ann *ann,
                             proxy_profiles **ret);
/* A directory of manifests (profiles, policy): its *.yaml, *.yml, *.json
 * files as paths, sorted, at most 1000 (MESH_ERR_LIMIT); MESH_ERR_IO with
 * *why. Free with mesh__proxy_dir_files_free. */
int mesh__proxy_dir_files(mesh_ctx *ctx, const char *dir, char ***ret, size_t *n,
                          const char **why);
void mesh__proxy_dir_files_free(mesh_ctx *ctx, char **files, size_t n);
/* What changes when a manifest in dir is added, removed or edited. */
uint64_t mesh__proxy_dir_stamp(const char *dir);
/* The destination named host[0..len) (lowercase), NULL when unknown. O(log n). */
const proxy_dst *mesh__proxy_profiles_find(const proxy_profiles *t, const char *host, size_t len);
/* The budget a route's retries draw on (r NULL: the profile's). */
mesh_budget *mesh__proxy_dst_budget(const proxy_dst *d, const mesh_route *r);

#endif

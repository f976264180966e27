/* libmesh manifests: split input into documents and dispatch each on apiVersion/kind. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <mesh/error.h>
#include <mesh/profile.h>
#include <mesh/split.h>
#include "ctx_internal.h"
#include "diag_internal.h"
#include "manifest_internal.h"
#include "node_internal.h"
#include "policy_internal.h"
#include "profile_internal.h"
#include "split_internal.h"
#include "store_internal.h"

typedef struct {
  int kind;
  const char *kind_name, *api_version, *name, *ns;
  uint32_t line;
  const mesh__node *node;
  mesh_profile *profile;
  mesh_split *split;
  mesh__pdoc *pdoc; /* the policy kinds */
} doc;

struct mesh_manifest {
  mesh_ctx *ctx;
  mesh__node **roots;
  size_t n;
  doc *docs;
};

static const char *const profile_versions[] = {"v1alpha1", "v1alpha2", NULL};
static const char *const split_versions[] = {"v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4", NULL};
static const char *const server_versions[] = {"v1alpha1", "v1beta1", "v1beta2", "v1beta3", NULL};
static const char *const authz_versions[] = {"v1alpha1", "v1beta1", NULL};
static const char *const alpha1[] = {"v1alpha1", NULL};
static const char *const policy_route_versions[] = {"v1alpha1", "v1beta1", "v1beta2", "v1beta3", NULL};
static const char *const gateway_route_versions[] = {"v1alpha2", "v1beta1", "v1", NULL};

/* Every resource the mesh reads, by API group and kind. */
static const struct kind_def {
  const char *group, *kind;
  const char *const *versions;
  int id;
} kinds[] = {
    {"linkerd.io", "ServiceProfile", profile_versions, MESH_KIND_SERVICE_PROFILE},
    {"split.smi-spec.io", "TrafficSplit", split_versions, MESH_KIND_TRAFFIC_SPLIT},
    {"policy.linkerd.io", "Server", server_versions, MESH_KIND_SERVER},
    {"policy.linkerd.io", "ServerAuthorization", authz_versions, MESH_KIND_SERVER_AUTHORIZATION},
    {"policy.linkerd.io", "AuthorizationPolicy", alpha1, MESH_KIND_AUTHORIZATION_POLICY},
    {"policy.linkerd.io", "MeshTLSAuthentication", alpha1, MESH_KIND_MESH_TLS_AUTHENTICATION},
    {"policy.linkerd.io", "NetworkAuthentication", alpha1, MESH_KIND_NETWORK_AUTHENTICATION},
    {"policy.linkerd.io", "HTTPRoute", policy_route_versions, MESH_KIND_HTTP_ROUTE},
    {"gateway.networking.k8s.io", "HTTPRoute", gateway_route_versions, MESH_KIND_HTTP_ROUTE},
    {MESH__OWN_GROUP, "Service", alpha1, MESH_KIND_SERVICE},
    {MESH__OWN_GROUP, "Workload", alpha1, MESH_KIND_WORKLOAD},
};

static void list_versions(const char *const *v, char *buf, size_t size) {
  size_t off = 0;
  buf[0] = '\0';
  for (; *v && off < size; v++) {
    int w = snprintf(buf + off, size - off, "%s%s", off ? ", " : "", *v);
    if (w < 0) break;
    off += (size_t)w;
  }
}

/* Finds the kind of a document; reports unknown versions and misspellings. */
static const struct kind_def *classify(mesh__reader *r, const mesh__node *api_node,
                                       const char *api, const mesh__node *kind_node,
                                       const char *kind) {
  const char *slash = strchr(api, '/');
  if (!slash) return NULL; /* core group ("v1"): not ours */
  size_t glen = (size_t)(slash - api);
  const char *version = slash + 1;
  bool group_known = false;
  for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
    const struct kind_def *k = &kinds[i];
    if (strlen(k->group) != glen || strncmp(k->group, api, glen) != 0) continue;
    group_known = true;
    if (strcasecmp(k->kind, kind) != 0) continue;
    if (strcmp(k->kind, kind) != 0)
      mesh__warn(r, kind_node, "'%s' is spelled '%s' in %.*s; loading it as %s", kind,
                 k->kind, (int)glen, api, k->kind);
    for (const char *const *v = k->versions; *v; v++)
      if (strcmp(*v, version) == 0) return k;
    char versions[128];
    list_versions(k->versions, versions, sizeof versions);
    mesh__error(r, api_node, "%s does not exist in version '%s' (known: %s)", k->kind, version,
                versions);
    return NULL;
  }
  if (group_known) {
    char known[512];
    size_t off = 0;
    known[0] = '\0';
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
      if (strlen(kinds[i].group) == glen && strncmp(kinds[i].group, api, glen) == 0 && off < sizeof known) {
        int w = snprintf(known + off, sizeof known - off, "%s%s", off ? ", " : "", kinds[i].kind);
        if (w > 0) off += (size_t)w;
      }
    mesh__error(r, kind_node, "unknown kind '%s' in %.*s (known: %s)", kind, (int)glen, api, known);
  }
  return NULL;
}

/* The policy and mesh kinds are checked for shape here; their meaning is
 * compiled by the modules that enforce them. */
static void check_shape(mesh__reader *r, const mesh__node *root, int kind) {
  const mesh__node *spec = mesh__node_get(root, "spec");
  if (!spec) {
    mesh__error(r, root, "missing required field 'spec'");
    return;
  }
  if (!mesh__want_map(r, spec)) return;
  if (kind == MESH_KIND_SERVER) {
    const mesh__node *port = mesh__node_get(spec, "port");
    if (!port) mesh__error(r, spec, "missing required field 'port'");
    else if (port->type != MESH_NODE_SCALAR) mesh__error(r, port, "expected a port number or name");
  } else if (kind == MESH_KIND_SERVER_AUTHORIZATION) {
    if (!mesh__node_get(spec, "server")) mesh__error(r, spec, "missing required field 'server'");
    if (!mesh__node_get(spec, "client")) mesh__error(r, spec, "missing required field 'client'");
  }
}

static int load_doc(mesh__reader *r, const mesh__node *root, doc *d) {
  size_t errors_before = r->errors;
  d->node = root;
  d->line = root->line;
  if (!mesh__want_map(r, root)) return 0;
  const char *api = NULL, *kind = NULL;
  bool ok = mesh__read_string(r, root, "apiVersion", true, &api);
  ok = mesh__read_string(r, root, "kind", true, &kind) && ok;
  if (!ok) return 0;
  d->api_version = api;
  d->kind_name = kind;
  const struct kind_def *k =
      classify(r, mesh__node_get(root, "apiVersion"), api, mesh__node_get(root, "kind"), kind);
  const mesh__node *meta = mesh__node_get(root, "metadata");
  d->ns = "default";
  if (meta && mesh__want_map(r, meta)) {
    mesh__read_string(r, meta, "name", k != NULL, &d->name);
    mesh__read_string(r, meta, "namespace", false, &d->ns);
  } else if (!meta && k) {
    mesh__error(r, root, "missing required field 'metadata'");
  }
  if (!k) {
    /* Valid YAML for something else (a ServiceMonitor, a Deployment): kept, not used. */
    if (r->errors == errors_before)
      mesh__warn(r, mesh__node_get(root, "kind"), "%s %s is not a mesh resource; ignored", api, kind);
    return 0;
  }
  d->kind = k->id;
  if (d->name && !mesh_dns_name_valid(d->name))
    mesh__error(r, mesh__node_get(meta, "name"),
                "'%s' is not a valid name (lower-case letters, digits, '-' and '.', at most 253)",
                d->name);
  if (meta && mesh__node_get(meta, "namespace") && !mesh_dns_label_valid(d->ns))
    mesh__error(r, mesh__node_get(meta, "namespace"),
                "'%s' is not a valid namespace (lower-case letters, digits and '-', at most 63)",
                d->ns);
  switch (k->id) {
  case MESH_KIND_SERVICE_PROFILE: return mesh__profile_compile(r, root, &d->profile);
  case MESH_KIND_TRAFFIC_SPLIT: return mesh__split_compile(r, root, &d->split);
  case MESH_KIND_SERVER:
  case MESH_KIND_SERVER_AUTHORIZATION:
  case MESH_KIND_AUTHORIZATION_POLICY:
  case MESH_KIND_MESH_TLS_AUTHENTICATION:
  case MESH_KIND_NETWORK_AUTHENTICATION:
  case MESH_KIND_HTTP_ROUTE: return mesh__pdoc_compile(r, root, k->id, &d->pdoc);
  case MESH_KIND_SERVICE:
  case MESH_KIND_WORKLOAD: return mesh__store_check_doc(r, root, k->id);
  default: check_shape(r, root, k->id); return 0;
  }
}

void mesh_manifest_free(mesh_manifest *m) {
  if (!m) return;
  for (size_t i = 0; m->docs && i < m->n; i++) {
    mesh_profile_unref(m->docs[i].profile);
    mesh_split_unref(m->docs[i].split);
    mesh__pdoc_unref(m->docs[i].pdoc);
  }
  mesh__free(m->ctx, m->docs);
  mesh__node_free_docs(m->ctx, m->roots, m->n);
  mesh__free(m->ctx, m);
}

int mesh_manifest_load_buffer(mesh_ctx *ctx, const char *file, const char *buf, size_t len,
                              mesh_diags *diags, mesh_manifest **ret) {
  if (!ctx || (!buf && len) || !ret) return MESH_ERR_INVALID;
  if (!file) file = "<input>";
  mesh_manifest *m = mesh__calloc(ctx, 1, sizeof *m);
  if (!m) return MESH_ERR_NOMEM;
  m->ctx = ctx;
  int rc = mesh__node_parse(ctx, file, buf, len, diags, &m->roots, &m->n);
  if (rc < 0) {
    mesh__free(ctx, m);
    return rc;
  }
  m->docs = mesh__calloc(ctx, m->n ? m->n : 1, sizeof *m->docs);
  if (!m->docs) {
    mesh_manifest_free(m);
    return MESH_ERR_NOMEM;
  }
  mesh__reader r = {.ctx = ctx, .diags = diags, .file = file};
  for (size_t i = 0; i < m->n && rc == 0; i++) {
    rc = load_doc(&r, m->roots[i], &m->docs[i]);
    if (rc == MESH_ERR_PARSE) rc = 0; /* keep going: report every document's problems */
  }
  if (rc == 0) {
    /* Policy checks that need several documents: duplicates, overlapping Servers. */
    mesh__pdoc **pdocs = mesh__calloc(ctx, m->n ? m->n : 1, sizeof *pdocs);
    if (!pdocs) rc = MESH_ERR_NOMEM;
    for (size_t i = 0; pdocs && i < m->n; i++) pdocs[i] = m->docs[i].pdoc;
    if (pdocs) mesh__policy_check_docs(&r, pdocs, m->n);
    mesh__free(ctx, pdocs);
  }
  if (rc == 0 && r.nomem) rc = MESH_ERR_NOMEM;
  if (rc == 0 && r.errors) rc = MESH_ERR_PARSE;
  if (rc < 0) {
    mesh_manifest_free(m);
    return rc;
  }
  *ret = m;
  return 0;
}

int mesh_manifest_file_name(const char *n) {
  if (!n) return 0;
  size_t l = strlen(n);
  if (n[0] == '.') return false; /* editors' and tools' temporary files */
  return (l > 5 && !strcmp(n + l - 5, ".yaml")) || (l > 4 && !strcmp(n + l - 4, ".yml")) ||
         (l > 5 && !strcmp(n + l - 5, ".json"));
}

int mesh__manifest_read_fd(mesh_ctx *ctx, int fd, const char *name, mesh_diags *diags,
                           char **ret, size_t *ret_len) {
  /* Read at most one byte past the limit, so an oversized file is reported
   * as such without reading all of it. */
  size_t cap = 64 * 1024, len = 0;
  char *buf = mesh__malloc(ctx, cap);
  int rc = buf ? 0 : MESH_ERR_NOMEM;
  while (rc == 0) {
    if (len == cap) {
      if (cap > MESH_MANIFEST_MAX_BYTES) break;
      char *nb = mesh__realloc(ctx, buf, cap * 2);
      if (!nb) {
        rc = MESH_ERR_NOMEM;
        break;
      }
      buf = nb;
      cap *= 2;
    }
    ssize_t n = read(fd, buf + len, cap - len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      mesh__diag_add(diags, MESH_DIAG_ERROR, name, 0, 0, "cannot read: %s", strerror(errno));
      rc = MESH_ERR_IO;
    }
    if (n <= 0) break;
    len += (size_t)n;
  }
  if (rc == 0 && len > MESH_MANIFEST_MAX_BYTES) {
    mesh__diag_add(diags, MESH_DIAG_ERROR, name, 0, 0,
                   "file is larger than the %u-byte limit for manifests",
                   (unsigned)MESH_MANIFEST_MAX_BYTES);
    rc = MESH_ERR_LIMIT;
  }
  if (rc) {
    mesh__free(ctx, buf);
    return rc;
  }
  *ret = buf;
  *ret_len = len;
  return 0;
}

int mesh_manifest_load_file(mesh_ctx *ctx, const char *path, mesh_diags *diags,
                            mesh_manifest **ret) {
  if (!ctx || !path || !ret) return MESH_ERR_INVALID;
  bool is_stdin = strcmp(path, "-") == 0;
  const char *name = is_stdin ? "<stdin>" : path;
  int fd = is_stdin ? 0 : open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    mesh__diag_add(diags, MESH_DIAG_ERROR, name, 0, 0, "cannot open: %s", strerror(errno));
    return MESH_ERR_IO;
  }
  char *buf = NULL;
  size_t len = 0;
  int rc = mesh__manifest_read_fd(ctx, fd, name, diags, &buf, &len);
  if (!is_stdin) close(fd);
  if (rc == 0) rc = mesh_manifest_load_buffer(ctx, name, buf, len, diags, ret);
  mesh__free(ctx, buf);
  return rc;
}

static const doc *at(const mesh_manifest *m, size_t i) { return m && i < m->n ? &m->docs[i] : NULL; }

size_t mesh_manifest_count(const mesh_manifest *m) { return m ? m->n : 0; }
int mesh_manifest_kind(const mesh_manifest *m, size_t i) {
  const doc *d = at(m, i);
  return d ? d->kind : MESH_KIND_OTHER;
}
const char *mesh_manifest_kind_name(const mesh_manifest *m, size_t i) {
  const doc *d = at(m, i);
  return d ? d->kind_name : NULL;
}
const char *mesh_manifest_api_version(const mesh_manifest *m, size_t i) {
  const doc *d = at(m, i);
  return d ? d->api_version : NULL;
}
const char *mesh_manifest_name(const mesh_manifest *m, size_t i) {
  const doc *d = at(m, i);
  return d ? d->name : NULL;
}
const char *mesh_manifest_namespace(const mesh_manifest *m, size_t i) {
  const doc *d = at(m, i);
  return d ? d->ns : NULL;
}
uint32_t mesh_manifest_line(const mesh_manifest *m, size_t i) {
  const doc *d = at(m, i);
  return d ? d->line : 0;
}
const mesh_profile *mesh_manifest_profile(const mesh_manifest *m, size_t i) {
  const doc *d = at(m, i);
  return d ? d->profile : NULL;
}
const mesh_split *mesh_manifest_split(const mesh_manifest *m, size_t i) {
  const doc *d = at(m, i);
  return d ? d->split : NULL;
}

mesh__pdoc *mesh__manifest_pdoc(const mesh_manifest *m, size_t i) {
  const doc *d = at(m, i);
  return d ? d->pdoc : NULL;
}

const mesh__node *mesh__manifest_node(const mesh_manifest *m, size_t i) {
  const doc *d = at(m, i);
  return d ? d->node : NULL;
}

/* libmesh policy internals: the compiled form of one policy document, shared by policy_doc.c and policy.c. */
#ifndef MESH_POLICY_INTERNAL_H
#define MESH_POLICY_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>

#include <mesh/policy.h>
#include "node_internal.h"
#include "regex_internal.h"

/* An IP network: family 4 or 6, the address with host bits cleared, prefix length. */
typedef struct {
  uint8_t family, bits;
  uint8_t addr[16];
} mesh__cidr;

typedef struct {
  mesh__cidr net;
  mesh__cidr *except;
  size_t nexcept;
} mesh__network;

/* Parse "10.0.0.0/8", "fd00::/8" or a bare address (a /32 or /128).
 * 0, or MESH_ERR_PARSE with a static reason; *host_bits set when the
 * address had bits set past the prefix (they are cleared). */
int mesh__cidr_parse(const char *s, size_t len, mesh__cidr *out, bool *host_bits, const char **why);
bool mesh__cidr_contains(const mesh__cidr *net, int family, const uint8_t *addr);
bool mesh__cidr_within(const mesh__cidr *inner, const mesh__cidr *outer);

/* Identity matchers. */
enum { MESH__ID_ANY, MESH__ID_EXACT, MESH__ID_SUFFIX, MESH__ID_SPIFFE, MESH__ID_SPIFFE_PREFIX };
typedef struct {
  int type;
  char *s; /* EXACT: the DNS name; SUFFIX: ".suffix"; SPIFFE: the ID; SPIFFE_PREFIX: "spiffe://td/.../" */
  size_t len;
  uint64_t hash; /* EXACT and SPIFFE: mesh__hash(s, len), so that most misses cost one compare */
} mesh__idm;

/* n bytes equal; inline, for the short strings of routes and methods. */
static inline bool mesh__eq(const char *a, const char *b, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (a[i] != b[i]) return false;
  return true;
}

/* A quick 64-bit hash, eight bytes at a time (identities are ~60 bytes:
 * a byte-wise hash would cost more than the comparisons it saves). */
static inline uint64_t mesh__hash(const char *s, size_t n) {
  uint64_t h = 0x9e3779b97f4a7c15ull ^ n, w;
  for (; n >= 8; s += 8, n -= 8) {
    memcpy(&w, s, 8);
    h = (h ^ w) * 0xff51afd7ed558ccdull;
    h ^= h >> 32;
  }
  w = 0;
  memcpy(&w, s, n);
  h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
  return h ^ (h >> 29);
}

/* Who a clause lets in. */
enum { MESH__AUTHN_ANY, MESH__AUTHN_TLS, MESH__AUTHN_MESH };
typedef struct {
  int authn;
  mesh__idm *ids; /* MESH: at least one */
  size_t nids;
  mesh__network *nets; /* none: every network */
  size_t nnets;
} mesh__clause;

/* A label selector: every requirement must hold. */
enum { MESH__SEL_IN, MESH__SEL_NOT_IN, MESH__SEL_EXISTS, MESH__SEL_NOT_EXISTS };
typedef struct {
  int op;
  char *key;
  char **values;
  size_t nvalues;
} mesh__selreq;
typedef struct {
  mesh__selreq *reqs;
  size_t n;
} mesh__selector;

/* HTTPRoute matches. */
enum { MESH__PATH_NONE, MESH__PATH_EXACT, MESH__PATH_PREFIX, MESH__PATH_REGEX };
enum { MESH__VAL_EXACT, MESH__VAL_REGEX };
typedef struct {
  char *name;
  size_t name_len;
  int type;
  char *value;
  size_t value_len;
  mesh__regex *re;
} mesh__kvmatch;
typedef struct {
  int path_type;
  char *path; /* PREFIX: with trailing '/' trimmed (empty for "/") */
  size_t path_len;
  mesh__regex *path_re;
  char *method;
  size_t method_len;
  mesh__kvmatch *headers, *query;
  size_t nheaders, nquery;
} mesh__rmatch;
typedef struct {
  mesh__rmatch *matches; /* none: everything */
  size_t n;
} mesh__rule;

/* References from one resource to another. */
enum { MESH__REF_SERVER, MESH__REF_HTTPROUTE, MESH__REF_NAMESPACE, MESH__REF_MESHTLS,
       MESH__REF_NETWORK, MESH__REF_SERVICE_ACCOUNT, MESH__REF_OTHER };
typedef struct {
  int kind;
  char *name, *ns;
  const mesh__node *at; /* valid while the manifest lives: for diagnostics only */
} mesh__ref;

/* One compiled policy document. Refcounted: a snapshot keeps the documents
 * it was made from. Node pointers (at, root) are only read while the
 * manifest that owns the tree is alive, that is during compiling. */
typedef struct mesh__pdoc mesh__pdoc;
struct mesh__pdoc {
  mesh_ctx *ctx;
  atomic_uint refcnt;
  int kind; /* MESH_KIND_* */
  char *file, *name, *ns;
  const mesh__node *root;
  bool ok; /* compiled without errors */
  /* Server */
  mesh__selector sel;
  mesh_policy_label *labels; /* metadata.labels (owned strings), for ServerAuthorization selectors */
  size_t nlabels;
  uint32_t port; /* 0 when by name */
  char *port_name;
  int proto, access; /* MESH_POLICY_PROTO_*, MESH_POLICY_DEFAULT_* */
  const mesh__node *port_at;
  /* ServerAuthorization: server by name (ref) or selector; AuthorizationPolicy: target + refs */
  mesh__ref target; /* kind MESH__REF_OTHER when not set */
  bool by_selector;
  mesh__selector srv_sel;
  mesh__clause clause; /* ServerAuthorization, MeshTLSAuthentication, NetworkAuthentication */
  mesh__ref *refs;     /* AuthorizationPolicy requiredAuthenticationRefs; HTTPRoute parentRefs */
  size_t nrefs;
  mesh__ref *ids;      /* serviceAccounts / identityRefs (SERVICE_ACCOUNT or NAMESPACE), made
                        * into identities when the snapshot knows the identity domain */
  size_t nids;
  /* HTTPRoute */
  mesh__rule *rules;
  size_t nrules;
};

/* ---- the snapshot (policy.c builds it, policy_decide.c reads it) ---- */

#define MESH__POLICY_MAX_NETWORKS 64

/* A clause as the snapshot uses it: identities made whole (serviceAccounts
 * turned into names), networks borrowed from a document or the snapshot. */
typedef struct {
  int authn;
  mesh__idm *ids; /* owned array; strings borrowed from a document or the arena */
  size_t nids;
  const mesh__network *nets;
  size_t nnets;
} mesh__sclause;

typedef struct {
  const char *kind, *name;
  mesh__sclause *clauses; /* every one must hold */
  size_t n;
  bool never; /* a reference is missing: it authorizes nothing */
} mesh__authz;

typedef struct {
  const mesh__pdoc *doc;
  mesh__authz **authz; /* AuthorizationPolicies that target the route */
  size_t nauthz;
} mesh__sroute;

/* One match of one rule of a route on a server: what a request is tried
 * against, laid out flat so that trying many costs no pointer chasing. */
typedef struct {
  const mesh__rmatch *m; /* NULL: a rule without matches, which matches everything */
  const mesh__sroute *rt;
  int32_t rule;
} mesh__rentry;

typedef struct {
  const mesh__pdoc *doc;
  mesh__authz **authz; /* ServerAuthorizations, and AuthorizationPolicies on the Server or namespace */
  size_t nauthz;
  mesh__sroute **routes;
  size_t nroutes;
  mesh__rentry *entries;
  size_t nentries;
} mesh__sserver;

struct mesh_policy {
  mesh_ctx *ctx;
  atomic_uint refs;
  mesh__pdoc **docs;
  size_t ndocs;
  mesh__sserver *servers; /* sorted by namespace, then name */
  size_t nservers;
  mesh__sroute *routes; /* sorted by namespace, then name */
  size_t nroutes;
  mesh__authz *authzs;
  size_t nauthzs;
  mesh__authz defaults[7]; /* by MESH_POLICY_DEFAULT_* */
  mesh__authz localhost;
  mesh__sclause default_clauses[4], localhost_clause;
  mesh__idm any_id;
  mesh__network cluster[MESH__POLICY_MAX_NETWORKS], local[2];
  size_t ncluster;
  int default_policy;
  bool allow_localhost;
  char cp_ns[64], td[254];
  char **arena; /* strings the snapshot made */
  size_t narena, carena;
};

/* Compile one document of a policy kind (apiVersion and kind checked).
 * Reports through r; returns 0 with *ret set (even when the document had
 * errors: ->ok says), or MESH_ERR_NOMEM. */
int mesh__pdoc_compile(mesh__reader *r, const mesh__node *root, int kind, mesh__pdoc **ret);
mesh__pdoc *mesh__pdoc_ref(mesh__pdoc *d);
void mesh__pdoc_unref(mesh__pdoc *d);

/* The checks that need several documents (duplicates, overlapping
 * Servers), over the documents of one manifest; reports through r. */
void mesh__policy_check_docs(mesh__reader *r, mesh__pdoc *const *docs, size_t n);

/* Document i's compiled policy resource, NULL when of another kind. */
struct mesh_manifest;
mesh__pdoc *mesh__manifest_pdoc(const struct mesh_manifest *m, size_t i);

/* Label selector evaluation over a label list. */
bool mesh__selector_matches(const mesh__selector *s, const mesh_policy_label *labels, size_t n);

#endif

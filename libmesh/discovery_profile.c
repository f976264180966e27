/* libmesh discovery profiles: a GetProfile message (DestinationProfile JSON) turned into the ServiceProfile the proxy routes by, compiled by the profile module itself. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <mesh/diag.h>
#include <mesh/error.h>
#include <mesh/profile.h>

#include "annotations_internal.h"
#include "ctx_internal.h"
#include "discovery_internal.h"

/* Conditions nest (all, any, not); the stack a message can make us use is bounded. */
#define COND_DEPTH_MAX 32

typedef struct {
  const char *why;
  int nomem;
} conv;

/* obj[key] = v, taking v; false (and v dropped) when it could not be set. */
static int put(conv *c, json_t *obj, const char *key, json_t *v) {
  if (!v) return 0;
  if (json_object_set_new(obj, key, v)) {
    c->nomem = 1;
    return 0;
  }
  return 1;
}

static json_t *cond_of(conv *c, json_t *m, int request, int depth);

/* {"matches": [M...]} as the ServiceProfile's list [C...]. */
static json_t *matches_of(conv *c, json_t *v, int request, int depth) {
  json_t *list = json_object_get(v, "matches");
  if (!json_is_array(list)) {
    c->why = "all / any is not {\"matches\": [...]}";
    return NULL;
  }
  json_t *out = json_array();
  if (!out) c->nomem = 1;
  for (size_t i = 0; out && i < json_array_size(list); i++) {
    json_t *one = cond_of(c, json_array_get(list, i), request, depth + 1);
    if (!one || json_array_append_new(out, one)) {
      if (one) c->nomem = 1;
      json_decref(out);
      out = NULL;
    }
  }
  return out;
}

/* A RequestMatch or ResponseMatch (the proto's oneof) as a ServiceProfile
 * condition: method, path.regex → pathRegex, status, all / any (their
 * matches), not. Fields the proto does not have are ignored (proto3's rule),
 * but a match must say something. The values themselves (a regex, a status
 * range) are judged by the profile compiler. */
static json_t *cond_of(conv *c, json_t *m, int request, int depth) {
  if (depth > COND_DEPTH_MAX) {
    c->why = "conditions nested too deep";
    return NULL;
  }
  if (!json_is_object(m)) {
    c->why = "a condition is not an object";
    return NULL;
  }
  json_t *out = json_object(), *v;
  int ok = out != NULL, set = 0;
  if (!out) c->nomem = 1;
  if (ok && request && (v = json_object_get(m, "method"))) {
    set = 1;
    ok = put(c, out, "method", json_incref(v));
  }
  if (ok && request && (v = json_object_get(m, "path"))) {
    json_t *re = json_object_get(v, "regex");
    set = 1;
    if (!json_is_string(re)) {
      c->why = "path is not {\"regex\": <text>}";
      ok = 0;
    } else {
      ok = put(c, out, "pathRegex", json_incref(re));
    }
  }
  if (ok && !request && (v = json_object_get(m, "status"))) {
    set = 1;
    ok = put(c, out, "status", json_incref(v));
  }
  static const char *const lists[] = {"all", "any"};
  for (int i = 0; ok && i < 2; i++) {
    if (!(v = json_object_get(m, lists[i]))) continue;
    set = 1;
    ok = put(c, out, lists[i], matches_of(c, v, request, depth));
  }
  if (ok && (v = json_object_get(m, "not"))) {
    set = 1;
    ok = put(c, out, "not", cond_of(c, v, request, depth + 1));
  }
  if (ok && !set) {
    c->why = request ? "a request match with none of method, path, all, any, not"
                     : "a response match with none of status, all, any, not";
    ok = 0;
  }
  if (!ok) {
    json_decref(out);
    return NULL;
  }
  return out;
}

/* A RetryBudget as spec.retryBudget. */
static json_t *budget_of(conv *c, json_t *b) {
  if (!json_is_object(b)) {
    c->why = "retry_budget is not an object";
    return NULL;
  }
  static const char *const keys[][2] = {{"retry_ratio", "retryRatio"},
                                        {"min_retries_per_second", "minRetriesPerSecond"},
                                        {"ttl", "ttl"}};
  json_t *out = json_object();
  if (!out) c->nomem = 1;
  for (size_t i = 0; out && i < sizeof keys / sizeof keys[0]; i++) {
    json_t *v = json_object_get(b, keys[i][0]);
    if (v && !put(c, out, keys[i][1], json_incref(v))) {
      json_decref(out);
      out = NULL;
    }
  }
  return out;
}

static json_t *route_of(conv *c, json_t *rt) {
  if (!json_is_object(rt)) {
    c->why = "a route is not an object";
    return NULL;
  }
  json_t *out = json_object(), *v;
  int ok = out != NULL;
  if (!out) c->nomem = 1;
  /* The route's name is its metrics label; the compiler requires one. */
  if (ok && (v = json_object_get(json_object_get(rt, "metrics_labels"), "route")))
    ok = put(c, out, "name", json_incref(v));
  if (ok && (v = json_object_get(rt, "condition")))
    ok = put(c, out, "condition", cond_of(c, v, 1, 0));
  if (ok && (v = json_object_get(rt, "response_classes"))) {
    json_t *classes = json_array();
    if (!classes) c->nomem = 1;
    ok = put(c, out, "responseClasses", classes);
    if (ok && !json_is_array(v)) {
      c->why = "response_classes is not a list";
      ok = 0;
    }
    for (size_t i = 0; ok && i < json_array_size(v); i++) {
      json_t *rc = json_array_get(v, i), *cl = json_object(), *f;
      ok = json_array_append_new(classes, cl) == 0 && cl;
      if (!ok) c->nomem = 1;
      else if (!json_is_object(rc)) {
        c->why = "a response class is not an object";
        ok = 0;
      }
      if (ok && (f = json_object_get(rc, "condition")))
        ok = put(c, cl, "condition", cond_of(c, f, 0, 0));
      if (ok && (f = json_object_get(rc, "is_failure")))
        ok = put(c, cl, "isFailure", json_incref(f));
    }
  }
  if (ok && (v = json_object_get(rt, "is_retryable"))) ok = put(c, out, "isRetryable", json_incref(v));
  if (ok && (v = json_object_get(rt, "timeout"))) ok = put(c, out, "timeout", json_incref(v));
  if (ok && (v = json_object_get(rt, "retry_budget")))
    ok = put(c, out, "retryBudget", budget_of(c, v));
  if (!ok) {
    json_decref(out);
    return NULL;
  }
  return out;
}

/* The ServiceProfile document the message describes, or NULL: the default
 * profile (*dflt set) or an error (c->why or c->nomem). */
static json_t *document_of(conv *c, json_t *msg, int *dflt) {
  *dflt = 0;
  if (!json_is_object(msg)) {
    c->why = "not a JSON object";
    return NULL;
  }
  json_t *fqn = json_object_get(msg, "fully_qualified_name");
  json_t *routes = json_object_get(msg, "routes"), *dst = json_object_get(msg, "dst_overrides");
  json_t *budget = json_object_get(msg, "retry_budget");
  if (fqn && !json_is_string(fqn)) {
    c->why = "fully_qualified_name is not a string";
    return NULL;
  }
  if ((routes && !json_is_null(routes) && !json_is_array(routes)) ||
      (dst && !json_is_null(dst) && !json_is_array(dst))) {
    c->why = "routes or dst_overrides is not a list";
    return NULL;
  }
  /* No name is the control plane's default profile; neither routes nor
   * overrides change nothing either: both mean "no profile", so that a
   * plain discovered service is routed (and counted) as without one. */
  const char *name = fqn ? json_string_value(fqn) : "";
  if (!*name || (!json_array_size(routes) && !json_array_size(dst))) {
    *dflt = 1;
    return NULL;
  }
  /* metadata.namespace: the name's second label (web.shop.svc.cluster.local). */
  const char *dot = strchr(name, '.'), *end = dot ? strchr(dot + 1, '.') : NULL;
  char ns[64] = "default";
  if (dot && dot[1]) {
    size_t n = end ? (size_t)(end - dot - 1) : strlen(dot + 1);
    snprintf(ns, sizeof ns, "%.*s", (int)(n < sizeof ns ? n : sizeof ns - 1), dot + 1);
  }
  json_t *doc = json_pack("{s:s, s:s, s:{s:o, s:s}, s:{}}", "apiVersion", "linkerd.io/v1alpha2",
                          "kind", "ServiceProfile", "metadata", "name", json_incref(fqn),
                          "namespace", ns, "spec");
  json_t *spec = json_object_get(doc, "spec");
  int ok = doc != NULL;
  if (!ok) c->nomem = 1;
  if (ok && json_array_size(routes)) {
    json_t *list = json_array();
    if (!list) c->nomem = 1;
    ok = put(c, spec, "routes", list);
    for (size_t i = 0; ok && i < json_array_size(routes); i++) {
      json_t *r = route_of(c, json_array_get(routes, i));
      ok = r && json_array_append_new(list, r) == 0;
      if (r && !ok) c->nomem = 1;
    }
  }
  if (ok && budget && !json_is_null(budget)) ok = put(c, spec, "retryBudget", budget_of(c, budget));
  if (ok && json_array_size(dst)) {
    json_t *list = json_array();
    if (!list) c->nomem = 1;
    ok = put(c, spec, "dstOverrides", list);
    for (size_t i = 0; ok && i < json_array_size(dst); i++) {
      json_t *w = json_array_get(dst, i), *o = json_object(), *v;
      ok = json_array_append_new(list, o) == 0 && o;
      if (!ok) c->nomem = 1;
      else if (!json_is_object(w)) {
        c->why = "a dst_overrides entry is not an object";
        ok = 0;
      }
      /* Weights are relative (out of 10000 as mesh-destination sends them):
       * the dstOverrides quantity reads the integer as it is. */
      if (ok && (v = json_object_get(w, "authority"))) ok = put(c, o, "authority", json_incref(v));
      if (ok && (v = json_object_get(w, "weight"))) ok = put(c, o, "weight", json_incref(v));
    }
  }
  if (!ok) {
    json_decref(doc);
    return NULL;
  }
  return doc;
}

/* The Service's retry and timeout annotations ({"name": "value", ...}),
 * read by the parser the store checked them with. 0 with *has set when
 * there are any; MESH_ERR_PARSE with why. */
static int annotations_of(json_t *msg, mesh__ann *ann, int *has, char *why, size_t cap) {
  json_t *a = json_object_get(msg, "annotations");
  mesh__ann_init(ann);
  *has = 0;
  if (!a || json_is_null(a)) return 0;
  if (!json_is_object(a)) {
    snprintf(why, cap, "annotations is not an object");
    return MESH_ERR_PARSE;
  }
  const char *k;
  json_t *v;
  json_object_foreach(a, k, v) {
    if (!json_is_string(v)) {
      snprintf(why, cap, "annotation %s is not text", k);
      return MESH_ERR_PARSE;
    }
    int rc = mesh__ann_set(ann, k, json_string_value(v), why, cap);
    if (rc < 0) return rc;
    if (rc == 0) *has = 1;
  }
  return 0;
}

int mesh__disc_profile_parse(mesh_ctx *ctx, const char *line, size_t len, mesh_profile **ret,
                             char *why, size_t cap) {
  return mesh__disc_profile_parse_ann(ctx, line, len, ret, NULL, NULL, why, cap);
}

int mesh__disc_profile_parse_ann(mesh_ctx *ctx, const char *line, size_t len, mesh_profile **ret,
                                 mesh__ann *ann, int *has_ann, char *why, size_t cap) {
  *ret = NULL;
  if (has_ann) *has_ann = 0;
  if (len > DISC_MESSAGE_MAX) {
    snprintf(why, cap, "message too large");
    return MESH_ERR_LIMIT;
  }
  json_error_t je;
  json_t *msg = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
  if (!msg) {
    snprintf(why, cap, "not JSON (%s)", je.text);
    return MESH_ERR_PARSE;
  }
  mesh__ann a;
  int has = 0, arc = annotations_of(msg, &a, &has, why, cap);
  if (arc) {
    json_decref(msg);
    return arc;
  }
  /* Only a Service without a ServiceProfile (no routes; a TrafficSplit's
   * dst_overrides alone are no profile) is governed by its annotations
   * (Linkerd: a profile's retries and timeouts win). */
  if (has && ann && has_ann && !json_array_size(json_object_get(msg, "routes"))) {
    *ann = a;
    *has_ann = 1;
  }
  conv c = {0};
  int dflt;
  json_t *doc = document_of(&c, msg, &dflt);
  json_decref(msg);
  if (!doc) {
    if (dflt) return 0;
    if (has_ann) *has_ann = 0;
    snprintf(why, cap, "%s", c.nomem ? "out of memory" : c.why ? c.why : "malformed");
    return c.nomem ? MESH_ERR_NOMEM : MESH_ERR_PARSE;
  }
  /* JSON is YAML: the profile module compiles it as it would the same
   * ServiceProfile read from a file (regexes, bounds, budgets, weights). */
  char *text = json_dumps(doc, JSON_COMPACT);
  json_decref(doc);
  if (!text) {
    snprintf(why, cap, "out of memory");
    return MESH_ERR_NOMEM;
  }
  mesh_diags *d = NULL;
  int rc = mesh_diags_new(ctx, &d);
  if (!rc) rc = mesh_profile_parse(ctx, "GetProfile", text, strlen(text), d, ret);
  free(text);
  if (rc) {
    const char *first = NULL;
    for (size_t i = 0; d && i < mesh_diags_count(d) && !first; i++)
      if (mesh_diags_severity(d, i) == MESH_DIAG_ERROR) first = mesh_diags_message(d, i);
    snprintf(why, cap, "%s", first ? first : mesh_strerror(rc));
  }
  mesh_diags_free(d);
  return rc;
}

/* libmesh inbound policy: the documents of a mesh-destination WatchWorkload message compiled into a snapshot. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <mesh/error.h>
#include <mesh/policy.h>
#include "ctx_internal.h"
#include "diag_internal.h"

int mesh_policy_compile_message(mesh_ctx *ctx, const char *json, size_t len,
                                const mesh_policy_opts *opts, mesh_diags *diags,
                                mesh_policy **ret) {
  if (!ctx || !json || !ret) return MESH_ERR_INVALID;
  json_error_t je;
  json_t *msg = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
  json_t *docs = json_object_get(msg, "documents"), *exists = json_object_get(msg, "exists");
  if (!json_is_object(msg) || !json_is_array(docs) || (exists && !json_is_boolean(exists))) {
    mesh__diag_add(diags, MESH_DIAG_ERROR, "message", msg ? 1 : (uint32_t)je.line,
                   msg ? 1 : (uint32_t)je.column, "%s",
                   msg ? "expected {\"workload\": {...}, \"exists\": true, \"documents\": [...]}"
                       : je.text);
    json_decref(msg);
    return MESH_ERR_PARSE;
  }
  if (exists && json_is_false(exists)) {
    json_decref(msg);
    return MESH_ERR_NOT_FOUND;
  }
  size_t n = json_array_size(docs);
  if (n > MESH_POLICY_MESSAGE_MAX_DOCS) {
    json_decref(msg);
    return MESH_ERR_LIMIT;
  }
  mesh_manifest **ms = mesh__calloc(ctx, n ? n : 1, sizeof *ms);
  int rc = ms ? 0 : MESH_ERR_NOMEM, bad = 0;
  for (size_t i = 0; !rc && i < n; i++) {
    char name[40];
    snprintf(name, sizeof name, "documents[%zu]", i);
    json_t *d = json_array_get(docs, i);
    if (!json_is_object(d)) {
      mesh__diag_add(diags, MESH_DIAG_ERROR, name, 1, 1, "a document is a JSON object");
      bad = 1;
      continue;
    }
    char *text = json_dumps(d, JSON_COMPACT);
    if (!text) {
      rc = MESH_ERR_NOMEM;
      break;
    }
    /* Each document on its own: a bad one is reported and the others still checked. */
    int lrc = mesh_manifest_load_buffer(ctx, name, text, strlen(text), diags, &ms[i]);
    free(text);
    if (lrc == MESH_ERR_NOMEM) rc = lrc;
    else if (lrc < 0) bad = 1;
  }
  json_decref(msg);
  if (!rc && bad) rc = MESH_ERR_PARSE;
  if (!rc) rc = mesh_policy_compile(ctx, (const mesh_manifest *const *)ms, n, opts, diags, ret);
  for (size_t i = 0; ms && i < n; i++) mesh_manifest_free(ms[i]);
  mesh__free(ctx, ms);
  return rc;
}

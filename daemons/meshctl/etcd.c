/* meshctl's etcd client (apply, delete, get): blocking calls to the v3 JSON gateway, member after member. */
#include <stdlib.h>
#include <string.h>

#include "daemon_etcd.h"
#include "meshctl.h"

#define RANGE_LIMIT (256u << 20) /* bytes of one range answer */

bool meshctl_etcd_endpoints(meshctl_etcd *t, const char *list) {
  t->neps = 0;
  for (const char *p = list; *p;) {
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    if (!strncmp(p, "https://", 8)) {
      fprintf(stderr, "%s: --etcd-endpoints: TLS to etcd is not supported: give http:// endpoints\n",
              t->prog);
      return false;
    }
    if (len >= 7 && !strncmp(p, "http://", 7)) {
      p += 7;
      len -= 7;
    }
    if (len && p[len - 1] == '/') len--;
    if (t->neps == MESHCTL_ETCD_MAX_ENDPOINTS || len == 0 || len >= sizeof t->eps[0] ||
        !memchr(p, ':', len)) {
      fprintf(stderr, "%s: --etcd-endpoints: expected http://HOST:PORT,... (at most %d)\n", t->prog,
              MESHCTL_ETCD_MAX_ENDPOINTS);
      return false;
    }
    memcpy(t->eps[t->neps], p, len);
    t->eps[t->neps++][len] = '\0';
    if (!comma) break;
    p = comma + 1;
  }
  return t->neps > 0;
}

json_t *meshctl_etcd_call(const meshctl_etcd *t, const char *path, json_t *body) {
  char *text = json_dumps(body, JSON_COMPACT);
  json_decref(body);
  if (!text) {
    fprintf(stderr, "%s: out of memory\n", t->prog);
    return NULL;
  }
  char why[512] = "no endpoint";
  json_t *res = NULL;
  for (size_t i = 0; i < t->neps && !res; i++) {
    int status = 0;
    char *ans = NULL;
    size_t len = 0;
    if (meshctl_http_request("POST", t->eps[i], path, text, strlen(text), t->timeout_ms,
                             RANGE_LIMIT, &status, &ans, &len, why, sizeof why) < 0)
      continue; /* a member down: the next one */
    json_error_t je;
    json_t *j = json_loadb(ans, len, 0, &je);
    if (status == 200 && json_is_object(j)) {
      res = j;
    } else {
      const char *m = json_string_value(json_object_get(j, "message"));
      if (!m) m = json_string_value(json_object_get(j, "error"));
      snprintf(why, sizeof why, "%s%s: HTTP %d: %.300s", t->eps[i], path, status, m ? m : ans);
      json_decref(j);
      free(ans);
      /* An answer from etcd is etcd's word: another member would say the same,
       * except when this one has no leader. */
      if (status != 503) break;
      continue;
    }
    free(ans);
  }
  free(text);
  if (!res) fprintf(stderr, "%s: etcd: %s\n", t->prog, why);
  return res;
}

bool meshctl_etcd_read(const meshctl_etcd *t, long long *rev, meshctl_etcd_kv_fn fn, void *ud) {
  char *end = etcd_range_end(t->prefix);
  char *k = etcd_b64_encode(t->prefix, strlen(t->prefix));
  char *e = end ? etcd_b64_encode(end, strlen(end)) : NULL;
  free(end);
  json_t *res = k && e ? meshctl_etcd_call(t, "/v3/kv/range",
                                           json_pack("{s:s,s:s}", "key", k, "range_end", e))
                       : NULL;
  free(k);
  free(e);
  if (!res) return false;
  *rev = etcd_i64(json_object_get(json_object_get(res, "header"), "revision"));
  size_t i;
  json_t *o;
  bool ok = *rev > 0;
  json_array_foreach(json_object_get(res, "kvs"), i, o) {
    size_t kl = 0, vl = 0;
    const char *ks = json_string_value(json_object_get(o, "key"));
    const char *vs = json_string_value(json_object_get(o, "value"));
    char *key = ks ? etcd_b64_decode(ks, &kl) : NULL, *val = etcd_b64_decode(vs ? vs : "", &vl);
    char src[400];
    int kind = key && strlen(key) == kl ? etcd_key_kind(t->prefix, key, src, sizeof src)
                                        : ETCD_KEY_OTHER;
    if (!val || kind == ETCD_KEY_OTHER) { /* mesh-destination skips it too */
      free(val);
    } else if (ok && !fn(ud, kind, key, kind == ETCD_KEY_MANIFEST ? key : src, val, vl)) {
      ok = false;
    }
    free(key);
  }
  json_decref(res);
  if (!ok) fprintf(stderr, "%s: etcd: not a range answer, or out of memory\n", t->prog);
  return ok;
}

/* libmesh proxy transport header: the bytes an outbound proxy sends first inside mTLS, written and parsed without I/O. */
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include <mesh/error.h>

#include "proxy_internal.h"

int mesh__proxy_header_write(uint16_t port, int h2, uint8_t *buf, size_t cap, size_t *len) {
  char json[48];
  int n = snprintf(json, sizeof json, h2 ? "{\"port\":%u,\"proto\":\"h2\"}" : "{\"port\":%u}",
                   (unsigned)port);
  if (port == 0 || n <= 0 || cap < (size_t)n + 2) return MESH_ERR_INVALID;
  buf[0] = (uint8_t)(n >> 8);
  buf[1] = (uint8_t)n;
  memcpy(buf + 2, json, (size_t)n);
  *len = (size_t)n + 2;
  return 0;
}

int mesh__proxy_header_parse(const uint8_t *buf, size_t len, size_t *consumed, uint16_t *port,
                             int *h2) {
  if (len < 2) return 1;
  size_t n = (size_t)buf[0] << 8 | buf[1];
  if (n == 0 || n > MESH_PROXY_HEADER_MAX) return MESH_ERR_PARSE;
  if (len < 2 + n) return 1;
  json_error_t je;
  json_t *j = json_loadb((const char *)buf + 2, n, JSON_REJECT_DUPLICATES, &je);
  json_t *p = json_is_object(j) ? json_object_get(j, "port") : NULL;
  json_int_t v = json_is_integer(p) ? json_integer_value(p) : 0;
  /* proto names the session protocol that follows; absent: opaque bytes. */
  json_t *proto = json_is_object(j) ? json_object_get(j, "proto") : NULL;
  int is_h2 = proto && json_is_string(proto) && strcmp(json_string_value(proto), "h2") == 0;
  int bad_proto = proto && !is_h2;
  json_decref(j);
  if (v < 1 || v > 65535 || bad_proto) return MESH_ERR_PARSE;
  *port = (uint16_t)v;
  *h2 = is_h2;
  *consumed = 2 + n;
  return 0;
}

/* libmesh annotations internals: Linkerd's retry.linkerd.io and timeout.linkerd.io annotations on a Service, parsed once for the store (validation) and the proxy (policy). */
#ifndef MESH_ANNOTATIONS_INTERNAL_H
#define MESH_ANNOTATIONS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* The annotation names (Linkerd 2.16+). */
#define MESH_ANN_RETRY_HTTP "retry.linkerd.io/http"
#define MESH_ANN_RETRY_GRPC "retry.linkerd.io/grpc"
#define MESH_ANN_RETRY_LIMIT "retry.linkerd.io/limit"
#define MESH_ANN_RETRY_TIMEOUT "retry.linkerd.io/timeout"
#define MESH_ANN_TIMEOUT_REQUEST "timeout.linkerd.io/request"
#define MESH_ANN_TIMEOUT_RESPONSE "timeout.linkerd.io/response"
#define MESH_ANN_TIMEOUT_IDLE "timeout.linkerd.io/idle"

/* Retries at most, whatever the limit says (the proxy's own bound). */
#define MESH_ANN_LIMIT_MAX 9u
/* Linkerd's default retry.linkerd.io/limit. */
#define MESH_ANN_LIMIT_DEFAULT 1u

/* What a Service's annotations ask of the client proxy: retry responses
 * whose HTTP status is in http (a bit per code, 100..599) or whose gRPC
 * status is in grpc (a bit per code), at most limit times, each attempt cut
 * after retry_timeout_ms (retryable); the whole exchange cut after
 * request_ms, a response head after response_ms of an attempt, a stream
 * idle for idle_ms (not retryable). A 0 duration is "none". Plain data:
 * copied freely, used by one thread at a time. */
typedef struct {
  uint64_t http[10]; /* bit s % 64 of word s / 64: status s is retried */
  uint32_t grpc;     /* bit c: gRPC status c is retried */
  uint32_t limit;
  uint64_t retry_timeout_ms, request_ms, response_ms, idle_ms;
  unsigned has_retry : 1, has_timeout : 1; /* some retry.* / timeout.* annotation was given */
} mesh__ann;

/* An empty policy (limit at Linkerd's default: 1). */
void mesh__ann_init(mesh__ann *a);
/* 1 when key is one of the annotations above, 0 otherwise (others are
 * not ours: ignored). */
int mesh__ann_known(const char *key);
/* Apply one annotation. 0; MESH_ERR_PARSE with why[0..cap) saying what is
 * wrong with the value (or that a key in the retry.linkerd.io/ or
 * timeout.linkerd.io/ namespace is not one Linkerd defines); 1 when key is
 * in neither namespace (ignored). a is unchanged on error. */
int mesh__ann_set(mesh__ann *a, const char *key, const char *value, char *why, size_t cap);
/* Whether an attempt's answer is to be retried: its HTTP status, its
 * gRPC status (-1 when none). */
int mesh__ann_retryable(const mesh__ann *a, uint32_t status, int32_t grpc);
/* A Go-style duration with a unit ("300ms", "5s", "1m", "1h", "1m30s"),
 * in ms; MESH_ERR_PARSE for anything else (a bare number, a negative one,
 * over 24 h). */
int mesh__ann_duration(const char *s, uint64_t *ms);
/* The delay before retry n (0: the first): exponential backoff 25 ms ..
 * 250 ms with full jitter (Linkerd's), from the caller's random bits. */
uint64_t mesh__ann_backoff_ms(uint32_t n, uint32_t rnd);

#endif

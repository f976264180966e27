/* daemons' shared log: one format for every daemon, so their logs read and grep alike. */
#include "daemon_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include <mesh/ctx.h>

static void vlog(const char *level, const char *prefix, const char *fmt, va_list ap) {
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  struct tm tm;
  gmtime_r(&now.tv_sec, &tm);
  char ts[32];
  strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
  /* One fprintf a part, but stderr is unbuffered and each daemon logs from
   * one thread: lines do not interleave. */
  fprintf(stderr, "%s.%03ldZ %-5s %s", ts, now.tv_nsec / 1000000, level, prefix ? prefix : "");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
}

void daemon_log(const char *level, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vlog(level, NULL, fmt, ap);
  va_end(ap);
}

static void lib_line(const char *level, const char *prefix, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void lib_line(const char *level, const char *prefix, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vlog(level, prefix, fmt, ap);
  va_end(ap);
}

void daemon_log_lib(void *ud, int level, const char *line) {
  const char *l = level <= MESH_LOG_ERROR  ? "ERROR"
                  : level <= MESH_LOG_WARN ? "WARN"
                  : level <= MESH_LOG_INFO ? "INFO"
                                           : "DEBUG";
  lib_line(l, ud, "%s", line);
}

/* The daemons' one log format: a line per message on standard error,
 * "2026-01-02T03:04:05.678Z LEVEL text", UTC with milliseconds. */
#ifndef DAEMON_LOG_H
#define DAEMON_LOG_H

/* level: "ERROR", "WARN", "INFO" or "DEBUG". */
void daemon_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A mesh_log_fn for mesh_ctx_set_log: libmesh's lines at their level, after
 * the prefix ud (a const char *, e.g. "meshd: "; NULL: none). */
void daemon_log_lib(void *ud, int level, const char *line);

#endif

/* The daemons' numeric flags: one way to read "--name N" within bounds. */
#ifndef DAEMON_FLAG_H
#define DAEMON_FLAG_H

#include <stdbool.h>

/* arg as a decimal from min to max into *out; false after saying
 * "PROG: --FLAG is MIN to MAX" on standard error (*out unchanged). */
bool daemon_flag_long(const char *prog, const char *flag, const char *arg, long min, long max,
                      long *out);

#endif

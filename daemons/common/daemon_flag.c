/* Numeric command-line flags, checked against their bounds. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "daemon_flag.h"

bool daemon_flag_long(const char *prog, const char *flag, const char *arg, long min, long max,
                      long *out) {
  char *end;
  errno = 0;
  long v = strtol(arg, &end, 10);
  if (end == arg || *end || errno || v < min || v > max) {
    fprintf(stderr, "%s: --%s is %ld to %ld\n", prog, flag, min, max);
    return false;
  }
  *out = v;
  return true;
}

/* Fuzz target: Go durations and Kubernetes quantities, as manifests spell them. */
#include "node_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint64_t ns;
  int64_t milli;
  const char *why = NULL;
  if (mesh__parse_duration_ns((const char *)data, size, &ns, &why) < 0 && !why) __builtin_trap();
  why = NULL;
  if (mesh__parse_quantity_milli((const char *)data, size, &milli, &why) < 0 && !why) __builtin_trap();
  return 0;
}

/* Fuzz target: mesh-viz's reader of the Prometheus text format, as a scraped proxy could answer. */
#include <stdio.h>
#include <string.h>

#include "viz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Every name and value the parser hands out must be a string within its bounds. */
static bool check(void *ud, const char *name, const viz_label *labels, size_t nl, double value, char *why,
                  size_t wsize) {
  if (strlen(name) > VIZ_PROM_MAX_NAME || nl > VIZ_PROM_MAX_LABELS) __builtin_trap();
  for (size_t i = 0; i < nl; i++)
    if (strlen(labels[i].name) > VIZ_PROM_MAX_NAME || strlen(labels[i].value) > VIZ_PROM_MAX_VALUE)
      __builtin_trap();
  return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char why[256] = "";
  if (viz_prom_parse((const char *)data, size, check, NULL, why, sizeof why) < 0 && !why[0]) __builtin_trap();
  /* The histogram and duration readers take what a scrape and a query give them. */
  if (size >= 2 * 4 * sizeof(double)) {
    double les[4], counts[4];
    memcpy(les, data, sizeof les);
    memcpy(counts, data + sizeof les, sizeof counts);
    (void)viz_histogram_quantile(0.99, les, counts, 4);
  }
  char dur[64];
  size_t n = size < sizeof dur - 1 ? size : sizeof dur - 1;
  memcpy(dur, data, n);
  dur[n] = '\0';
  uint64_t ms;
  if (viz_parse_duration(dur, 86400000, &ms) && ms > 86400000) __builtin_trap();
  return 0;
}

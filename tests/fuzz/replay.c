/* Runs a fuzz target once over each file (or each file of each directory)
 * named on the command line: the corpus as a regression test, in builds
 * without libFuzzer. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay(const char *path) {
  struct stat st;
  if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
    DIR *d = opendir(path);
    if (!d) return perror(path), -1;
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d))) {
      if (e->d_name[0] == '.') continue;
      char sub[4096];
      snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
      int k = replay(sub);
      if (k < 0) return closedir(d), -1;
      n += k;
    }
    closedir(d);
    return n;
  }
  FILE *f = fopen(path, "rb");
  if (!f) return perror(path), -1;
  uint8_t *buf = NULL;
  size_t len = 0, cap = 0, n;
  do {
    if (len == cap) {
      cap = cap ? cap * 2 : 65536;
      uint8_t *nb = realloc(buf, cap);
      if (!nb) return fclose(f), free(buf), -1;
      buf = nb;
    }
    n = fread(buf + len, 1, cap - len, f);
    len += n;
  } while (n > 0);
  fclose(f);
  LLVMFuzzerTestOneInput(buf, len);
  free(buf);
  return 1;
}

int main(int argc, char **argv) {
  int total = 0;
  for (int i = 1; i < argc; i++) {
    int n = replay(argv[i]);
    if (n < 0) return 1;
    total += n;
  }
  printf("replayed %d inputs\n", total);
  return total > 0 ? 0 : 1;
}


/* 100,000 hugemm_alloc calls of 4K under `ulimit -n 1024` (set in the process), with the
 * runtime's kernel pins on: they share one io_uring instance, a registered buffer per 2M
 * pool extent. Before the kernel pin table, each allocation held a ring of its own and
 * the program failed near the thousandth with "Too many open files". Exits 77 (skip)
 * when the huge pages are not free, unless HUGEMM_REQUIRE_HUGEPAGES=1. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "hugemm/hugemm.h"

enum { kCount = 100000 };

static int OpenFds(void) {
  DIR* d = opendir("/proc/self/fd");
  int n = 0;
  while (d && readdir(d)) ++n;
  if (d) closedir(d);
  return n - 3; /* ".", ".." and the directory itself */
}

int main(void) {
  /* Debian's default soft limit, set here so the test holds however it is started. */
  struct rlimit lim;
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0) return 1;
  if (lim.rlim_cur > 1024) {
    lim.rlim_cur = 1024;
    if (setrlimit(RLIMIT_NOFILE, &lim) != 0) {
      perror("setrlimit(RLIMIT_NOFILE, 1024)");
      return 1;
    }
  }
  hugemm_runtime* rt = NULL;
  if (hugemm_open(NULL, &rt) != 0) {
    fprintf(stderr, "hugemm_open: %s\n", hugemm_last_error());
    return 1;
  }
  const int fds_before = OpenFds();
  void** bufs = calloc(kCount, sizeof(*bufs));
  for (int i = 0; i < kCount; ++i) {
    hugemm_buffer b;
    int rc = hugemm_alloc(rt, 4096, NULL, 0, &b);
    if (rc == -ENOMEM && strstr(hugemm_last_error(), "no free") != NULL) {
      const char* req = getenv("HUGEMM_REQUIRE_HUGEPAGES");
      printf("alloc_many_test: huge pages ran out at %d: %s\n", i, hugemm_last_error());
      hugemm_close(rt);
      free(bufs);
      return req && strcmp(req, "1") == 0 ? 1 : 77;
    }
    if (rc != 0) {
      fprintf(stderr, "hugemm_alloc #%d: %s\n", i, hugemm_last_error());
      return 1;
    }
    bufs[i] = b.data;
  }
  const int fds_after = OpenFds();
  int failed = 0;
  if (fds_after != fds_before) {
    fprintf(stderr, "descriptors: %d before the allocations, %d after\n", fds_before, fds_after);
    failed = 1;
  }
  for (int i = 0; i < kCount; ++i) {
    if (hugemm_free(rt, bufs[i]) != 0) {
      fprintf(stderr, "hugemm_free #%d: %s\n", i, hugemm_last_error());
      failed = 1;
      break;
    }
  }
  free(bufs);
  hugemm_close(rt);
  printf("%d allocations of 4K, %d descriptors open throughout: %s\n", kCount, fds_after,
         failed ? "FAILED" : "ok");
  return failed;
}

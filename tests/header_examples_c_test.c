/* The usage examples at the top of hugemm.h and hugemm_io.h, line for line, as a plain C99
 * program copies them (only what a comment leaves out, such as die() or the file, is set
 * up around them), linked against the shared libhugemm: each does what its comment says,
 * and the process has its descriptors and mappings back afterwards. Keep each in step with
 * its header. Prints "N passed, N failed"; exits 77 (skip) when the huge pages are not
 * free, unless HUGEMM_REQUIRE_HUGEPAGES=1. */
#define _GNU_SOURCE /* O_DIRECT */
#include <dirent.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "c_check.h"
#include "hugemm/hugemm.h"
#include "hugemm/hugemm_io.h"

static void die(const char* message) {
  fprintf(stderr, "died: %s\n", message);
  exit(1);
}

/* This process's mappings of huge pages and io_uring rings (the others come and go with
 * malloc and, under a sanitizer, its own bookkeeping). */
static int CountMappings(void) {
  static const char* const kKinds[] = {"/memfd:hugemm-", "anon_hugepage", "/dev/hugepages",
                                       "io_uring"};
  FILE* f = fopen("/proc/self/maps", "r");
  char line[4096];
  int n = 0;
  if (f == NULL) return -1;
  while (fgets(line, sizeof(line), f) != NULL) {
    for (size_t i = 0; i < sizeof(kKinds) / sizeof(kKinds[0]); ++i) {
      if (strstr(line, kKinds[i]) != NULL) {
        ++n;
        break;
      }
    }
  }
  fclose(f);
  return n;
}

static int CountFds(void) {
  DIR* d = opendir("/proc/self/fd");
  int n = 0;
  if (d == NULL) return -1;
  while (readdir(d) != NULL) ++n;
  closedir(d);
  return n;
}

/* hugemm.h: 1 GiB of 2M pages pinned as 512 folio spans, then let go. */
static void HugemmH(void) {
  const int fds = CountFds(), maps = CountMappings();

  /* clang-format off */
  hugemm_runtime *rt;
  if (hugemm_open(NULL, &rt) < 0) die(hugemm_last_error());
  hugemm_buffer buf;
  hugemm_map_buffer(rt, 1 << 30, NULL, &buf);          // 512 x 2M hugetlb folios
  hugemm_folio_span spans[512];
  long n = hugemm_pin_folios(rt, buf.data, buf.size, HUGEMM_PIN | HUGEMM_WRITE,
                             spans, 512);
  /* clang-format on */
  /* ... spans[i] covers spans[i].pages 4K pages, in address order from buf.data: give
   *     the device the PFN of each (hugemm_translate of its first byte), ... */
  CHECK(n == 512);
  CHECK(buf.folio_size == 2u << 20);
  char* at = buf.data;
  for (long i = 0; i < n; ++i) {
    hugemm_translation t;
    CHECK(spans[i].first_page == 0 && spans[i].pages == 512);
    CHECK(hugemm_translate(rt, at, 0, &t) == 0 && t.folio == spans[i].folio && t.pfn != UINT64_MAX);
    at += (size_t)spans[i].pages << 12;
  }
  CHECK(hugemm_maybe_dma_pinned(rt, buf.data) == 1);
  /* clang-format off */
  hugemm_unpin_folios(rt, spans, n, HUGEMM_PIN, 1);
  /* clang-format on */
  CHECK(hugemm_maybe_dma_pinned(rt, buf.data) == 0);
  hugemm_free(rt, buf.data);
  hugemm_close(rt);

  CHECK(CountFds() == fds);
  CHECK(CountMappings() == maps);
}

/* hugemm_io.h: an O_DIRECT read into memory freed while the read is in flight. */
static void HugemmIoH(const char* path) {
  /* The pool's extent stays with the runtime until it closes: count around it all. */
  const int fds = CountFds(), maps = CountMappings();
  int fd = open(path, O_RDONLY | O_DIRECT);
  CHECK(fd >= 0);
  const uint64_t offset = 0, my_tag = 0x7a6;
  hugemm_runtime* rt;
  if (hugemm_open(NULL, &rt) < 0) die(hugemm_last_error());

  /* clang-format off */
  struct io_uring ring;
  io_uring_queue_init(64, &ring, 0);
  hugemm_io *io;
  hugemm_io_attach(rt, ring.ring_fd, NULL, &io);
  hugemm_buffer buf;
  hugemm_alloc(rt, 128 << 10, NULL, 0, &buf);
  struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
  hugemm_io_prep_read(io, sqe, fd, buf.data, 128 << 10, offset, my_tag);  // READ_FIXED, pinned
  io_uring_submit(&ring);
  /* ... hugemm_free(rt, buf.data) is safe now: the memory waits for the completion ... */
  /* clang-format on */
  CHECK(hugemm_free(rt, buf.data) == 0);
  /* clang-format off */
  struct io_uring_cqe *cqe;
  io_uring_wait_cqe(&ring, &cqe);
  /* clang-format on */
  CHECK(cqe->res == 128 << 10);
  const unsigned char* got = buf.data; /* pinned until the completion is reaped */
  int same = 1;
  for (size_t i = 0; i < (128u << 10); ++i) same &= got[i] == (unsigned char)(i * 7 + 1);
  CHECK(same);
  /* clang-format off */
  uint64_t tag;
  hugemm_io_complete(io, cqe, &tag);                      // unpinned, my_tag back
  io_uring_cqe_seen(&ring, cqe);
  hugemm_io_detach(io);                                   // before io_uring_queue_exit
  /* clang-format on */
  io_uring_queue_exit(&ring);

  CHECK(tag == my_tag);
  hugemm_close(rt);
  close(fd);
  CHECK(CountFds() == fds);
  CHECK(CountMappings() == maps);
}

static long FreePages(const char* dir) {
  char path[128];
  snprintf(path, sizeof(path), "/sys/kernel/mm/hugepages/%s/free_hugepages", dir);
  FILE* f = fopen(path, "r");
  long n = 0;
  if (f == NULL) return 0;
  if (fscanf(f, "%ld", &n) != 1) n = 0;
  fclose(f);
  return n;
}

int main(void) {
  if (FreePages("hugepages-2048kB") < 520) {
    const char* require = getenv("HUGEMM_REQUIRE_HUGEPAGES");
    fprintf(stderr, "needs 520 free 2M huge pages\n");
    return require != NULL && strcmp(require, "1") == 0 ? 1 : 77;
  }
  HugemmH();

  /* A file on disk (the current directory: the build tree), 128 KiB of a pattern. */
  char path[] = "header-examples-c-XXXXXX";
  int w = mkstemp(path);
  CHECK(w >= 0);
  static unsigned char pattern[128 << 10];
  for (size_t i = 0; i < sizeof(pattern); ++i) pattern[i] = (unsigned char)(i * 7 + 1);
  CHECK(write(w, pattern, sizeof(pattern)) == (ssize_t)sizeof(pattern));
  fsync(w);
  close(w);
  HugemmIoH(path);
  unlink(path);

  printf("%d passed, %d failed\n", passed, failed);
  return failed != 0;
}

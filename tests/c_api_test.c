/* The C API from plain C99: every entry point once on real huge pages, and bad input
 * answered with a negative errno and a message. Prints "N passed, N failed"; exits 77
 * (skip) when no 2M huge pages are free, unless HUGEMM_REQUIRE_HUGEPAGES=1. */
#define _GNU_SOURCE /* MAP_ANONYMOUS, MAP_HUGETLB */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "c_check.h"
#include "hugemm/hugemm.h"

/* Whether /proc/self/maps lists a mapping holding `addr`: a freed buffer's huge pages
 * stay mapped while pinned and go back to the kernel with the last unpin. */
static int mapped_in_process(const void* addr) {
  FILE* maps = fopen("/proc/self/maps", "r");
  char line[512];
  int found = 0;
  if (maps == NULL) return -1;
  while (!found && fgets(line, sizeof(line), maps) != NULL) {
    unsigned long lo, hi;
    if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && (uintptr_t)addr >= lo && (uintptr_t)addr < hi) {
      found = 1;
    }
  }
  fclose(maps);
  return found;
}

/* The file /proc/self/maps names for the mapping holding `addr`, into path[size]. */
static int mapped_file(const void* addr, char* path, size_t size) {
  FILE* maps = fopen("/proc/self/maps", "r");
  char line[768];
  int found = 0;
  if (maps == NULL) return 0;
  while (!found && fgets(line, sizeof(line), maps) != NULL) {
    unsigned long lo, hi;
    char file[512];
    if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %511[^\n]", &lo, &hi, file) == 3 &&
        (uintptr_t)addr >= lo && (uintptr_t)addr < hi && strlen(file) < size) {
      strcpy(path, file);
      found = 1;
    }
  }
  fclose(maps);
  return found;
}

/* In a child, so that what it leaves stays out of this process: a buffer pinned at
 * hugemm_close stays mapped (a device may still use it). Exits 0 when it did. */
static void pinned_at_close(void) {
  hugemm_options o = {HUGEMM_REFCOUNT_FOLIO, 0};
  hugemm_runtime* rt = NULL;
  hugemm_buffer buf;
  hugemm_page page;
  if (hugemm_open(&o, &rt) != 0 || hugemm_map_buffer(rt, 2u << 20, NULL, &buf) != 0 ||
      hugemm_pin_pages(rt, buf.data, 1, HUGEMM_PIN, &page) != 1) {
    _exit(2);
  }
  hugemm_close(rt);
  _exit(mapped_in_process(buf.data) == 1 ? 0 : 1);
}

static int starts, ends;
static void on_start(void* user, const void* addr, size_t length, int reason) {
  (void)addr;
  (void)length;
  (void)reason;
  ++*(int*)user;
  ++starts;
}
static void on_end(void* user, const void* addr, size_t length, int reason) {
  (void)user;
  (void)addr;
  (void)length;
  (void)reason;
  ++ends;
}

int main(void) {
  hugemm_runtime* rt = NULL;
  CHECK(hugemm_open(NULL, NULL) == -EINVAL);
  CHECK(strstr(hugemm_last_error(), "out is NULL") != NULL);
  hugemm_options bad = {7, 1};
  CHECK(hugemm_open(&bad, &rt) == -EINVAL && rt == NULL);
  CHECK(hugemm_open(NULL, &rt) == 0 && rt != NULL);

  const size_t len = 4u << 20; /* two 2M folios */
  hugemm_buffer buf;
  int rc = hugemm_map_buffer(rt, len, NULL, &buf);
  if (rc == -ENOMEM) {
    const char* req = getenv("HUGEMM_REQUIRE_HUGEPAGES");
    printf("c_api_test: no free 2M huge pages: %s\n", hugemm_last_error());
    hugemm_close(rt);
    return req && strcmp(req, "1") == 0 ? 1 : 77;
  }
  CHECK(rc == 0);
  CHECK(buf.size == len && buf.folio_size == (2u << 20));
  memset(buf.data, 0x5a, len);

  /* A page array over both folios: 1024 entries, one reference operation per folio. */
  hugemm_page* pages = calloc(1024, sizeof(*pages));
  long n = hugemm_pin_pages(rt, buf.data, 1024, HUGEMM_PIN | HUGEMM_WRITE, pages);
  CHECK(n == 1024);
  CHECK(hugemm_page_folio(pages[0]) != hugemm_page_folio(pages[600]));
  CHECK(hugemm_page_index(pages[600]) == 600 - 512);
  CHECK(hugemm_page_address(pages[600]) == (char*)buf.data + 600 * 4096);
  CHECK(hugemm_page_pfn(pages[1]) == hugemm_page_pfn(pages[0]) + 1);
  CHECK(sizeof(hugemm_page) == 8);
  CHECK(hugemm_maybe_dma_pinned(rt, (char*)buf.data + 4096) == 1);
  hugemm_folio_info info;
  CHECK(hugemm_folio_info_at(rt, buf.data, &info) == 0);
  CHECK(info.pincount == 512 && info.order == 9 && info.backing == HUGEMM_BACKING_HUGETLB);
  CHECK(hugemm_unpin_pages(rt, pages, (size_t)n, 1) == 2); /* one operation per folio */
  CHECK(hugemm_maybe_dma_pinned(rt, buf.data) == 0);
  CHECK(hugemm_folio_info_at(rt, buf.data, &info) == 0 && (info.flags & 1u) && info.pincount == 0);
  /* Unpinned twice: refused, and the mappings' references stay (the memory is still in use). */
  hugemm_folio_info before;
  CHECK(hugemm_folio_info_at(rt, buf.data, &before) == 0);
  CHECK(hugemm_unpin_pages(rt, pages, (size_t)n, 0) == -EFAULT);
  CHECK(strstr(hugemm_last_error(), "2 run(s)") != NULL);
  CHECK(hugemm_folio_info_at(rt, buf.data, &info) == 0 && info.refcount == before.refcount);
  memset(buf.data, 1, len);

  /* Folio spans: one per folio, starting mid-folio. */
  hugemm_folio_span spans[4];
  n = hugemm_pin_folios(rt, (char*)buf.data + 8192, len - 8192, HUGEMM_GET, spans, 4);
  CHECK(n == 2 && spans[0].first_page == 2 && spans[0].pages == 510 && spans[1].pages == 512);
  /* GET spans given back as PIN: refused, nothing taken; then as GET. */
  CHECK(hugemm_unpin_folios(rt, spans, (size_t)n, HUGEMM_PIN, 0) == -EFAULT);
  CHECK(strstr(hugemm_last_error(), "2 span(s) (0 given back)") != NULL);
  CHECK(hugemm_unpin_folios(rt, spans, (size_t)n, HUGEMM_GET, 0) == 2);
  CHECK(hugemm_folio_info_at(rt, buf.data, &info) == 0 && info.refcount == before.refcount);

  /* DMA segments, capped at 1M each, and the range unpin. */
  hugemm_dma_segment segs[16];
  n = hugemm_pin_segments(rt, buf.data, len, HUGEMM_PIN, 1u << 20, segs, 16);
  CHECK(n >= 4);
  hugemm_translation t;
  CHECK(hugemm_translate(rt, buf.data, 0, &t) == 0);
  CHECK(segs[0].phys_addr == t.pfn * 4096 && segs[0].length == (1u << 20));
  CHECK(t.level == 1 && t.leaf_bytes == (2u << 20));
  CHECK(hugemm_unpin_range(rt, buf.data, len, HUGEMM_PIN, 0) == 0);
  CHECK(hugemm_maybe_dma_pinned(rt, buf.data) == 0);

  /* A subscription hears the unmap when the buffer is freed. */
  hugemm_subscription* sub = NULL;
  const volatile uint64_t* seq = NULL;
  int mine = 0;
  CHECK(hugemm_subscribe(rt, buf.data, len, on_start, on_end, &mine, &sub, &seq) == 0);
  CHECK(seq != NULL && *seq == 0);
  CHECK(hugemm_free(rt, buf.data) == 0);
  CHECK(mine >= 1 && starts == ends && *seq != 0);
  hugemm_unsubscribe(sub);

  /* Bad input: a clear error, nothing else. */
  CHECK(hugemm_free(rt, buf.data) == -ENOENT);
  CHECK(strstr(hugemm_last_error(), "not the start of a hugemm buffer") != NULL);
  CHECK(hugemm_pin_pages(rt, buf.data, 1, HUGEMM_PIN | HUGEMM_GET, pages) == -EINVAL);
  CHECK(hugemm_pin_pages(rt, buf.data, 1, 1u << 30, pages) == -EINVAL);
  CHECK(hugemm_pin_pages(rt, buf.data, 1, HUGEMM_PIN, NULL) == -EINVAL);
  CHECK(hugemm_pin_pages(rt, buf.data, 1, HUGEMM_PIN, pages) < 0); /* freed: not mapped */
  CHECK(hugemm_translate(rt, buf.data, 0, &t) == -ENOENT);
  hugemm_buffer_options opts = {99, 0, -1, NULL};
  CHECK(hugemm_map_buffer(rt, len, &opts, &buf) == -EINVAL);
  opts.backing = HUGEMM_BACKING_HUGETLB;
  CHECK(hugemm_map_buffer(rt, 12345, &opts, &buf) == -EINVAL);
  CHECK(strstr(hugemm_last_error(), "not a positive multiple") != NULL);

  /* A segment pin outlives the buffer: hugemm_free unmaps it at once, and
   * hugemm_unpin_range over the pinned range still gives back exactly what the pin took,
   * after which the huge pages go back to the kernel. */
  CHECK(hugemm_map_buffer(rt, len, NULL, &buf) == 0);
  n = hugemm_pin_segments(rt, buf.data, len, HUGEMM_PIN | HUGEMM_WRITE, 0, segs, 16);
  CHECK(n == 2 || n == 1);
  CHECK(hugemm_free(rt, buf.data) == 0);
  CHECK(hugemm_translate(rt, buf.data, 0, &t) == -ENOENT);
  CHECK(mapped_in_process(buf.data) == 1); /* pinned: the memory stays */
  CHECK(hugemm_unpin_range(rt, buf.data, len, HUGEMM_PIN, 1) == 0);
  CHECK(mapped_in_process(buf.data) == 0); /* the last pin gone: back to the kernel */
  CHECK(hugemm_unpin_range(rt, buf.data, len, HUGEMM_PIN, 0) == -EFAULT);
  CHECK(strstr(hugemm_last_error(), "no longer mapped") != NULL);

  /* A partial segment pin is given back by the range it asked for, no more: room for one
   * 2M segment pins the first folio only, and unpinning the whole range leaves the
   * second folio's counts alone. */
  CHECK(hugemm_map_buffer(rt, len, NULL, &buf) == 0);
  n = hugemm_pin_segments(rt, buf.data, len, HUGEMM_PIN | HUGEMM_PARTIAL, 2u << 20, segs, 1);
  CHECK(n == 1 && segs[0].length == (2u << 20));
  CHECK(hugemm_folio_info_at(rt, (char*)buf.data + (2u << 20), &info) == 0);
  CHECK(info.pincount == 0 && info.refcount == 2);
  CHECK(hugemm_unpin_range(rt, buf.data, len, HUGEMM_PIN, 0) == 0);
  CHECK(hugemm_folio_info_at(rt, buf.data, &info) == 0 && info.pincount == 0);
  CHECK(info.refcount == 2); /* the owner's and the mapping's */
  CHECK(hugemm_folio_info_at(rt, (char*)buf.data + (2u << 20), &info) == 0);
  CHECK(info.pincount == 0 && info.refcount == 2);
  CHECK(hugemm_free(rt, buf.data) == 0);

  /* The allocator: a 64K folio, zeroed. */
  hugemm_buffer small;
  CHECK(hugemm_alloc(rt, 64 << 10, NULL, 0, &small) == 0);
  CHECK(small.size == (64u << 10) && ((unsigned char*)small.data)[100] == 0);
  n = hugemm_pin_pages(rt, small.data, 16, HUGEMM_PIN, pages);
  CHECK(n == 16);
  CHECK(hugemm_unpin_pages(rt, pages, 16, 0) == 1);
  CHECK(hugemm_free(rt, small.data) == 0);

  /* hugemm_unpin_range by the table counts what each folio holds: a 4K folio's pins
   * (kept in its refcount) are found, and no more references are given back than were
   * taken, beside the owner's and the mapping's. */
  CHECK(hugemm_alloc(rt, 4096, NULL, 0, &small) == 0);
  CHECK(hugemm_pin_pages(rt, small.data, 1, HUGEMM_PIN, pages) == 1);
  CHECK(hugemm_unpin_range(rt, small.data, 4096, HUGEMM_PIN, 0) == 0);
  CHECK(hugemm_maybe_dma_pinned(rt, small.data) == 0);
  CHECK(hugemm_unpin_range(rt, small.data, 4096, HUGEMM_PIN, 0) == -EFAULT);
  CHECK(hugemm_pin_pages(rt, small.data, 1, HUGEMM_GET, pages) == 1);
  CHECK(hugemm_unpin_range(rt, small.data, 4096, HUGEMM_GET, 0) == 0);
  CHECK(hugemm_unpin_range(rt, small.data, 4096, HUGEMM_GET, 0) == -EFAULT);
  CHECK(hugemm_folio_info_at(rt, small.data, &info) == 0 && info.refcount == 2);
  CHECK(hugemm_free(rt, small.data) == 0);
  /* Every allocation is freed: hugemm_trim gives the pool's extent back (the cached folios
   * first), and a second trim has nothing left to give. */
  CHECK(hugemm_trim(rt) >= (long)(2 << 20));
  CHECK(hugemm_trim(rt) == 0);
  CHECK(hugemm_trim(NULL) == -EINVAL);
  CHECK(hugemm_map_buffer(rt, len, NULL, &buf) == 0);
  CHECK(hugemm_pin_pages(rt, buf.data, 1, HUGEMM_GET, pages) == 1);
  CHECK(hugemm_unpin_range(rt, buf.data, 4096, HUGEMM_GET, 0) == 0);
  CHECK(hugemm_unpin_range(rt, buf.data, 4096, HUGEMM_GET, 0) == -EFAULT);
  CHECK(strstr(hugemm_last_error(), "holds 0 references") != NULL);
  CHECK(hugemm_folio_info_at(rt, buf.data, &info) == 0 && info.refcount == 2);
  CHECK(hugemm_free(rt, buf.data) == 0);

  /* Memory the program mapped itself, then made read-only: a device may read it through
   * a pin, never write it. */
  void* ext = mmap(NULL, 2u << 20, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
  CHECK(ext != MAP_FAILED);
  if (ext != MAP_FAILED) {
    uint64_t id = 0;
    CHECK(mprotect(ext, 2u << 20, PROT_READ) == 0);
    CHECK(hugemm_register_external(rt, ext, 2u << 20, &id) == 0);
    CHECK(hugemm_pin_pages(rt, ext, 16, HUGEMM_PIN | HUGEMM_WRITE, pages) == -EPERM);
    CHECK(strstr(hugemm_last_error(), "read-only") != NULL);
    CHECK(hugemm_pin_pages(rt, ext, 16, HUGEMM_PIN, pages) == 16);
    /* Pinned: unregister is refused and changes nothing. */
    CHECK(hugemm_unregister_external(rt, id) == -EFAULT);
    CHECK(strstr(hugemm_last_error(), "pinned") != NULL);
    CHECK(hugemm_translate(rt, (char*)ext + 8192, 0, &t) == 0 && t.leaf_bytes == (2u << 20));
    CHECK(hugemm_folio_info_at(rt, ext, &info) == 0 && info.pincount == 16);
    CHECK(hugemm_pin_pages(rt, (char*)ext + (1u << 20), 10, HUGEMM_PIN, pages + 16) == 10);
    CHECK(hugemm_unpin_pages(rt, pages, 26, 0) == 1);
    CHECK(hugemm_unregister_external(rt, id) == 0);
    CHECK(hugemm_translate(rt, ext, 0, &t) == -ENOENT);
    munmap(ext, 2u << 20);
  }

  /* A named hugetlbfs file outlives its buffer: mapped again by name after hugemm_free it
   * holds what was written, until the program unlinks it. (Skipped without a mount.) */
  {
    char name[64], path[512] = "";
    hugemm_buffer_options named = {HUGEMM_BACKING_HUGETLBFS, 0, -1, name};
    snprintf(name, sizeof(name), "hugemm-c-api-test-%d", (int)getpid());
    rc = hugemm_map_buffer(rt, 2u << 20, &named, &buf);
    if (rc != -ENOENT) {
      CHECK(rc == 0);
      CHECK(mapped_file(buf.data, path, sizeof(path)) && strstr(path, name) != NULL);
      ((volatile char*)buf.data)[4096] = 0x5a;
      CHECK(hugemm_free(rt, buf.data) == 0);
      CHECK(access(path, F_OK) == 0);
      CHECK(hugemm_map_buffer(rt, 2u << 20, &named, &buf) == 0);
      CHECK(((volatile char*)buf.data)[4096] == 0x5a);
      CHECK(hugemm_free(rt, buf.data) == 0);
      CHECK(path[0] != '\0' && unlink(path) == 0);
    }
  }

  /* The program changes a buffer behind the runtime's back (see hugemm_free): a page it
   * drops with MADV_DONTNEED comes back with its contents, and one it unmaps is still
   * translated and pinned as the frame the table recorded, which the kernel pin keeps
   * this process's until hugemm_free; then the buffer is gone from the table.
   * hugemm_verify agrees with the kernel before the unmap and names the unmapped page
   * after it. */
  {
    hugemm_translation before, after;
    hugemm_verify_report report;
    CHECK(hugemm_map_buffer(rt, len, NULL, &buf) == 0);
    memset(buf.data, 0x5a, len);
    char* second = (char*)buf.data + (2u << 20);
    memset(&report, 0xff, sizeof(report));
    CHECK(hugemm_verify(rt, buf.data, len, &report) == 0);
    CHECK(report.leaves_checked == 2 && report.mismatches == 0);
    CHECK(report.first_mismatch == NULL && report.pfns_hidden == 0);
    CHECK(report.pfns_checked == 1 && report.flags_checked == 1);
    CHECK(hugemm_last_error()[0] == '\0');
    CHECK(hugemm_translate(rt, second, 0, &before) == 0);
    CHECK(madvise(buf.data, 2u << 20, MADV_DONTNEED) == 0);
    CHECK(((volatile char*)buf.data)[100] == 0x5a);
    CHECK(hugemm_verify(rt, buf.data, len, NULL) == 0);
    CHECK(munmap(second, 2u << 20) == 0);
    CHECK(hugemm_verify(rt, buf.data, len, &report) == 1);
    CHECK(report.leaves_checked == 2 && report.mismatches == 1);
    CHECK(report.first_mismatch == second);
    CHECK(strstr(hugemm_last_error(), "the kernel maps nothing here") != NULL);
    CHECK(hugemm_verify(rt, buf.data, 2u << 20, &report) == 0 && report.leaves_checked == 1);
    CHECK(hugemm_translate(rt, second, 0, &after) == 0 && after.pfn == before.pfn);
    CHECK(hugemm_pin_pages(rt, second, 1, HUGEMM_PIN, pages) == 1);
    CHECK(hugemm_unpin_pages(rt, pages, 1, 0) == 1);
    CHECK(hugemm_free(rt, buf.data) == 0);
    CHECK(hugemm_translate(rt, buf.data, 0, &after) == -ENOENT);
    CHECK(hugemm_translate(rt, second, 0, &after) == -ENOENT);
    CHECK(hugemm_verify(rt, buf.data, len, &report) == -ENOENT);
  }

  /* A child of fork() has none of the pools' memory: hugemm_alloc there is -EFAULT, even
   * for a folio freed into the parent's pool before the fork. */
  {
    hugemm_buffer freed;
    int status = 0;
    CHECK(hugemm_alloc(rt, 4096, NULL, 0, &freed) == 0);
    CHECK(hugemm_free(rt, freed.data) == 0);
    const pid_t child = fork();
    if (child == 0) {
      hugemm_buffer b;
      _exit(hugemm_alloc(rt, 4096, NULL, 1, &b) == -EFAULT ? 0 : 1);
    }
    CHECK(child > 0 && waitpid(child, &status, 0) == child);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }

  free(pages);
  hugemm_close(rt);
  hugemm_close(NULL);

  {
    int status = 0;
    const pid_t child = fork();
    if (child == 0) pinned_at_close();
    CHECK(child > 0 && waitpid(child, &status, 0) == child);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}

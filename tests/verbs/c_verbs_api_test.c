/* The verbs C API from plain C99, linked against libhugemm-verbs: every entry point
 * answers bad input with a negative errno and a message, and keeps nothing. This machine
 * has no RDMA device, so registrations themselves are exercised in the VM (the rdma
 * example and rdma_vm_test). Prints "N passed, N failed"; exits 77 (skip) when no 2M huge
 * pages are free, unless HUGEMM_REQUIRE_HUGEPAGES=1. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../c_check.h"
#include "hugemm/hugemm_verbs.h"

#define HAS(text) (strstr(hugemm_last_error(), (text)) != NULL)

int main(void) {
  hugemm_runtime* rt = NULL;
  CHECK(hugemm_open(NULL, &rt) == 0);
  hugemm_buffer buf;
  int rc = hugemm_map_buffer(rt, 2u << 20, NULL, &buf);
  if (rc == -ENOMEM) {
    const char* req = getenv("HUGEMM_REQUIRE_HUGEPAGES");
    printf("c_verbs_api_test: no free 2M huge pages: %s\n", hugemm_last_error());
    hugemm_close(rt);
    return req && strcmp(req, "1") == 0 ? 1 : 77;
  }
  CHECK(rc == 0);

  /* Creating a cache. */
  hugemm_mr_cache* cache = (hugemm_mr_cache*)1;
  CHECK(hugemm_mr_cache_create(rt, NULL, NULL) == -EINVAL && HAS("out is NULL"));
  CHECK(hugemm_mr_cache_create(NULL, NULL, &cache) == -EINVAL && cache == NULL);
  CHECK(HAS("NULL runtime"));
  hugemm_mr_cache_options bad = {0, 0, 7};
  CHECK(hugemm_mr_cache_create(rt, &bad, &cache) == -EINVAL && HAS("unknown scope 7"));
  hugemm_mr_cache_options defaults = {0, 0, HUGEMM_MR_SCOPE_BUFFER}; /* 0 = the defaults */
  CHECK(hugemm_mr_cache_create(rt, &defaults, &cache) == 0 && cache != NULL);
  CHECK(strcmp(hugemm_last_error(), "") == 0);

  /* Getting a registration: refused before any device is asked. */
  struct ibv_pd* pd = (struct ibv_pd*)calloc(1, sizeof(struct ibv_pd)); /* never dereferenced */
  hugemm_mr* mr = (hugemm_mr*)1;
  const int rw = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE;
  CHECK(hugemm_mr_get(cache, pd, buf.data, 64, rw, NULL) == -EINVAL && HAS("out is NULL"));
  CHECK(hugemm_mr_get(NULL, pd, buf.data, 64, rw, &mr) == -EINVAL && mr == NULL);
  CHECK(hugemm_mr_get(cache, NULL, buf.data, 64, rw, &mr) == -EINVAL && HAS("pd is null"));
  CHECK(hugemm_mr_get(cache, pd, buf.data, 0, rw, &mr) == -EINVAL && HAS("empty range"));
  CHECK(hugemm_mr_get(cache, pd, (void*)(UINTPTR_MAX - 8), 64, rw, &mr) == -EINVAL);
  CHECK(HAS("wraps"));
  CHECK(hugemm_mr_get(cache, pd, buf.data, 64, 1 << 12, &mr) == -EINVAL);
  CHECK(HAS("unknown access bits"));
  CHECK(hugemm_mr_get(cache, pd, buf.data, 64, IBV_ACCESS_ON_DEMAND, &mr) == -EINVAL);
  CHECK(HAS("ON_DEMAND"));
  CHECK(hugemm_mr_get(cache, pd, buf.data, 64, IBV_ACCESS_ZERO_BASED, &mr) == -EINVAL);
  CHECK(hugemm_mr_get(cache, pd, (char*)buf.data + 4096, buf.size, rw, &mr) == -EINVAL);
  CHECK(HAS("runs past the end of the buffer"));
  static char not_hugemm[4096];
  CHECK(hugemm_mr_get(cache, pd, not_hugemm, 64, rw, &mr) == -ENOENT && mr == NULL);
  CHECK(HAS("not memory of this runtime"));

  /* Nothing was registered or pinned by the refusals. */
  hugemm_mr_cache_stats stats;
  CHECK(hugemm_mr_cache_stats_get(cache, &stats) == 0);
  CHECK(stats.entries == 0 && stats.registrations == 0 && stats.held == 0);
  hugemm_folio_info info;
  CHECK(hugemm_folio_info_at(rt, buf.data, &info) == 0 && info.pincount == 0);
  CHECK(hugemm_mr_cache_flush(cache) == 0);

  /* NULL handles and caches. */
  CHECK(hugemm_mr_ibv(NULL) == NULL);
  CHECK(hugemm_mr_lkey(NULL) == 0 && hugemm_mr_rkey(NULL) == 0);
  hugemm_mr_put(NULL);
  CHECK(hugemm_mr_cache_flush(NULL) == -EINVAL && HAS("NULL cache"));
  CHECK(hugemm_mr_cache_stats_get(NULL, &stats) == -EINVAL);
  CHECK(hugemm_mr_cache_stats_get(cache, NULL) == -EINVAL);
  hugemm_mr_cache_destroy(NULL);

  hugemm_mr_cache_destroy(cache);

  /* hugemm_close destroys a cache still alive: the handle answers -EINVAL naming the
   * closed runtime, and hugemm_mr_cache_destroy frees it without touching the runtime. */
  hugemm_mr_cache* late = NULL;
  CHECK(hugemm_mr_cache_create(rt, NULL, &late) == 0 && late != NULL);
  CHECK(hugemm_free(rt, buf.data) == 0);
  hugemm_close(rt);
  CHECK(hugemm_mr_get(late, pd, buf.data, 64, rw, &mr) == -EINVAL && HAS("closed"));
  CHECK(hugemm_mr_cache_flush(late) == -EINVAL && HAS("closed"));
  CHECK(hugemm_mr_cache_stats_get(late, &stats) == -EINVAL);
  hugemm_mr_cache_destroy(late);
  free(pd);
  printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}

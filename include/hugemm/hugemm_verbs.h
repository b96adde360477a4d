/* hugemm verbs C API: a memory-registration cache for RDMA programs on hugemm memory
 * (the C face of hugemm/verbs.h, in libhugemm-verbs).
 *
 * Plain C99, with hugemm.h's conventions: a function that can fail returns 0 (or a
 * count) on success and a negative errno on failure, and hugemm_last_error() then names
 * what was wrong. Nothing here aborts on bad input, and no failed call keeps a
 * registration, a pin or a reference.
 *
 *   hugemm_mr_cache *cache;
 *   if (hugemm_mr_cache_create(rt, NULL, &cache) < 0) die(hugemm_last_error());
 *   hugemm_mr *mr;
 *   if (hugemm_mr_get(cache, pd, buf.data, len, IBV_ACCESS_LOCAL_WRITE, &mr) < 0)
 *     die(hugemm_last_error());
 *   sge.lkey = hugemm_mr_lkey(mr);  ... post, poll the completion ...
 *   hugemm_mr_put(mr);
 *   hugemm_mr_cache_destroy(cache);
 *
 * A miss registers the whole buffer or pool extent holding the address, so neighbouring
 * requests hit the same registration. When hugemm memory under a registration is freed,
 * unmapped, split, re-protected or made device-exclusive, the registration is dropped
 * (deregistered once no hugemm_mr holds it) and the next request registers anew. A held
 * hugemm_mr pins the memory under its bytes: a buffer freed meanwhile keeps its memory
 * until hugemm_mr_put. */
#ifndef HUGEMM_HUGEMM_VERBS_H_
#define HUGEMM_HUGEMM_VERBS_H_

#include <infiniband/verbs.h>
#include <stddef.h>
#include <stdint.h>

#include "hugemm/hugemm.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hugemm_mr_cache hugemm_mr_cache;
/* A registration held for a work request. */
typedef struct hugemm_mr hugemm_mr;

enum hugemm_mr_scope {
  HUGEMM_MR_SCOPE_EXTENT = 0, /* the buffer, or the pool extent an allocation came from
                               * (its rkey reaches every allocation of that extent) */
  HUGEMM_MR_SCOPE_BUFFER = 1  /* the buffer (one folio for hugemm_alloc) */
};

typedef struct hugemm_mr_cache_options {
  size_t max_entries; /* registrations kept at most; 0 = 1024 */
  uint64_t max_bytes; /* registered bytes kept at most; 0 = 64 GiB */
  int scope;          /* enum hugemm_mr_scope */
} hugemm_mr_cache_options;

/* A cache over `rt`'s memory. `options` may be NULL for the defaults. -EINVAL for an
 * unknown scope. hugemm_close destroys a cache still alive, as hugemm_mr_cache_destroy does:
 * the handle then answers -EINVAL to all but hugemm_mr_cache_destroy, which frees it. A
 * hugemm_mr still held at hugemm_close keeps its registration, and the memory under it
 * stays mapped (the device may still be using it), until its hugemm_mr_put: that
 * deregisters it, unpins, and the memory goes back. */
int hugemm_mr_cache_create(hugemm_runtime* rt, const hugemm_mr_cache_options* options,
                           hugemm_mr_cache** out);
/* Deregisters every registration no hugemm_mr holds (a held one goes with its last
 * hugemm_mr_put). NULL is ignored. */
void hugemm_mr_cache_destroy(hugemm_mr_cache* cache);

/* A registration on `pd` covering [addr, addr + length) with at least `access`
 * (IBV_ACCESS_* bits; not ON_DEMAND or ZERO_BASED), and a pin on the memory under those
 * bytes. -EINVAL bad arguments or a range past the end of its buffer; -ENOENT memory that
 * is not hugemm's; -EPERM write access to read-only memory; -EFAULT a device-exclusive
 * page; -ENOMEM the cache is full of held registrations, or the buffer (extent) alone is
 * larger than max_bytes; -EAGAIN the memory kept changing; -EFAULT in a child of fork()
 * of the process that made the cache, whose registrations and memory are the parent's
 * (hugemm.h: destroying the cache and putting a hugemm_mr there deregister nothing).
 * A registration the device refused answers with ibv_reg_mr's errno as -EINVAL (e.g.
 * IBV_ACCESS_REMOTE_WRITE without IBV_ACCESS_LOCAL_WRITE), -ENOMEM, -EFAULT or -EPERM
 * (EACCES too), any other as -EIO, and the message names the device and its error.
 * The registration stays in the cache after the last put: flush or destroy the cache
 * (after putting every hugemm_mr on `pd`) before ibv_dealloc_pd, which fails with EBUSY
 * while the device still holds a registration on the PD. */
int hugemm_mr_get(hugemm_mr_cache* cache, struct ibv_pd* pd, const void* addr, size_t length,
                  int access, hugemm_mr** out);
/* The registration (covering at least the bytes asked for) and its keys. */
struct ibv_mr* hugemm_mr_ibv(const hugemm_mr* mr);
uint32_t hugemm_mr_lkey(const hugemm_mr* mr);
uint32_t hugemm_mr_rkey(const hugemm_mr* mr);
/* Unpins and gives the registration back once the work request completed, and frees
 * `mr`: each hugemm_mr is put exactly once, and neither it nor its keys are used after
 * (a second put is a double free). NULL is ignored. */
void hugemm_mr_put(hugemm_mr* mr);

/* Deregisters every registration no hugemm_mr holds; returns how many. */
long hugemm_mr_cache_flush(hugemm_mr_cache* cache);

typedef struct hugemm_mr_cache_stats {
  uint64_t hits;
  uint64_t misses;
  uint64_t registrations;
  uint64_t deregistrations;
  uint64_t invalidations; /* dropped because their memory changed */
  uint64_t evictions;     /* dropped to make room */
  uint64_t entries;       /* registrations alive */
  uint64_t bytes;
  uint64_t held; /* of which some hugemm_mr holds */
} hugemm_mr_cache_stats;

int hugemm_mr_cache_stats_get(hugemm_mr_cache* cache, hugemm_mr_cache_stats* out);

#ifdef __cplusplus
}
#endif

#endif /* HUGEMM_HUGEMM_VERBS_H_ */

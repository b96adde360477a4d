// The verbs C API over hugemm::MrCache, with hugemm.h's conventions (c_bridge.h).
#include <cerrno>
#include <memory>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"
#include "hugemm/hugemm_verbs.h"
#include "hugemm/verbs.h"
#include "runtime/api/c_bridge.h"

struct hugemm_mr_cache {
  std::unique_ptr<hugemm::MrCache> cache;  // null once the runtime is closed
  hugemm_runtime* rt = nullptr;            // the runtime, until it is closed
};

struct hugemm_mr {
  hugemm::MrHandle handle;
};

namespace {

using hugemm::bridge::CApiFail;
using hugemm::bridge::CApiOk;

static_assert(sizeof(hugemm_mr_cache_stats) == 9 * sizeof(uint64_t));

int Closed(const char* fn) {
  return hugemm::bridge::CApiClosed(fn, "cache", "hugemm_mr_cache_destroy");
}

}  // namespace

extern "C" {

int hugemm_mr_cache_create(hugemm_runtime* rt, const hugemm_mr_cache_options* options,
                           hugemm_mr_cache** out) try {
  if (out == nullptr) return CApiFail(EINVAL, "hugemm_mr_cache_create: out is NULL");
  *out = nullptr;
  if (rt == nullptr) return CApiFail(EINVAL, "hugemm_mr_cache_create: NULL runtime");
  hugemm::MrCacheOptions o;
  if (options != nullptr) {
    if (options->max_entries != 0) o.max_entries = options->max_entries;
    if (options->max_bytes != 0) o.max_bytes = options->max_bytes;
    switch (options->scope) {
      case HUGEMM_MR_SCOPE_EXTENT:
        o.scope = hugemm::MrScope::kExtent;
        break;
      case HUGEMM_MR_SCOPE_BUFFER:
        o.scope = hugemm::MrScope::kBuffer;
        break;
      default:
        return CApiFail(EINVAL,
                        absl::StrCat("hugemm_mr_cache_create: unknown scope ", options->scope));
    }
  }
  absl::StatusOr<std::unique_ptr<hugemm::MrCache>> cache = hugemm::MrCache::Create(*rt->rt, o);
  if (!cache.ok()) return CApiFail(__func__, cache.status());
  auto* handle = new hugemm_mr_cache{std::move(*cache), rt};
  hugemm::bridge::CApiAdopt<&hugemm_mr_cache::cache>(rt, handle);
  *out = handle;
  return CApiOk();
}
HUGEMM_C_CATCH

void hugemm_mr_cache_destroy(hugemm_mr_cache* cache) try {
  hugemm::bridge::CApiRelease<&hugemm_mr_cache::cache>(cache);
}
HUGEMM_C_CATCH_VOID

int hugemm_mr_get(hugemm_mr_cache* cache, struct ibv_pd* pd, const void* addr, size_t length,
                  int access, hugemm_mr** out) try {
  if (out == nullptr) return CApiFail(EINVAL, "hugemm_mr_get: out is NULL");
  *out = nullptr;
  if (cache == nullptr) return CApiFail(EINVAL, "hugemm_mr_get: NULL cache");
  if (cache->cache == nullptr) return Closed("hugemm_mr_get");
  absl::StatusOr<hugemm::MrHandle> h = cache->cache->Get(pd, addr, length, access);
  if (!h.ok()) return CApiFail(__func__, h.status());
  auto* mr = new (std::nothrow) hugemm_mr{std::move(*h)};
  if (mr == nullptr) return CApiFail(ENOMEM, "hugemm_mr_get: out of memory");
  *out = mr;
  return CApiOk();
}
HUGEMM_C_CATCH

struct ibv_mr* hugemm_mr_ibv(const hugemm_mr* mr) {
  return mr != nullptr ? mr->handle.mr() : nullptr;
}

uint32_t hugemm_mr_lkey(const hugemm_mr* mr) { return mr != nullptr ? mr->handle.lkey() : 0; }

uint32_t hugemm_mr_rkey(const hugemm_mr* mr) { return mr != nullptr ? mr->handle.rkey() : 0; }

void hugemm_mr_put(hugemm_mr* mr) try { delete mr; }
HUGEMM_C_CATCH_VOID

long hugemm_mr_cache_flush(hugemm_mr_cache* cache) try {
  if (cache == nullptr) return CApiFail(EINVAL, "hugemm_mr_cache_flush: NULL cache");
  if (cache->cache == nullptr) return Closed("hugemm_mr_cache_flush");
  CApiOk();
  return static_cast<long>(cache->cache->Flush());
}
HUGEMM_C_CATCH

int hugemm_mr_cache_stats_get(hugemm_mr_cache* cache, hugemm_mr_cache_stats* out) try {
  if (cache == nullptr || out == nullptr) {
    return CApiFail(EINVAL, "hugemm_mr_cache_stats_get: NULL cache or out");
  }
  if (cache->cache == nullptr) return Closed("hugemm_mr_cache_stats_get");
  const hugemm::MrCacheStats s = cache->cache->Stats();
  *out = hugemm_mr_cache_stats{s.hits,          s.misses,    s.registrations, s.deregistrations,
                               s.invalidations, s.evictions, s.entries,       s.bytes,
                               s.held};
  return CApiOk();
}
HUGEMM_C_CATCH

}  // extern "C"

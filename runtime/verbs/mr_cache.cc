// hugemm::MrCache and hugemm::MrHandle: the public faces of the cache's core.
#include <utility>

#include "hugemm/verbs.h"
#include "runtime/util/format.h"
#include "runtime/verbs/cache_core.h"
#include "runtime/verbs/mr_entry.h"

namespace hugemm {

absl::StatusOr<std::unique_ptr<MrCache>> MrCache::Create(Runtime& runtime,
                                                         const MrCacheOptions& options) {
  if (options.max_entries == 0 || options.max_bytes == 0) {
    return absl::InvalidArgumentError(
        hugemm::Format("MrCache::Create: max_entries (%u) and max_bytes (%u) must be positive",
                       options.max_entries, options.max_bytes));
  }
  if (options.scope != MrScope::kExtent && options.scope != MrScope::kBuffer) {
    return absl::InvalidArgumentError(
        hugemm::Format("MrCache::Create: unknown scope %d", static_cast<int>(options.scope)));
  }
  return std::unique_ptr<MrCache>(
      new MrCache(std::make_unique<verbs_internal::CacheCore>(runtime, options)));
}

MrCache::MrCache(std::unique_ptr<verbs_internal::CacheCore> core) : core_(std::move(core)) {}

MrCache::~MrCache() = default;

absl::StatusOr<MrHandle> MrCache::Get(ibv_pd* pd, const void* addr, size_t length, int access) {
  return core_->Get(pd, addr, length, access);
}

size_t MrCache::Flush() { return core_->Flush(); }

MrCacheStats MrCache::Stats() const { return core_->Stats(); }

const MrCacheOptions& MrCache::options() const { return core_->options(); }

MrHandle::MrHandle(MrHandle&& other) noexcept { *this = std::move(other); }

MrHandle& MrHandle::operator=(MrHandle&& other) noexcept {
  if (this != &other) {
    Release();
    entry_ = std::exchange(other.entry_, nullptr);
    addr_ = other.addr_;
    length_ = other.length_;
    dirty_ = other.dirty_;
    spans_ = std::move(other.spans_);
    other.spans_.clear();
  }
  return *this;
}

ibv_mr* MrHandle::mr() const { return entry_ != nullptr ? entry_->mr : nullptr; }

void MrHandle::Release() { verbs_internal::CacheCore::Release(*this); }

}  // namespace hugemm

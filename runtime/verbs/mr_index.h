// The cache's address index: virtual address -> the registrations covering it, sharded so
// that a hit takes one shard's reader lock and nothing global.
//
// Keys are 2M blocks of address space: a registration is listed under every block it
// overlaps (a 1G registration under 512), so a lookup reads the one bucket of its
// address's block. Shards are picked by hashing the block number, so threads working on
// different buffers rarely meet on one lock.
#ifndef HUGEMM_RUNTIME_VERBS_MR_INDEX_H_
#define HUGEMM_RUNTIME_VERBS_MR_INDEX_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <shared_mutex>
#include <unordered_map>
#include <vector>

#include "absl/functional/function_ref.h"
#include "runtime/verbs/mr_entry.h"

namespace hugemm::verbs_internal {

// Thread safety: thread-safe. Insert and Erase take shard writer locks one shard at a
// time: a reader may find an entry in one block before a writer lists it in the next, so
// entries must be complete before Insert and stay alive until Erase returns.
class MrIndex {
 public:
  static constexpr int kBlockShift = 21;
  static constexpr int kShardBits = 6;

  MrIndex() = default;
  MrIndex(const MrIndex&) = delete;
  MrIndex& operator=(const MrIndex&) = delete;

  // Calls `accept` on the entries listed under addr's block, under that shard's reader
  // lock, until it returns true; returns that entry, or nullptr.
  MrEntry* Find(uintptr_t addr, absl::FunctionRef<bool(MrEntry*)> accept);
  // Counts a hit on addr's shard (one counter per shard: no line all threads write).
  void CountHit(uintptr_t addr) {
    shards_[ShardOf(addr >> kBlockShift)].hits.fetch_add(1, std::memory_order_relaxed);
  }
  // Lists the entry under every block it covers. Out of heap it throws having listed it
  // nowhere, provided no other Insert or Erase runs meanwhile (the cache's mutex orders
  // them).
  void Insert(MrEntry* entry);
  void Erase(MrEntry* entry);
  // Hits counted over all shards.
  uint64_t hits() const;

 private:
  struct alignas(64) Shard {
    std::shared_mutex mu;
    // Standard: abseil's tables are left broken by an allocation that throws.
    std::unordered_map<uint64_t, std::vector<MrEntry*>> buckets;
    std::atomic<uint64_t> hits{0};
  };
  static size_t ShardOf(uint64_t block) {
    return static_cast<size_t>((block * 0x9e3779b97f4a7c15ull) >> (64 - kShardBits));
  }
  template <typename Fn>
  void ForEachBlock(const MrEntry* entry, Fn fn);

  Shard shards_[size_t{1} << kShardBits];
};

}  // namespace hugemm::verbs_internal

#endif  // HUGEMM_RUNTIME_VERBS_MR_INDEX_H_

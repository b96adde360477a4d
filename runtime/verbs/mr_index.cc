// The sharded block index of registrations.
#include "runtime/verbs/mr_index.h"

#include <algorithm>
#include <mutex>

namespace hugemm::verbs_internal {

MrEntry* MrIndex::Find(uintptr_t addr, absl::FunctionRef<bool(MrEntry*)> accept) {
  const uint64_t block = addr >> kBlockShift;
  Shard& shard = shards_[ShardOf(block)];
  std::shared_lock<std::shared_mutex> lock(shard.mu);
  auto it = shard.buckets.find(block);
  if (it == shard.buckets.end()) return nullptr;
  for (MrEntry* e : it->second) {
    if (accept(e)) return e;
  }
  return nullptr;
}

template <typename Fn>
void MrIndex::ForEachBlock(const MrEntry* entry, Fn fn) {
  const uint64_t first = entry->start >> kBlockShift;
  const uint64_t last = (entry->start + entry->length - 1) >> kBlockShift;
  for (uint64_t block = first; block <= last; ++block) {
    Shard& shard = shards_[ShardOf(block)];
    std::unique_lock<std::shared_mutex> lock(shard.mu);
    fn(shard, block);
  }
}

void MrIndex::Insert(MrEntry* entry) {
  // Room first in every block's list, which may throw and shows readers nothing; then the
  // entry into each, which cannot throw: a reader never finds an entry whose insert
  // failed (and whose miss then frees it).
  ForEachBlock(entry, [](Shard& shard, uint64_t block) {
    std::vector<MrEntry*>& list = shard.buckets[block];
    list.reserve(list.size() + 1);
  });
  ForEachBlock(entry,
               [entry](Shard& shard, uint64_t block) { shard.buckets[block].push_back(entry); });
}

void MrIndex::Erase(MrEntry* entry) {
  ForEachBlock(entry, [entry](Shard& shard, uint64_t block) {
    auto it = shard.buckets.find(block);
    if (it == shard.buckets.end()) return;
    std::vector<MrEntry*>& list = it->second;
    list.erase(std::remove(list.begin(), list.end(), entry), list.end());
    if (list.empty()) shard.buckets.erase(it);
  });
}

uint64_t MrIndex::hits() const {
  uint64_t n = 0;
  for (const Shard& shard : shards_) n += shard.hits.load(std::memory_order_relaxed);
  return n;
}

}  // namespace hugemm::verbs_internal

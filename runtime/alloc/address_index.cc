#include "runtime/alloc/address_index.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/sys/fork_watch.h"

namespace hugemm::alloc_internal {
namespace {

struct Entry {
  uintptr_t base;
  uintptr_t end;
  ExtentRecord* rec;
};
static_assert(sizeof(Entry) == kIndexEntryBytes);

struct Table {
  std::vector<Entry> entries;  // sorted by base, disjoint
};

std::atomic<const Table*> g_table{nullptr};
// Threads inside an IndexReader. Sequentially consistent with the table pointer: a
// writer that sees 0 after publishing knows every later reader sees the new table.
std::atomic<int64_t> g_readers{0};

struct Writer {
  std::mutex mu;
  // The process whose extents the index holds. In a child of fork() every extent indexed
  // before the fork is a hole (MADV_DONTFORK), which the kernel may fill with the child's
  // own: the child's first insert drops them all (their pools, inert there, look nothing
  // up again; Pool::FreeBatch).
  ForkWatch process;
  std::vector<const Table*> old_tables;
  std::vector<std::unique_ptr<ExtentRecord>> old_records;
  std::vector<absl::AnyInvocable<void() &&>> old_frees;
  // Records an erase without heap emptied in place (IndexErase), linked through
  // next_emptied so that keeping them needs no heap either: `emptied` are still in the
  // current table; `unhooked` in no table published since, freed as old_records are.
  ExtentRecord* emptied = nullptr;
  ExtentRecord* unhooked = nullptr;
};

Writer& TheWriter() {
  static auto* w = new Writer();  // never destroyed: pools may go at exit
  return *w;
}

// Frees what no reader can still see, if no reader is active. Under the writer's mutex,
// after the unhooking store (seq_cst).
void Collect(Writer& w) {
  if (g_readers.load(std::memory_order_seq_cst) != 0) return;
  for (const Table* t : w.old_tables) delete t;
  w.old_tables.clear();
  w.old_records.clear();
  while (w.unhooked != nullptr) delete std::exchange(w.unhooked, w.unhooked->next_emptied);
  for (auto& f : w.old_frees) std::move(f)();
  w.old_frees.clear();
}

// Publishes `next` and frees what no reader can still see. Under the writer's mutex.
// `next` holds no emptied entry (writers drop them as they copy), so the emptied records
// are unhooked with it.
void Publish(Writer& w, const Table* next) {
  const Table* prev = g_table.exchange(next, std::memory_order_seq_cst);
  if (prev != nullptr) w.old_tables.push_back(prev);
  while (w.emptied != nullptr) {
    ExtentRecord* rec = std::exchange(w.emptied, w.emptied->next_emptied);
    rec->next_emptied = std::exchange(w.unhooked, rec);
  }
  Collect(w);
}

}  // namespace

IndexReader::IndexReader() { g_readers.fetch_add(1, std::memory_order_seq_cst); }
IndexReader::~IndexReader() { g_readers.fetch_sub(1, std::memory_order_seq_cst); }

ExtentRecord* IndexReader::Lookup(const void* addr) const {
  const Table* t = g_table.load(std::memory_order_seq_cst);
  if (t == nullptr) return nullptr;
  const auto a = reinterpret_cast<uintptr_t>(addr);
  auto it = std::upper_bound(t->entries.begin(), t->entries.end(), a,
                             [](uintptr_t v, const Entry& e) { return v < e.base; });
  if (it == t->entries.begin()) return nullptr;
  --it;
  // Relaxed: an erase without the heap empties an entry in place (IndexErase).
  return a < std::atomic_ref<const uintptr_t>(it->end).load(std::memory_order_relaxed) ? it->rec
                                                                                       : nullptr;
}

absl::Status IndexInsert(ExtentRecord* rec) {
  const auto base = reinterpret_cast<uintptr_t>(rec->base);
  const uintptr_t end = base + rec->size;
  Writer& w = TheWriter();
  std::lock_guard<std::mutex> lock(w.mu);
  const Table* cur = g_table.load(std::memory_order_relaxed);
  if (w.process.InChild()) [[unlikely]] {
    cur = nullptr;
    w.process = ForkWatch();
  }
  auto next = std::make_unique<Table>();
  if (cur != nullptr) next->entries.reserve(cur->entries.size() + 1);
  bool placed = false;
  for (const Entry& e : cur != nullptr ? cur->entries : std::vector<Entry>{}) {
    if (e.base == e.end) continue;  // emptied in place by an erase (IndexErase)
    if (e.base < end && base < e.end) {
      return absl::AlreadyExistsError(absl::StrCat("extent at ", absl::Hex(base),
                                                   " overlaps one indexed at ", absl::Hex(e.base)));
    }
    if (!placed && base < e.base) {
      next->entries.push_back({base, end, rec});
      placed = true;
    }
    next->entries.push_back(e);
  }
  if (!placed) next->entries.push_back({base, end, rec});
  Publish(w, next.release());
  return absl::OkStatus();
}

void IndexErase(std::unique_ptr<ExtentRecord> rec) {
  Writer& w = TheWriter();
  std::lock_guard<std::mutex> lock(w.mu);
  const Table* cur = g_table.load(std::memory_order_relaxed);
  std::unique_ptr<Table> next;
  try {
    next = std::make_unique<Table>();
    if (cur != nullptr) {
      for (const Entry& e : cur->entries) {
        if (e.rec != rec.get() && e.base != e.end) next->entries.push_back(e);
      }
    }
    w.old_records.push_back(std::move(rec));
  } catch (...) {
    // No heap for a new table (an erase must not fail: pools erase as they go): the
    // entry is emptied where it is, so that a lookup finds nothing there from now on,
    // and the record, which a reader may have found just before, is kept until the next
    // table published leaves the entry out and no reader can still see it.
    if (cur != nullptr) {
      for (const Entry& e : cur->entries) {
        if (e.rec == rec.get()) {
          std::atomic_ref<uintptr_t>(const_cast<uintptr_t&>(e.end))
              .store(e.base, std::memory_order_relaxed);
        }
      }
    }
    ExtentRecord* kept = rec.release();
    kept->next_emptied = std::exchange(w.emptied, kept);
    return;
  }
  Publish(w, next.release());
}

}  // namespace hugemm::alloc_internal

namespace hugemm::alloc_internal {

void IndexRetire(absl::AnyInvocable<void() &&> free) {
  Writer& w = TheWriter();
  std::lock_guard<std::mutex> lock(w.mu);
  w.old_frees.push_back(std::move(free));
  Collect(w);
}

}  // namespace hugemm::alloc_internal

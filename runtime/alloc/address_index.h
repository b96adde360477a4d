// Virtual address -> extent for every pool extent of every allocator in the process: a
// sorted array of (base, end, record), one entry per extent, so it costs 24 bytes per
// extent however large. Readers are lock-free: an IndexReader marks its thread as
// reading, and writers (pool growth and shrink only) publish a new array copy-on-write
// under one mutex and free replaced arrays and retired records only once no reader is
// inside. Lookups are not on the pin path; the reader count is one shared atomic.
#ifndef HUGEMM_RUNTIME_ALLOC_ADDRESS_INDEX_H_
#define HUGEMM_RUNTIME_ALLOC_ADDRESS_INDEX_H_

#include <cstddef>
#include <memory>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "runtime/alloc/extent_record.h"

namespace hugemm::alloc_internal {

// What one extent costs the index.
inline constexpr size_t kIndexEntryBytes = 3 * sizeof(void*);

// AlreadyExists if the record overlaps one indexed already.
absl::Status IndexInsert(ExtentRecord* rec);
// Drops the record from the index and deletes it once no reader can see it. Its extent
// should be unmapped already (nothing else would unmap it promptly). Never throws: when
// the heap has no room for the new table, the entry is emptied in place and the record
// kept until a later insert or erase publishes a table without it (and no reader is left
// that may have found it).
void IndexErase(std::unique_ptr<ExtentRecord> rec);
// Runs `free` once no reader can still see what it frees: now if no IndexReader is
// active, else at a later write that finds none. For memory a writer unhooked from what
// readers reach through the index, with a seq_cst store that readers load with seq_cst:
// the reader count is read after that store, and a reader counts itself before its load,
// so a reader the count misses loads the unhooked state.
void IndexRetire(absl::AnyInvocable<void() &&> free);

// The read side. What Lookup returns, and what it points to, stays valid while the
// reader lives. Not copyable; not to be held across a write to the index.
class IndexReader {
 public:
  IndexReader();
  ~IndexReader();
  IndexReader(const IndexReader&) = delete;
  IndexReader& operator=(const IndexReader&) = delete;

  // The extent holding `addr`, or nullptr.
  ExtentRecord* Lookup(const void* addr) const;
};

}  // namespace hugemm::alloc_internal

#endif  // HUGEMM_RUNTIME_ALLOC_ADDRESS_INDEX_H_

// A table node and the encoding of its 64-bit entries.
//
// An entry is one word, written and read with std::atomic, so a reader sees either the
// old or the new value and never half of one. Pointers in entries (tables, folios,
// exclusive records) are at least 8-byte aligned and below 2^56 (any user-space
// address), leaving three low bits and the top byte for flags:
//   0                               empty
//   table | kPresent                next-level table
//   folio | kPresent | kLeaf | ...  a leaf; kCont marks a member of a contiguous group;
//                                   kRead / kWrite / kExec are its protection
//   record | kExclusiveTag          a device-exclusive entry (not present for the CPU)
// A leaf stores no page index: folios are mapped whole at addresses aligned to their
// size, so the page is the address's offset inside the folio.
//
// Beside each entry sits a frame word, as a hardware PTE holds its frame number: for a
// leaf whose folio's PFNs are known it is (PFN of the entry's first 4K frame) << 1 | 1,
// otherwise 0. Address-to-PFN translation reads it alone and never touches the folio.
// Writers keep one rule: a valid frame word means the entry beside it maps that frame
// (as a leaf, or as the device-exclusive entry that replaced one). So a frame word is
// stored after its entry is published and cleared before its entry changes to anything
// that maps other frames (empty, a table).
#ifndef HUGEMM_RUNTIME_PGTABLE_TABLE_H_
#define HUGEMM_RUNTIME_PGTABLE_TABLE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>

#include "hugemm/folio.h"
#include "hugemm/pgtable.h"

namespace hugemm::pgtable_internal {

inline constexpr uint64_t kPresent = 1u << 0;
inline constexpr uint64_t kLeaf = 1u << 1;
inline constexpr uint64_t kExclusiveTag = 1u << 1;  // with kPresent clear
inline constexpr uint64_t kCont = 1u << 2;
inline constexpr uint64_t kRead = uint64_t{1} << 61;
inline constexpr uint64_t kWrite = uint64_t{1} << 62;
inline constexpr uint64_t kExec = uint64_t{1} << 63;
inline constexpr uint64_t kProtBits = kRead | kWrite | kExec;
// The pointer: bits 3..55.
inline constexpr uint64_t kPtrMask = ((uint64_t{1} << 56) - 1) & ~uint64_t{7};

inline bool IsTable(uint64_t w) { return (w & (kPresent | kLeaf)) == kPresent; }
inline bool IsLeaf(uint64_t w) { return (w & (kPresent | kLeaf)) == (kPresent | kLeaf); }
inline bool IsExclusive(uint64_t w) { return (w & (kPresent | kExclusiveTag)) == kExclusiveTag; }

inline constexpr uint64_t kFrameValid = 1;
inline uint64_t FrameWord(uint64_t pfn) {
  return pfn == kUnknownPfn ? 0 : (pfn << 1) | kFrameValid;
}
inline uint64_t FrameWordPfn(uint64_t fw) { return fw & kFrameValid ? fw >> 1 : kUnknownPfn; }

// The 4K frame holding `va` in `folio`, which is mapped whole at an address aligned to
// its size (kUnknownPfn when its PFNs are unknown).
inline uint64_t PfnAt(const Folio* folio, uintptr_t va) {
  return folio->page_pfn((va & (folio->size() - 1)) >> kPageShift);
}
// The frame word of the entry that maps `folio` from `entry_va` on.
inline uint64_t FrameFor(const Folio* folio, uintptr_t entry_va) {
  return FrameWord(PfnAt(folio, entry_va));
}

// An entry keeps a Prot's three bits as they are, in its top three bits: converting is a
// shift (Decode does it for every leaf a reader sees).
inline constexpr int kProtShift = 61;
static_assert(kRead == uint64_t{static_cast<uint32_t>(kProtRead)} << kProtShift &&
              kWrite == uint64_t{static_cast<uint32_t>(kProtWrite)} << kProtShift &&
              kExec == uint64_t{static_cast<uint32_t>(kProtExec)} << kProtShift);
inline uint64_t ProtToBits(Prot prot) {
  return (uint64_t{static_cast<uint32_t>(prot)} << kProtShift) & kProtBits;
}
inline Prot BitsToProt(uint64_t w) {
  return Prot{static_cast<uint32_t>((w & kProtBits) >> kProtShift)};
}

// What a device-exclusive entry remembers of the PTE it replaced. Immutable once
// published; freed after a grace period.
struct alignas(64) ExclusiveRecord {
  Folio* folio = nullptr;
  uint64_t leaf_word = 0;  // the PTE to put back
  const void* owner = nullptr;
};

struct alignas(64) Table {
  // Writers only, under `mu`.
  // std::mutex, not absl::Mutex: the system abseil is not built for TSan, which would
  // then not see the lock order between writers.
  std::mutex mu;
  int level = 0;
  bool dead = false;         // detached from the tree: a writer that locked it must retry
  uint32_t used = 0;         // non-empty entries
  Table* deposit = nullptr;  // PMD tables: PTE tables deposited for this table's leaves
  Table* next = nullptr;     // link in a deposit stack or a garbage list
  std::atomic<uint64_t>* frames = nullptr;  // the frame words, after the entries

  // The entries follow the header in the same allocation: found by arithmetic, so a
  // reader's step from a table to its entry is one load, not two.
  std::atomic<uint64_t>* slots() { return reinterpret_cast<std::atomic<uint64_t>*>(this + 1); }
  const std::atomic<uint64_t>* slots() const {
    return reinterpret_cast<const std::atomic<uint64_t>*>(this + 1);
  }
  std::atomic<uint64_t>& slot(size_t i) { return slots()[i]; }
  const std::atomic<uint64_t>& slot(size_t i) const { return slots()[i]; }
  std::atomic<uint64_t>& frame(size_t i) { return frames[i]; }
  const std::atomic<uint64_t>& frame(size_t i) const { return frames[i]; }
};

inline Table* AsTable(uint64_t w) { return reinterpret_cast<Table*>(w & kPtrMask); }
inline Folio* AsFolio(uint64_t w) { return reinterpret_cast<Folio*>(w & kPtrMask); }
inline ExclusiveRecord* AsRecord(uint64_t w) {
  return reinterpret_cast<ExclusiveRecord*>(w & kPtrMask);
}

}  // namespace hugemm::pgtable_internal

#endif  // HUGEMM_RUNTIME_PGTABLE_TABLE_H_

// The shadow table as a fuzzer's oracle: the logical leaves it should hold, in a std::map
// keyed by address, and what each writer should answer and do to them.
//
// Written from the contract in pgtable.h and geometry.h, not from the code: a writer's
// checks in the order the header lists them, then its change, splitting a leaf that
// sticks out of a range one step at a time (a contiguous group into its entries, a leaf
// into leaves of the level below) as Unmap, Protect and MakeExclusive do.
#ifndef HUGEMM_FUZZ_PGTABLE_MODEL_H_
#define HUGEMM_FUZZ_PGTABLE_MODEL_H_

#include <cstddef>
#include <cstdint>
#include <map>

#include "absl/status/status.h"
#include "hugemm/folio.h"
#include "hugemm/geometry.h"
#include "hugemm/pgtable.h"

namespace hugemm::fuzz {

struct ModelLeaf {
  size_t bytes = 0;
  int level = 0;
  int entries = 1;  // entries it is made of: a contiguous group's, else 1
  bool cont = false;
  Folio* folio = nullptr;
  Prot prot = kProtNone;
  bool exclusive = false;
  const void* owner = nullptr;  // of a device-exclusive entry
};

class TableModel {
 public:
  explicit TableModel(const Geometry& geometry);

  const Geometry& geometry() const { return g_; }
  uintptr_t va_limit() const { return va_limit_; }
  const std::map<uintptr_t, ModelLeaf>& leaves() const { return leaves_; }
  // The leaf holding `va` (its first byte in *start), or nullptr.
  const ModelLeaf* Find(uintptr_t va, uintptr_t* start) const;
  // Whether every byte of [va, end) is mapped.
  bool Covered(uintptr_t va, uintptr_t end) const;
  // Entries that map `folio`: the references its mappings hold.
  int EntriesOf(const Folio* folio) const;

  // Each writer returns the code the table must return and changes the model as the
  // table must change. *split (where given) says whether a leaf was split on the way.
  absl::StatusCode Map(Folio* folio, uintptr_t va, Prot prot);
  absl::StatusCode Unmap(uintptr_t va, size_t length);
  absl::StatusCode Protect(uintptr_t va, size_t length, Prot prot);
  absl::StatusCode Split(uintptr_t va);
  absl::StatusCode MakeExclusive(uintptr_t va, const void* owner, bool* split);
  absl::StatusCode Restore(uintptr_t va);

 private:
  absl::StatusCode CheckRange(uintptr_t va, size_t length) const;
  static bool ProtOk(Prot prot);
  // Splits the leaf at `start` one step; false (nothing changed) where no split applies.
  bool SplitOnce(uintptr_t start);
  // Splits until [va, end) is made of whole leaves, and returns their starts.
  std::map<uintptr_t, ModelLeaf>::iterator WholeLeafAt(uintptr_t cur, uintptr_t end);

  Geometry g_;
  uintptr_t va_limit_;
  std::map<uintptr_t, ModelLeaf> leaves_;
};

}  // namespace hugemm::fuzz

#endif  // HUGEMM_FUZZ_PGTABLE_MODEL_H_

// Page-table geometry: how many levels, how many index bits each, which levels may hold
// leaves, and how many entries form a contiguous group (arm64 cont-PTE / cont-PMD).
//
// Levels are numbered from the bottom: 0 is the PTE level, 1 the PMD level, 2 the PUD
// level, and the top level is the PGD whatever its number. The geometry of this machine
// comes from DetectHostGeometry(); the arm64 ones are simulation targets that the shadow
// table runs with synthetic folios and addresses (it never touches the data).
#ifndef HUGEMM_GEOMETRY_H_
#define HUGEMM_GEOMETRY_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "hugemm/os.h"

namespace hugemm {

inline constexpr int kMaxLevels = 5;
// The top level of every x86-64 and arm64 geometry has at most 2^9 entries.
inline constexpr int kMaxTopIndexBits = 9;
inline constexpr int kPteLevel = 0;
inline constexpr int kPmdLevel = 1;
inline constexpr int kPudLevel = 2;

// The shape of one architecture's page tables. Thread safety: a plain value; const use from
// any number of threads is safe.
struct Geometry {
  std::string name;     // "x86-64 4-level", "arm64 16K granule", ...
  int page_shift = 12;  // base page of the geometry
  int levels = 4;
  int index_bits[kMaxLevels] = {};    // per level, bottom up
  bool leaf_ok[kMaxLevels] = {};      // a leaf (block) may sit at this level
  int cont_entries[kMaxLevels] = {};  // >1: that many aligned entries may form one leaf

  size_t page_size() const { return size_t{1} << page_shift; }
  int top() const { return levels - 1; }
  // log2 of the bytes one entry of `level` covers.
  int shift(int level) const {
    int s = page_shift;
    for (int l = 0; l < level; ++l) s += index_bits[l];
    return s;
  }
  size_t entry_bytes(int level) const { return size_t{1} << shift(level); }
  size_t entries(int level) const { return size_t{1} << index_bits[level]; }
  int va_bits() const { return shift(levels); }
  bool cont_ok(int level) const { return cont_entries[level] > 1; }
  // Bytes of a contiguous group at `level` (the entry size when there are none).
  size_t cont_bytes(int level) const {
    return entry_bytes(level) * (cont_ok(level) ? cont_entries[level] : 1);
  }
  // "PTE", "PMD", "PUD", "P4D", and "PGD" for the top level.
  absl::string_view LevelName(int level) const;
};

// OK for a geometry a shadow table can use: 3 to kMaxLevels levels, a base page of 4K to
// 64K, 1 to 13 index bits per level (at most kMaxTopIndexBits at the top) and at most
// 57 address bits, leaves allowed at the PTE level, and contiguous groups (if any) of a
// power of two of entries that fits in a table. InvalidArgument says which rule failed.
[[nodiscard]] absl::Status ValidateGeometry(const Geometry& geometry);

// The unit a folio of `folio_bytes` is mapped with: `entries` entries at `level`
// (grouped as contiguous leaves of `cont` entries when cont > 1).
struct LeafUnit {
  int level = 0;
  int cont = 1;           // entries per logical leaf
  size_t leaf_bytes = 0;  // bytes per logical leaf
  size_t entries = 0;     // entries the whole folio needs
};

// The largest leaf (plain or contiguous group) that is not larger than the folio.
// InvalidArgument: an invalid geometry; a folio smaller than the base page, not a
// multiple of it, or that no leaf level divides.
[[nodiscard]] absl::StatusOr<LeafUnit> NaturalUnit(const Geometry& geometry, size_t folio_bytes);

Geometry X86_64Geometry(bool five_level);
// arm64 with a 4K, 16K or 64K granule and a 48-bit address space. Contiguous groups:
//   4K:  cont-PTE 16 x 4K = 64K,    cont-PMD 16 x 2M   = 32M  (blocks at PMD and PUD)
//   16K: cont-PTE 128 x 16K = 2M,   cont-PMD 32 x 32M  = 1G   (blocks at PMD)
//   64K: cont-PTE 32 x 64K = 2M,    cont-PMD 32 x 512M = 16G  (blocks at PMD)
// InvalidArgument for any other granule.
[[nodiscard]] absl::StatusOr<Geometry> Arm64Geometry(size_t granule);

// x86-64 with 5 levels when the CPU has LA57 and the kernel runs 5-level paging, which
// shows as the kernel handing out an address above 47 bits for a hint above them (a
// 4-level kernel ignores the hint). Otherwise 4 levels. Asked once of the real OS and
// remembered; the overload asks `os` every time.
Geometry DetectHostGeometry();
Geometry DetectHostGeometry(Os& os);

}  // namespace hugemm

#endif  // HUGEMM_GEOMETRY_H_

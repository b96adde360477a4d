#include "hugemm/geometry.h"

#include <sys/mman.h>

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "hugemm/page_size.h"

namespace hugemm {

absl::string_view Geometry::LevelName(int level) const {
  if (level == top()) return "PGD";
  static constexpr absl::string_view kNames[] = {"PTE", "PMD", "PUD", "P4D", "PGD"};
  return level >= 0 && level < kMaxLevels ? kNames[level] : "?";
}

absl::Status ValidateGeometry(const Geometry& g) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("geometry \"", g.name, "\": ", why));
  };
  if (g.levels < 3 || g.levels > kMaxLevels) {
    return bad(absl::StrCat(g.levels, " levels, not 3 to ", kMaxLevels));
  }
  if (g.page_shift < 12 || g.page_shift > 16) return bad("a base page not of 4K to 64K");
  for (int l = 0; l < g.levels; ++l) {
    if (g.index_bits[l] < 1 || g.index_bits[l] > 13) {
      return bad(absl::StrCat(g.index_bits[l], " index bits at level ", l));
    }
    const int cont = g.cont_entries[l];
    if (cont < 0 || (cont & (cont - 1)) != 0 || (cont > 1 && size_t(cont) > g.entries(l))) {
      return bad(absl::StrCat("contiguous groups of ", cont, " entries at level ", l));
    }
  }
  if (g.index_bits[g.top()] > kMaxTopIndexBits) {
    return bad(absl::StrCat("a top level of ", g.index_bits[g.top()], " index bits"));
  }
  if (g.va_bits() > 57) return bad(absl::StrCat(g.va_bits(), " address bits"));
  if (!g.leaf_ok[kPteLevel]) return bad("no leaves at the PTE level");
  return absl::OkStatus();
}

absl::StatusOr<LeafUnit> NaturalUnit(const Geometry& g, size_t folio_bytes) {
  if (absl::Status st = ValidateGeometry(g); !st.ok()) return st;
  if (folio_bytes < g.page_size() || folio_bytes % g.page_size() != 0) {
    return absl::InvalidArgumentError(absl::StrCat("a ", PageSizeName(folio_bytes),
                                                   " folio is not a multiple of the ",
                                                   PageSizeName(g.page_size()), " page"));
  }
  for (int level = g.top(); level >= 0; --level) {
    if (!g.leaf_ok[level]) continue;
    for (int cont : {g.cont_ok(level) ? g.cont_entries[level] : 1, 1}) {
      const size_t bytes = g.entry_bytes(level) * cont;
      if (bytes > folio_bytes || folio_bytes % bytes != 0) continue;
      return LeafUnit{.level = level,
                      .cont = cont,
                      .leaf_bytes = bytes,
                      .entries = folio_bytes / g.entry_bytes(level)};
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("no leaf level fits a ", PageSizeName(folio_bytes), " folio"));
}

Geometry X86_64Geometry(bool five_level) {
  Geometry g;
  g.name = five_level ? "x86-64 5-level" : "x86-64 4-level";
  g.page_shift = 12;
  g.levels = five_level ? 5 : 4;
  for (int l = 0; l < g.levels; ++l) g.index_bits[l] = 9;
  g.leaf_ok[kPteLevel] = g.leaf_ok[kPmdLevel] = g.leaf_ok[kPudLevel] = true;
  for (int& c : g.cont_entries) c = 1;
  return g;
}

absl::StatusOr<Geometry> Arm64Geometry(size_t granule) {
  Geometry g;
  for (int& c : g.cont_entries) c = 1;
  g.leaf_ok[kPteLevel] = g.leaf_ok[kPmdLevel] = true;
  switch (granule) {
    case size_t{4} << 10:
      g.name = "arm64 4K granule";
      g.page_shift = 12;
      g.levels = 4;
      for (int l = 0; l < 4; ++l) g.index_bits[l] = 9;
      g.leaf_ok[kPudLevel] = true;
      g.cont_entries[kPteLevel] = 16;
      g.cont_entries[kPmdLevel] = 16;
      break;
    case size_t{16} << 10:
      // 14 + 3 * 11 = 47 bits; a one-bit top level reaches 48.
      g.name = "arm64 16K granule";
      g.page_shift = 14;
      g.levels = 4;
      g.index_bits[0] = g.index_bits[1] = g.index_bits[2] = 11;
      g.index_bits[3] = 1;
      g.cont_entries[kPteLevel] = 128;
      g.cont_entries[kPmdLevel] = 32;
      break;
    case size_t{64} << 10:
      // 16 + 2 * 13 = 42 bits; a six-bit top level reaches 48.
      g.name = "arm64 64K granule";
      g.page_shift = 16;
      g.levels = 3;
      g.index_bits[0] = g.index_bits[1] = 13;
      g.index_bits[2] = 6;
      g.cont_entries[kPteLevel] = 32;
      g.cont_entries[kPmdLevel] = 32;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("arm64 has no ", PageSizeName(granule), " granule (4K, 16K, 64K)"));
  }
  return g;
}

namespace {

bool CpuHasLa57(Os& os) {
  absl::StatusOr<std::string> cpuinfo = os.ReadFile("/proc/cpuinfo");
  if (!cpuinfo.ok()) return false;
  for (absl::string_view line : absl::StrSplit(*cpuinfo, '\n')) {
    if (absl::StartsWith(line, "flags") && absl::StrContains(line, " la57")) return true;
  }
  return false;
}

bool KernelGivesHighAddresses(Os& os) {
  void* hint = reinterpret_cast<void*>(uintptr_t{1} << 50);
  absl::StatusOr<void*> p =
      os.Mmap(hint, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (!p.ok()) return false;
  const bool high = reinterpret_cast<uintptr_t>(*p) >= (uintptr_t{1} << 47);
  (void)os.Munmap(*p, 4096);
  return high;
}

}  // namespace

Geometry DetectHostGeometry(Os& os) {
  return X86_64Geometry(CpuHasLa57(os) && KernelGivesHighAddresses(os));
}

Geometry DetectHostGeometry() {
  static const Geometry host = DetectHostGeometry(Os::Default());
  return host;
}

}  // namespace hugemm

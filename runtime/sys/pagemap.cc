#include "runtime/sys/pagemap.h"

#include <fcntl.h>
#include <sys/mman.h>

#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "runtime/sys/status.h"
#include "runtime/sys/unique_fd.h"
#include "runtime/util/format.h"

namespace hugemm::sys {
namespace {

constexpr uint64_t kPagemapPresent = uint64_t{1} << 63;
constexpr uint64_t kPagemapPfnMask = (uint64_t{1} << 55) - 1;
constexpr size_t kBasePage = 4096;

absl::StatusOr<UniqueFd> OpenReadOnly(Os& os, const char* path) {
  absl::StatusOr<int> fd = os.Open(path, O_RDONLY, 0);
  if (!fd.ok()) return fd.status();
  return UniqueFd(os, *fd);
}

// Without CAP_SYS_ADMIN the kernel reports present pages with PFN 0.
uint64_t PfnOfEntry(uint64_t entry) {
  const uint64_t pfn = entry & kPagemapPfnMask;
  return (entry & kPagemapPresent) && pfn != 0 ? pfn : kUnknownPfn;
}

// "7f12a4000000-7f12a4200000 rw-s ..." -> [start, end); false for any other line.
bool ParseRangeLine(absl::string_view line, uintptr_t* start, uintptr_t* end) {
  const size_t dash = line.find('-');
  const size_t space = line.find(' ');
  if (dash == absl::string_view::npos || space == absl::string_view::npos || dash > space) {
    return false;
  }
  return absl::SimpleHexAtoi(line.substr(0, dash), start) &&
         absl::SimpleHexAtoi(line.substr(dash + 1, space - dash - 1), end);
}

}  // namespace

absl::StatusOr<std::vector<uint64_t>> ReadPfns(Os& os, const void* addr, size_t count,
                                               size_t stride) {
  absl::StatusOr<UniqueFd> fd = OpenReadOnly(os, "/proc/self/pagemap");
  if (!fd.ok()) return fd.status();
  std::vector<uint64_t> pfns(count, kUnknownPfn);
  auto va = reinterpret_cast<uintptr_t>(addr);
  for (size_t i = 0; i < count; ++i) {
    uint64_t entry = 0;
    off_t offset = static_cast<off_t>((va + i * stride) / kBasePage * sizeof(entry));
    absl::Status st = os.Pread(fd->get(), &entry, sizeof(entry), offset);
    if (!st.ok()) {
      return Annotate(st, hugemm::Format("/proc/self/pagemap at 0x%x", va + i * stride));
    }
    pfns[i] = PfnOfEntry(entry);
  }
  return pfns;
}

absl::StatusOr<std::vector<uint64_t>> ReadKpageflags(Os& os, uint64_t pfn, size_t count) {
  absl::StatusOr<UniqueFd> fd = OpenReadOnly(os, "/proc/kpageflags");
  if (!fd.ok()) return fd.status();
  std::vector<uint64_t> flags(count);
  absl::Status st = os.Pread(fd->get(), flags.data(), count * sizeof(uint64_t),
                             static_cast<off_t>(pfn * sizeof(uint64_t)));
  if (!st.ok()) return Annotate(st, absl::StrCat("/proc/kpageflags at PFN ", pfn));
  return flags;
}

bool CanReadPfns(Os& os) {
  absl::StatusOr<void*> p =
      os.Mmap(nullptr, kBasePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (!p.ok()) return false;
  std::memset(*p, 1, kBasePage);
  absl::StatusOr<std::vector<uint64_t>> pfns = ReadPfns(os, *p, 1, kBasePage);
  (void)os.Munmap(*p, kBasePage);
  return pfns.ok() && (*pfns)[0] != kUnknownPfn;
}

absl::StatusOr<size_t> KernelPageSizeAt(Os& os, const void* addr) {
  absl::StatusOr<std::vector<Vma>> vmas = ReadVmas(os);
  if (!vmas.ok()) return vmas.status();
  const auto va = reinterpret_cast<uintptr_t>(addr);
  const Vma* vma = FindVma(*vmas, va);
  if (vma == nullptr || vma->kernel_page_size == 0) {
    return absl::NotFoundError(hugemm::Format("no mapping holds 0x%x in /proc/self/smaps", va));
  }
  return vma->kernel_page_size;
}

absl::StatusOr<std::vector<uint64_t>> ReadPfnRange(Os& os, const void* addr, size_t frames) {
  absl::StatusOr<UniqueFd> fd = OpenReadOnly(os, "/proc/self/pagemap");
  if (!fd.ok()) return fd.status();
  auto va = reinterpret_cast<uintptr_t>(addr);
  std::vector<uint64_t> entries(frames);
  absl::Status st = os.Pread(fd->get(), entries.data(), frames * sizeof(uint64_t),
                             static_cast<off_t>(va / kBasePage * sizeof(uint64_t)));
  if (!st.ok()) {
    return Annotate(st, hugemm::Format("/proc/self/pagemap at 0x%x (%u frames)", va, frames));
  }
  for (uint64_t& e : entries) e = PfnOfEntry(e);
  return entries;
}

absl::StatusOr<std::vector<Vma>> ReadVmas(Os& os) {
  absl::StatusOr<std::string> text = os.ReadFile("/proc/self/smaps");
  if (!text.ok()) return text.status();
  std::vector<Vma> vmas;
  for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
    uintptr_t start = 0, end = 0;
    if (ParseRangeLine(line, &start, &end)) {
      vmas.push_back({start, end, 0, ""});
      continue;
    }
    if (vmas.empty()) continue;
    size_t kb = 0;
    if (absl::ConsumePrefix(&line, "KernelPageSize:")) {
      line = absl::StripAsciiWhitespace(line);
      if (absl::ConsumeSuffix(&line, "kB") &&
          absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &kb)) {
        vmas.back().kernel_page_size = kb * 1024;
      }
    } else if (absl::ConsumePrefix(&line, "VmFlags:")) {
      vmas.back().flags = std::string(absl::StripAsciiWhitespace(line));
    }
  }
  return vmas;
}

const Vma* FindVma(const std::vector<Vma>& vmas, uintptr_t addr) {
  for (const Vma& v : vmas) {
    if (addr >= v.start && addr < v.end) return &v;
  }
  return nullptr;
}

}  // namespace hugemm::sys

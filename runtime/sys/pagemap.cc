#include "runtime/sys/pagemap.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/sys/os.h"

namespace hugemm::sys {
namespace {

constexpr uint64_t kPagemapPresent = uint64_t{1} << 63;
constexpr uint64_t kPagemapPfnMask = (uint64_t{1} << 55) - 1;
constexpr size_t kBasePage = 4096;

absl::StatusOr<UniqueFd> OpenReadOnly(const char* path) {
  absl::StatusOr<int> fd = os().Open(path, O_RDONLY, 0);
  if (!fd.ok()) return fd.status();
  return UniqueFd(*fd);
}

}  // namespace

absl::StatusOr<std::vector<uint64_t>> ReadPfns(const void* addr, size_t count, size_t stride) {
  absl::StatusOr<UniqueFd> fd = OpenReadOnly("/proc/self/pagemap");
  if (!fd.ok()) return fd.status();
  std::vector<uint64_t> pfns(count, kUnknownPfn);
  auto va = reinterpret_cast<uintptr_t>(addr);
  for (size_t i = 0; i < count; ++i) {
    uint64_t entry = 0;
    off_t offset = static_cast<off_t>((va + i * stride) / kBasePage * sizeof(entry));
    absl::Status st = os().Pread(fd->get(), &entry, sizeof(entry), offset);
    if (!st.ok()) {
      return absl::Status(st.code(), absl::StrFormat("/proc/self/pagemap at 0x%x: %s",
                                                     va + i * stride, st.message()));
    }
    uint64_t pfn = entry & kPagemapPfnMask;
    // Without CAP_SYS_ADMIN the kernel reports present pages with PFN 0.
    if ((entry & kPagemapPresent) && pfn != 0) pfns[i] = pfn;
  }
  return pfns;
}

absl::StatusOr<std::vector<uint64_t>> ReadKpageflags(uint64_t pfn, size_t count) {
  absl::StatusOr<UniqueFd> fd = OpenReadOnly("/proc/kpageflags");
  if (!fd.ok()) return fd.status();
  std::vector<uint64_t> flags(count);
  absl::Status st = os().Pread(fd->get(), flags.data(), count * sizeof(uint64_t),
                               static_cast<off_t>(pfn * sizeof(uint64_t)));
  if (!st.ok()) {
    return absl::Status(st.code(),
                        absl::StrCat("/proc/kpageflags at PFN ", pfn, ": ", st.message()));
  }
  return flags;
}

bool CanReadPfns() {
  void* p = ::mmap(nullptr, kBasePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return false;
  std::memset(p, 1, kBasePage);
  absl::StatusOr<std::vector<uint64_t>> pfns = ReadPfns(p, 1, kBasePage);
  ::munmap(p, kBasePage);
  return pfns.ok() && (*pfns)[0] != kUnknownPfn;
}

absl::StatusOr<size_t> KernelPageSizeAt(const void* addr) {
  absl::StatusOr<std::vector<Vma>> vmas = ReadVmas();
  if (!vmas.ok()) return vmas.status();
  const auto va = reinterpret_cast<uintptr_t>(addr);
  const Vma* vma = FindVma(*vmas, va);
  if (vma == nullptr || vma->kernel_page_size == 0) {
    return absl::NotFoundError(absl::StrFormat("no mapping holds 0x%x in /proc/self/smaps", va));
  }
  return vma->kernel_page_size;
}

absl::StatusOr<std::vector<uint64_t>> ReadPfnRange(const void* addr, size_t frames) {
  absl::StatusOr<UniqueFd> fd = OpenReadOnly("/proc/self/pagemap");
  if (!fd.ok()) return fd.status();
  auto va = reinterpret_cast<uintptr_t>(addr);
  std::vector<uint64_t> entries(frames);
  absl::Status st = os().Pread(fd->get(), entries.data(), frames * sizeof(uint64_t),
                               static_cast<off_t>(va / kBasePage * sizeof(uint64_t)));
  if (!st.ok()) {
    return absl::Status(st.code(), absl::StrFormat("/proc/self/pagemap at 0x%x (%u frames): %s", va,
                                                   frames, st.message()));
  }
  for (uint64_t& e : entries) {
    const uint64_t pfn = e & kPagemapPfnMask;
    e = (e & kPagemapPresent) && pfn != 0 ? pfn : kUnknownPfn;
  }
  return entries;
}

absl::StatusOr<std::vector<Vma>> ReadVmas() {
  FILE* f = std::fopen("/proc/self/smaps", "re");
  if (f == nullptr) return ErrnoStatus(errno, "cannot read /proc/self/smaps");
  std::vector<Vma> vmas;
  char line[512];
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    uintptr_t start = 0, end = 0;
    if (std::sscanf(line, "%" SCNxPTR "-%" SCNxPTR " ", &start, &end) == 2 &&
        std::strchr(line, '-') < std::strchr(line, ' ')) {
      vmas.push_back({start, end, 0, ""});
      continue;
    }
    unsigned long kb = 0;
    if (vmas.empty()) continue;
    if (std::sscanf(line, "KernelPageSize: %lu kB", &kb) == 1) {
      vmas.back().kernel_page_size = kb * 1024;
    } else if (std::strncmp(line, "VmFlags:", 8) == 0) {
      std::string flags = line + 8;
      while (!flags.empty() && (flags.back() == '\n' || flags.back() == ' ')) flags.pop_back();
      while (!flags.empty() && flags.front() == ' ') flags.erase(0, 1);
      vmas.back().flags = flags;
    }
  }
  std::fclose(f);
  return vmas;
}

const Vma* FindVma(const std::vector<Vma>& vmas, uintptr_t addr) {
  for (const Vma& v : vmas) {
    if (addr >= v.start && addr < v.end) return &v;
  }
  return nullptr;
}

}  // namespace hugemm::sys

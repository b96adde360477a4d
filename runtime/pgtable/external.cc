// Memory the program mapped itself, described by what the kernel says about it.
#include <memory>
#include <mutex>

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "hugemm/page_size.h"
#include "hugemm/pgtable.h"
#include "runtime/pgtable/external_region.h"
#include "runtime/pgtable/rcu.h"
#include "runtime/sys/pagemap.h"

namespace hugemm {

namespace {

// The protection the kernel gives a VMA, from smaps' VmFlags ("rd wr ex ..."). Memory the
// program may not read is refused: a device must never see more than the program may.
absl::StatusOr<Prot> KernelProt(const sys::Vma& vma, uintptr_t at) {
  Prot prot = kProtNone;
  for (absl::string_view flag : absl::StrSplit(vma.flags, ' ', absl::SkipEmpty())) {
    if (flag == "rd") prot |= kProtRead;
    if (flag == "wr") prot |= kProtWrite;
    if (flag == "ex") prot |= kProtExec;
  }
  if (!HasAny(prot, kProtRead)) {
    return absl::PermissionDeniedError(absl::StrFormat(
        "register: 0x%x is mapped without read access (VmFlags \"%s\")", at, vma.flags));
  }
  return prot;
}

}  // namespace

absl::StatusOr<uint64_t> PageTable::RegisterExternal(const void* p, size_t length) {
  const auto va = reinterpret_cast<uintptr_t>(p);
  if (geometry_.page_shift != kPageShift) {
    return absl::FailedPreconditionError(
        absl::StrFormat("register: %s is not this machine's geometry", geometry_.name));
  }
  if (absl::Status st = CheckRange(va, length, "register"); !st.ok()) return st;
  absl::StatusOr<std::vector<sys::Vma>> vmas = sys::ReadVmas();
  if (!vmas.ok()) return vmas.status();

  auto region = std::make_unique<ExternalRegion>();
  region->va = va;
  region->length = length;
  bool kpageflags_readable = true;
  for (uintptr_t cur = va; cur < va + length;) {
    const sys::Vma* vma = sys::FindVma(*vmas, cur);
    if (vma == nullptr) {
      return absl::NotFoundError(absl::StrFormat("register: 0x%x is not mapped", cur));
    }
    absl::StatusOr<Prot> prot = KernelProt(*vma, cur);
    if (!prot.ok()) return prot.status();
    const size_t page = vma->kernel_page_size;
    if (page == 0 || cur % page != 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("register: 0x%x is not aligned to the %s pages the kernel maps there",
                          cur, PageSizeName(page)));
    }
    const uintptr_t piece_end = std::min<uintptr_t>(vma->end, va + length);
    if ((piece_end - cur) % page != 0) {
      return absl::InvalidArgumentError(absl::StrFormat("register: 0x%x does not end on a %s page",
                                                        piece_end, PageSizeName(page)));
    }
    const size_t frames = page / kPageSize4K;
    absl::StatusOr<std::vector<uint64_t>> pfns =
        sys::ReadPfnRange(reinterpret_cast<const void*>(cur), (piece_end - cur) / kPageSize4K);
    if (!pfns.ok()) return pfns.status();
    for (size_t k = 0; cur < piece_end; ++k, cur += page) {
      const uint64_t head = (*pfns)[k * frames];
      if (head == kUnknownPfn) {
        if (!sys::CanReadPfns()) {
          return absl::PermissionDeniedError(
              absl::StrFormat("register: the kernel hides PFNs from this process (pagemap needs "
                              "CAP_SYS_ADMIN); cannot learn the frame at 0x%x",
                              cur));
        }
        return absl::FailedPreconditionError(
            absl::StrFormat("register: 0x%x is not faulted in (no frame in pagemap)", cur));
      }
      for (size_t j = 1; j < frames; ++j) {
        if ((*pfns)[k * frames + j] != head + j) {
          return absl::FailedPreconditionError(absl::StrFormat(
              "register: the %s page at 0x%x is not physically contiguous at frame %u",
              PageSizeName(page), cur, j));
        }
      }
      if (frames > 1 && kpageflags_readable) {
        absl::StatusOr<std::vector<uint64_t>> flags = sys::ReadKpageflags(head, frames);
        if (!flags.ok()) {
          kpageflags_readable = false;
        } else if (!((*flags)[0] >> sys::kKpfCompoundHead & 1) ||
                   !((*flags)[frames - 1] >> sys::kKpfCompoundTail & 1)) {
          return absl::FailedPreconditionError(
              absl::StrFormat("register: PFN 0x%x at 0x%x is not the head of a %s compound page",
                              head, cur, PageSizeName(page)));
        }
      }
      auto folio = std::make_unique<Folio>();
      InitFolio(folio.get(),
                {.order = static_cast<uint8_t>(PageOrder(page)),
                 .backing = page > kPageSize4K ? BackingKind::kHugetlb : BackingKind::kAnon,
                 .head_pfn = head,
                 .data = reinterpret_cast<std::byte*>(cur),
                 .owner = region.get(),
                 .flags = kFolioBorrowed});
      region->folios.push_back({std::move(folio), *prot});
    }
  }
  for (size_t i = 0; i < region->folios.size(); ++i) {
    Folio* f = region->folios[i].folio.get();
    if (absl::Status st = Map(f, f->data, region->folios[i].prot); !st.ok()) {
      for (size_t j = 0; j < i; ++j) {
        Folio* m = region->folios[j].folio.get();
        (void)Unmap(m->data, m->size());
      }
      pgtable_internal::RcuSynchronize();  // readers may still hold the descriptors
      return st;
    }
  }
  std::lock_guard<std::mutex> lock(external_mu_);
  const uint64_t id = next_external_++;
  external_.emplace(id, std::move(region));
  return id;
}

absl::Status PageTable::UnregisterExternal(uint64_t id) {
  std::unique_ptr<ExternalRegion> region;
  {
    std::lock_guard<std::mutex> lock(external_mu_);
    auto it = external_.find(id);
    if (it == external_.end()) {
      return absl::NotFoundError(absl::StrCat("no external registration ", id));
    }
    region = std::move(it->second);
    external_.erase(it);
  }
  for (const auto& [f, prot] : region->folios) {
    absl::Status st = Unmap(f->data, f->size());
    if (!st.ok() && st.code() != absl::StatusCode::kNotFound) {
      // Put it back: its descriptors are still mapped and must stay.
      std::lock_guard<std::mutex> lock(external_mu_);
      external_.emplace(id, std::move(region));
      return st;
    }
  }
  for (const auto& [f, prot] : region->folios) {
    const int32_t refs = f->refcount.load(std::memory_order_acquire);
    if (refs != 1) {
      std::lock_guard<std::mutex> lock(external_mu_);
      const std::string what = absl::StrFormat(
          "unregister: the folio at %p still has %d references (pinned?)", f->data, refs);
      external_.emplace(id, std::move(region));
      return absl::FailedPreconditionError(what);
    }
  }
  pgtable_internal::RcuSynchronize();  // readers may still hold the descriptors
  return absl::OkStatus();
}

}  // namespace hugemm

// Memory the program mapped itself, described by what the kernel says about it.
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "hugemm/page_size.h"
#include "hugemm/pgtable.h"
#include "runtime/pgtable/external_region.h"
#include "runtime/pgtable/kernel_prot.h"
#include "runtime/pgtable/rcu.h"
#include "runtime/sys/pagemap.h"
#include "runtime/util/format.h"

namespace hugemm {

namespace {

// The protection the kernel gives a VMA, from smaps' VmFlags ("rd wr ex ..."). Memory the
// program may not read is refused: a device must never see more than the program may.
absl::StatusOr<Prot> KernelProt(const sys::Vma& vma, uintptr_t at) {
  const Prot prot = pgtable_internal::KernelProt(vma.flags);
  if (!HasAny(prot, kProtRead)) {
    return absl::PermissionDeniedError(hugemm::Format(
        "register: 0x%x is mapped without read access (VmFlags \"%s\")", at, vma.flags));
  }
  return prot;
}

}  // namespace

absl::StatusOr<uint64_t> PageTable::RegisterExternal(const void* p, size_t length) {
  return RegisterExternal(p, length,
                          [](absl::Span<const ExternalPage>) { return absl::OkStatus(); });
}

absl::StatusOr<uint64_t> PageTable::RegisterExternal(
    const void* p, size_t length,
    absl::FunctionRef<absl::Status(absl::Span<const ExternalPage>)> before_map) {
  const auto va = reinterpret_cast<uintptr_t>(p);
  if (absl::Status st = CheckMachineGeometry("register"); !st.ok()) return st;
  if (absl::Status st = CheckRange(va, length, "register"); !st.ok()) return st;
  absl::StatusOr<std::vector<sys::Vma>> vmas = sys::ReadVmas(os_);
  if (!vmas.ok()) return vmas.status();

  auto region = std::make_unique<ExternalRegion>();
  region->va = va;
  region->length = length;
  bool kpageflags_readable = true;
  for (uintptr_t cur = va; cur < va + length;) {
    const sys::Vma* vma = sys::FindVma(*vmas, cur);
    if (vma == nullptr) {
      return absl::NotFoundError(hugemm::Format("register: 0x%x is not mapped", cur));
    }
    absl::StatusOr<Prot> prot = KernelProt(*vma, cur);
    if (!prot.ok()) return prot.status();
    const size_t page = vma->kernel_page_size;
    if (page == 0 || cur % page != 0) {
      return absl::InvalidArgumentError(
          hugemm::Format("register: 0x%x is not aligned to the %s pages the kernel maps there", cur,
                         PageSizeName(page)));
    }
    const uintptr_t piece_end = std::min<uintptr_t>(vma->end, va + length);
    if ((piece_end - cur) % page != 0) {
      return absl::InvalidArgumentError(hugemm::Format("register: 0x%x does not end on a %s page",
                                                       piece_end, PageSizeName(page)));
    }
    const size_t frames = page / kPageSize4K;
    absl::StatusOr<std::vector<uint64_t>> pfns =
        sys::ReadPfnRange(os_, reinterpret_cast<const void*>(cur), (piece_end - cur) / kPageSize4K);
    if (!pfns.ok()) return pfns.status();
    for (size_t k = 0; cur < piece_end; ++k, cur += page) {
      const uint64_t head = (*pfns)[k * frames];
      if (head == kUnknownPfn) {
        if (!sys::CanReadPfns(os_)) {
          return absl::PermissionDeniedError(
              hugemm::Format("register: the kernel hides PFNs from this process (pagemap needs "
                             "CAP_SYS_ADMIN); cannot learn the frame at 0x%x",
                             cur));
        }
        return absl::FailedPreconditionError(
            hugemm::Format("register: 0x%x is not faulted in (no frame in pagemap)", cur));
      }
      for (size_t j = 1; j < frames; ++j) {
        if ((*pfns)[k * frames + j] != head + j) {
          return absl::FailedPreconditionError(hugemm::Format(
              "register: the %s page at 0x%x is not physically contiguous at frame %u",
              PageSizeName(page), cur, j));
        }
      }
      if (frames > 1 && kpageflags_readable) {
        absl::StatusOr<std::vector<uint64_t>> flags = sys::ReadKpageflags(os_, head, frames);
        if (!flags.ok()) {
          kpageflags_readable = false;
        } else if (!((*flags)[0] >> sys::kKpfCompoundHead & 1) ||
                   !((*flags)[frames - 1] >> sys::kKpfCompoundTail & 1)) {
          return absl::FailedPreconditionError(
              hugemm::Format("register: PFN 0x%x at 0x%x is not the head of a %s compound page",
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
  {
    std::vector<ExternalPage> pages;
    pages.reserve(region->folios.size());
    for (const ExternalRegion::Borrowed& b : region->folios)
      pages.push_back({b.folio.get(), b.prot});
    if (absl::Status st = before_map(pages); !st.ok()) return st;
  }
  // What is mapped goes again on every way out but the last, a throw's too (the heap ran
  // out): the region's descriptors are freed with it, and an unmap needs no heap.
  size_t mapped = 0;
  const auto unmap_mapped = [&] {
    for (size_t j = 0; j < mapped; ++j) {
      Folio* m = region->folios[j].folio.get();
      (void)Unmap(m->data, m->size());
    }
    pgtable_internal::RcuSynchronize();  // readers may still hold the descriptors
  };
  try {
    for (; mapped < region->folios.size(); ++mapped) {
      Folio* f = region->folios[mapped].folio.get();
      if (absl::Status st = Map(f, f->data, region->folios[mapped].prot); !st.ok()) {
        unmap_mapped();
        return st;
      }
    }
    std::lock_guard<std::mutex> lock(external_mu_);
    const uint64_t id = next_external_++;
    // A throw here leaves `region` where it was: map nodes are made before the move.
    external_.emplace(id, std::move(region));
    return id;
  } catch (...) {
    unmap_mapped();
    throw;
  }
}

// Unregistering unmaps the registration's folios and frees their descriptors, which must
// then be referenced by nothing but the registration itself. A refusal changes nothing:
// the references are checked before anything is unmapped, and a pin that slips in
// between that check and the unmap is found after it, and the mappings are put back.
absl::Status PageTable::UnregisterExternal(uint64_t id) {
  // The region stays in the map, marked, until the unregistration is done: on every way
  // out short of that (a refusal, or the heap running out midway), its descriptors, which
  // the table may still map, stay alive with it.
  ExternalRegion* region = nullptr;
  {
    std::lock_guard<std::mutex> lock(external_mu_);
    auto it = external_.find(id);
    if (it == external_.end() || it->second->leaving) {
      return absl::NotFoundError(
          absl::StrCat("no external registration ", id,
                       it == external_.end() ? "" : " (another thread is unregistering it)"));
    }
    region = it->second.get();
    region->leaving = true;
  }
  auto stay = [&] {
    std::lock_guard<std::mutex> lock(external_mu_);
    region->leaving = false;
  };
  // Each folio's leaves as they are: what to unmap, and what to put back.
  std::vector<std::vector<LogicalLeaf>> leaves;
  bool unmapping = false;
  try {
    leaves.reserve(region->folios.size());
    for (const ExternalRegion::Borrowed& b : region->folios) {
      leaves.push_back(LeavesOf(b.folio.get()));
      if (absl::Status st = CheckOnlyMapped(b.folio.get(), leaves.back(), 1); !st.ok()) {
        stay();
        return st;
      }
    }
    unmapping = true;
    absl::Status failed;
    for (const std::vector<LogicalLeaf>& l : leaves) {
      failed = UnmapRuns(l);
      if (!failed.ok()) break;
    }
    for (size_t i = 0; failed.ok() && i < region->folios.size(); ++i) {
      failed = CheckOnlyMapped(region->folios[i].folio.get(), {}, 1);
    }
    if (!failed.ok()) {
      absl::Status why = RestoreExternal(*region, leaves, failed);
      stay();
      return why;
    }
  } catch (...) {
    // Out of heap: the mappings taken down so far go back as far as they can (without
    // the heap that may fail too, and whatever is left unmapped stays registered to be
    // unregistered again).
    if (unmapping) {
      try {
        (void)RestoreExternal(*region, leaves, absl::OkStatus());
      } catch (...) {
      }
    }
    stay();
    throw;
  }
  std::unique_ptr<ExternalRegion> gone;
  {
    std::lock_guard<std::mutex> lock(external_mu_);
    auto it = external_.find(id);
    gone = std::move(it->second);
    external_.erase(it);
  }
  pgtable_internal::RcuSynchronize();  // readers may still hold the descriptors
  return absl::OkStatus();
}

std::vector<LogicalLeaf> PageTable::LeavesOf(const Folio* folio) const {
  std::vector<LogicalLeaf> out;
  Walk(folio->data, folio->size(), [&](const LogicalLeaf& l) {
    if (l.folio == folio) out.push_back(l);
  });
  return out;
}

absl::Status PageTable::CheckOnlyMapped(const Folio* folio, absl::Span<const LogicalLeaf> leaves,
                                        int32_t owner_refs) const {
  int32_t expected = owner_refs;
  for (const LogicalLeaf& l : leaves) {
    expected += l.cont ? int32_t{1} << cont_shift_[l.level] : 1;  // one per entry
  }
  const int32_t refs = folio->refcount();
  if (refs == expected) return absl::OkStatus();
  return absl::FailedPreconditionError(hugemm::Format(
      "unregister: the folio at %p has %d references besides its registration and its "
      "mappings (pinned?); nothing changed",
      folio->data, refs - expected));
}

absl::Status PageTable::UnmapRuns(absl::Span<const LogicalLeaf> leaves) {
  for (size_t i = 0; i < leaves.size();) {
    // One unmap per run of adjacent leaves: a split folio's 512 PTEs are one range.
    size_t j = i + 1;
    while (j < leaves.size() && leaves[j].va == leaves[j - 1].va + leaves[j - 1].bytes) ++j;
    const uintptr_t end = leaves[j - 1].va + leaves[j - 1].bytes;
    if (absl::Status st = Unmap(reinterpret_cast<const void*>(leaves[i].va), end - leaves[i].va);
        !st.ok()) {
      return st;
    }
    i = j;
  }
  return absl::OkStatus();
}

// Maps each folio of `region` back as `leaves` recorded it: whole, then the holes, the
// splits, the protections and the device-exclusive entries it had. Returns `why`, with
// what could not be put back appended.
absl::Status PageTable::RestoreExternal(const ExternalRegion& region,
                                        absl::Span<const std::vector<LogicalLeaf>> leaves,
                                        const absl::Status& why) {
  std::string failed;
  auto note = [&](const absl::Status& st) {
    if (!st.ok() && st.code() != absl::StatusCode::kAlreadyExists) {
      absl::StrAppend(&failed, "; putting back: ", st.message());
    }
  };
  for (size_t f = 0; f < region.folios.size(); ++f) {
    const ExternalRegion::Borrowed& b = region.folios[f];
    const std::vector<LogicalLeaf>& was = leaves[f];
    if (was.empty()) continue;
    note(Map(b.folio.get(), b.folio->data, b.prot));
    auto at = [](uintptr_t va) { return reinterpret_cast<const void*>(va); };
    uintptr_t cur = reinterpret_cast<uintptr_t>(b.folio->data);
    for (const LogicalLeaf& l : was) {
      if (l.va > cur) note(Unmap(at(cur), l.va - cur));
      cur = l.va + l.bytes;
    }
    const uintptr_t end = reinterpret_cast<uintptr_t>(b.folio->data) + b.folio->size();
    if (cur < end) note(Unmap(at(cur), end - cur));
    for (const LogicalLeaf& l : was) {
      for (std::optional<Translation> t = Translate(at(l.va)); t && t->leaf_bytes > l.bytes;
           t = Translate(at(l.va))) {
        if (absl::Status st = Split(at(l.va)); !st.ok()) {
          note(st);
          break;
        }
      }
      if (l.prot != b.prot) note(Protect(at(l.va), l.bytes, l.prot));
      if (l.exclusive) note(MakeExclusive(at(l.va), l.exclusive_owner));
    }
  }
  if (failed.empty()) return why;
  return absl::Status(why.code(), absl::StrCat(why.message(), failed));
}

}  // namespace hugemm

// The protection the kernel gives a VMA, as the shadow table spells protections: what
// registration copies and what verification holds each leaf against.
#ifndef HUGEMM_RUNTIME_PGTABLE_KERNEL_PROT_H_
#define HUGEMM_RUNTIME_PGTABLE_KERNEL_PROT_H_

#include <string>

#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "hugemm/pgtable.h"

namespace hugemm::pgtable_internal {

// From smaps' VmFlags ("rd wr ex mr ...").
inline Prot KernelProt(absl::string_view vm_flags) {
  Prot prot = kProtNone;
  for (absl::string_view flag : absl::StrSplit(vm_flags, ' ', absl::SkipEmpty())) {
    if (flag == "rd") prot |= kProtRead;
    if (flag == "wr") prot |= kProtWrite;
    if (flag == "ex") prot |= kProtExec;
  }
  return prot;
}

// "rw-", "r--", "r-x", as /proc/self/maps spells them.
inline std::string ProtLetters(Prot prot) {
  return {HasAny(prot, kProtRead) ? 'r' : '-', HasAny(prot, kProtWrite) ? 'w' : '-',
          HasAny(prot, kProtExec) ? 'x' : '-'};
}

}  // namespace hugemm::pgtable_internal

#endif  // HUGEMM_RUNTIME_PGTABLE_KERNEL_PROT_H_

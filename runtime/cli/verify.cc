// `hugemm verify`: maps a buffer of each page size this machine offers, and a page of a
// device-DAX device when there is one, mirrors them in a shadow table and holds every
// leaf against the live kernel.
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "hugemm/backing.h"
#include "hugemm/pgtable.h"
#include "runtime/cli/command.h"
#include "runtime/sys/pagemap.h"
#include "runtime/util/format.h"

namespace hugemm::cli {
namespace {

struct Source {
  const char* name;
  BackingKind kind;
  size_t page_size;
  size_t pages;
};

std::unique_ptr<Folio> FolioFor(const Extent& e, size_t i) {
  auto f = std::make_unique<Folio>();
  InitFolioForPage(f.get(), e, i);
  return f;
}

struct VerifyFlags {
  bool json = false;
  std::vector<std::string> range;  // ADDR LEN, both checked by AddressValue
  std::string dax;                 // the device-DAX device to check; "" = the first usable
  std::string sysfs_root = "/sys";
};

// The device-DAX device to check when none is named: the first one the devdax backing
// can use (the test `hugemm info` shows), else NotFound saying why there is none.
absl::StatusOr<DaxDeviceInfo> FirstUsableDaxDevice(const std::string& sysfs_root) {
  absl::StatusOr<std::vector<DaxDeviceInfo>> all = ListDaxDevices(sysfs_root);
  if (!all.ok()) return all.status();
  if (all->empty()) {
    return absl::NotFoundError(absl::StrCat("no device under ", sysfs_root, "/bus/dax/devices"));
  }
  std::vector<std::string> why;
  for (DaxDeviceInfo& d : *all) {
    absl::Status st = CheckDaxDeviceOpens(d, sysfs_root);
    if (st.ok()) return std::move(d);
    why.push_back(std::string(st.message()));  // each names its device
  }
  return absl::NotFoundError(absl::StrCat("no usable device: ", absl::StrJoin(why, "; ")));
}

// What Verify cannot hold a device-DAX page against: the kernel's pagemap shows no PFN
// for a PUD-mapped (1G) device page, and kpageflags no flags for any (ZONE_DEVICE memory
// has no online struct page: it reads KPF_NOPAGE, or nothing at all past the last page
// of RAM). So the shadow table's PFN of the first and last frame of each device page is
// held against where the device's sysfs ranges put that byte of the device, and against
// kpageflags: a PFN of ordinary RAM would show its flags there.
struct DaxFrames {
  VerifyReport report;  // mismatches only
  bool sysfs_checked = false;
  bool kpageflags_checked = false;
};
DaxFrames CheckDaxFrames(const PageTable& table, const Extent& e, const DaxDeviceInfo& info) {
  DaxFrames out;
  out.sysfs_checked = !info.ranges.empty();
  for (size_t page = 0; page < e.page_count(); ++page) {
    for (size_t frame : {size_t{0}, e.page_size() / kPageSize4K - 1}) {
      const size_t at = page * e.page_size() + frame * kPageSize4K;
      const uintptr_t va = reinterpret_cast<uintptr_t>(e.data()) + at;
      std::optional<Translation> t = table.Translate(reinterpret_cast<const void*>(va));
      auto mismatch = [&](const std::string& what) {
        out.report.mismatches.push_back({va, Format("0x%x: %s", va, what)});
      };
      if (!t.has_value() || t->pfn == kUnknownPfn) {
        mismatch("the shadow table has no PFN for this device-DAX page");
        continue;
      }
      if (out.sysfs_checked) {
        const uint64_t phys = info.PhysicalAddress(e.offset() + at);
        if (phys == ~uint64_t{0} || phys >> kPageShift != t->pfn) {
          mismatch(
              Format("shadow has PFN 0x%x, %s's sysfs ranges put byte 0x%x of the "
                     "device at %s",
                     t->pfn, info.name, e.offset() + at,
                     phys == ~uint64_t{0} ? "no address" : Format("PFN 0x%x", phys >> kPageShift)));
        }
      }
      // kpageflags ends at the last page of RAM (OutOfRange): a device above it has none.
      absl::StatusOr<std::vector<uint64_t>> flags = sys::ReadKpageflags(Os::Default(), t->pfn, 1);
      if (!flags.ok() && flags.status().code() != absl::StatusCode::kOutOfRange) {
        continue;  // unreadable: root only
      }
      out.kpageflags_checked = true;
      if (flags.ok() && ((*flags)[0] >> sys::kKpfNoPage & 1) == 0) {
        mismatch(
            Format("shadow has PFN 0x%x, which kpageflags describes as a page of "
                   "RAM (flags 0x%x), not device memory (NOPAGE)",
                   t->pfn, (*flags)[0]));
      }
    }
  }
  return out;
}

int RunVerify(const VerifyFlags& flags) {
  const bool json = flags.json;
  uintptr_t range_va = 0;
  size_t range_len = 0;
  if (flags.range.size() == 2) {
    range_va = *ParseAddress(flags.range[0]);
    range_len = *ParseAddress(flags.range[1]);
    // What no mapping of this process can be is the command line's fault.
    if (range_len == 0 || range_va % kPageSize4K != 0 || range_len % kPageSize4K != 0 ||
        range_len > UINTPTR_MAX - range_va) {
      return Usage("verify", absl::InvalidArgumentError(
                                 Format("--range %s %s: not a non-empty range of whole 4K pages",
                                        flags.range[0], flags.range[1])));
    }
  }

  // Folios and extents outlive the table, which drops its references when it dies.
  std::vector<Extent> extents;
  std::vector<std::unique_ptr<Folio>> folios;
  auto table = std::make_unique<PageTable>(DetectHostGeometry());
  Json out = {{"geometry", table->geometry().name}};
  Json skipped = Json::array();
  Json mismatches = Json::array();
  // What failed the run beyond a mismatch (a mapping the table refused, PFNs the process
  // may not read, a device asked for that could not be mapped): said on stderr, and in
  // the JSON object's errors[].
  Json errors = Json::array();
  std::map<size_t, size_t> leaves;
  bool failed = false;
  auto error = [&](const std::string& what) {
    std::fprintf(stderr, "hugemm verify: %s\n", what.c_str());
    errors.push_back(what);
    failed = true;
  };
  bool pfns_hidden = false;
  auto absorb = [&](const VerifyReport& r) {
    for (const auto& [size, n] : r.leaves_checked) leaves[size] += n;
    for (const VerifyMismatch& m : r.mismatches) {
      if (!json) std::printf("mismatch: %s\n", m.what.c_str());
      mismatches.push_back({{"address", Format("0x%x", m.va)}, {"what", m.what}});
    }
  };

  // Mirrors every page of `e` as a folio and holds the table over it against the kernel;
  // an error when the kernel could not be read.
  auto map_and_verify = [&](const Extent& e,
                            const std::string& name) -> absl::StatusOr<VerifyReport> {
    for (size_t i = 0; i < e.page_count(); ++i) {
      folios.push_back(FolioFor(e, i));
      if (absl::Status st =
              table->Map(folios.back().get(), folios.back()->data, kProtRead | kProtWrite);
          !st.ok()) {
        error(absl::StrCat(name, ": ", st.message()));
      }
    }
    absl::StatusOr<VerifyReport> r = table->Verify(e.data(), e.size());
    if (!r.ok()) return r.status();
    if (!r->pfns_checked) {
      // Once, not for every page size: it is the process that may not read them.
      if (!pfns_hidden) error("pagemap hides PFNs (needs CAP_SYS_ADMIN)");
      pfns_hidden = true;
    }
    absorb(*r);
    return r;
  };

  const Source sources[] = {{"anon 4K", BackingKind::kAnon, kPageSize4K, 64},
                            {"hugetlb 2M", BackingKind::kHugetlb, kPageSize2M, 4},
                            {"hugetlb 1G", BackingKind::kHugetlb, kPageSize1G, 1}};
  for (const Source& s : sources) {
    absl::StatusOr<std::shared_ptr<Backing>> b =
        Backing::Create({.kind = s.kind, .page_size = s.page_size});
    absl::StatusOr<Extent> e =
        b.ok() ? (*b)->Map({.length = s.pages * s.page_size}) : absl::StatusOr<Extent>(b.status());
    if (!e.ok()) {
      // A failed Map names the backing ("hugetlb 2M: map 8 MiB: ..."); Create may not.
      const std::string why = b.ok() ? std::string(e.status().message())
                                     : Format("%s: %s", s.name, e.status().message());
      // A machine without those pages is a skip; a process without a descriptor left
      // could not do the check at all.
      if (const int err = ErrnoOf(e.status()); err == EMFILE || err == ENFILE) {
        error(why);
        continue;
      }
      if (!json) std::printf("skipped %s\n", why.c_str());
      skipped.push_back(why);
      continue;
    }
    absl::StatusOr<VerifyReport> r = map_and_verify(*e, s.name);
    if (!r.ok()) return Fail("verify", r.status());
    extents.push_back(std::move(*e));
  }
  // Device-DAX: one page (of the device's alignment) of the device named, or of the first
  // usable one. Mapping it writes nothing to it.
  Json devdax;  // what was checked, when a device was
  absl::StatusOr<DaxDeviceInfo> dax = flags.dax.empty()
                                          ? FirstUsableDaxDevice(flags.sysfs_root)
                                          : ReadDaxDevice(flags.dax, flags.sysfs_root);
  if (dax.ok() && !flags.dax.empty()) dax->path = flags.dax;
  absl::StatusOr<std::shared_ptr<Backing>> dax_backing =
      dax.ok() ? Backing::Create({.kind = BackingKind::kDevDax,
                                  .devdax_path = dax->path,
                                  .sysfs_root = flags.sysfs_root})
               : absl::StatusOr<std::shared_ptr<Backing>>(dax.status());
  absl::StatusOr<Extent> dax_extent = dax_backing.ok()
                                          ? (*dax_backing)->Map({.length = dax->align})
                                          : absl::StatusOr<Extent>(dax_backing.status());
  if (!dax_extent.ok()) {
    const std::string why = absl::StrCat("device-DAX: ", dax_extent.status().message());
    const int err = ErrnoOf(dax_extent.status());
    // Asked for, or no descriptor left to try: not checking it is a failure.
    if (!flags.dax.empty() || err == EMFILE || err == ENFILE) {
      error(why);
    } else {
      if (!json) std::printf("skipped %s\n", why.c_str());
      skipped.push_back(why);
    }
  } else {
    const Extent& e = *dax_extent;
    absl::StatusOr<VerifyReport> r = map_and_verify(e, dax->path);
    if (!r.ok()) return Fail("verify", r.status());
    const DaxFrames frames = CheckDaxFrames(*table, e, *dax);
    absorb(frames.report);
    const bool in_pagemap = r->pfns_checked && r->pfns_hidden == 0;
    devdax = {{"device", dax->path},
              {"page_size", e.page_size()},
              {"pages", e.page_count()},
              {"pfns_in_pagemap", in_pagemap},
              {"pfns_vs_sysfs", frames.sysfs_checked},
              {"kpageflags_checked", frames.kpageflags_checked}};
    if (!json) {
      std::printf("device-DAX %s: %zu page of %s; PFNs held against %s%s%s\n", dax->path.c_str(),
                  e.page_count(), PageSizeName(e.page_size()).c_str(),
                  in_pagemap ? "pagemap" : "nothing in pagemap (it hides PUD-mapped device-DAX)",
                  frames.sysfs_checked ? ", the device's sysfs ranges" : "",
                  frames.kpageflags_checked ? ", kpageflags (no page of RAM)" : "");
    }
    extents.push_back(std::move(*dax_extent));
  }

  if (range_len != 0) {
    const void* va = reinterpret_cast<const void*>(range_va);
    absl::StatusOr<uint64_t> id = table->RegisterExternal(va, range_len);
    absl::StatusOr<VerifyReport> r =
        id.ok() ? table->Verify(va, range_len) : absl::StatusOr<VerifyReport>(id.status());
    if (!r.ok()) {
      error(absl::StrCat("range: ", r.status().message()));
    } else {
      absorb(*r);
    }
  }

  Json counts = Json::object();
  size_t total = 0;
  std::string summary;
  for (const auto& [size, n] : leaves) {
    counts[PageSizeName(size)] = n;
    total += n;
    summary += Format("%s%s: %u", summary.empty() ? "" : ", ", PageSizeName(size), n);
  }
  const size_t bad = mismatches.size();
  const bool ok = !failed && bad == 0 && total > 0;
  if (json) {
    out["leaves_checked"] = std::move(counts);
    out["mismatch_count"] = bad;
    out["mismatches"] = std::move(mismatches);
    out["skipped"] = std::move(skipped);
    out["errors"] = std::move(errors);
    if (!devdax.is_null()) out["devdax"] = std::move(devdax);
    out["ok"] = ok;
    PrintJson(out);
  } else {
    std::printf("%s: %zu leaves checked (%s), %zu mismatches: %s\n", table->geometry().name.c_str(),
                total, summary.c_str(), bad, ok ? "shadow agrees with the kernel" : "FAILED");
  }
  table.reset();
  return ok ? kExitOk : kExitFailed;
}

}  // namespace

void AddVerifyCommand(CommandTable& table, CLI::App* app) {
  auto flags = std::make_shared<VerifyFlags>();
  CLI::App* verify = table.Add(
      app, "verify",
      "Hold a shadow page table over 4K, 2M, 1G and device-DAX buffers against the kernel",
      [flags] { return RunVerify(*flags); });
  table.AddJsonFlag(verify, flags->json, "One JSON object");
  verify
      ->add_option("--range", flags->range,
                   "Also register the mapped range [ADDR, ADDR+LEN) of this process and "
                   "verify it (decimal or 0x hex)")
      ->expected(2)
      ->option_text("ADDR LEN")  // not CLI11's "ADDR LEN x 2": the two values are named
      ->check(AddressValue());
  verify
      ->add_option("--dax", flags->dax,
                   "Check this device-DAX device (a failure to map it fails the run); by "
                   "default the first usable one, and none is a skip")
      ->check(NonEmpty())
      ->type_name("DEVICE");
  // As for `hugemm info`: a root that is not there would read as a machine without devices.
  verify
      ->add_option("--sysfs-root", flags->sysfs_root,
                   "Read device-DAX sizes and physical ranges from DIR/bus/dax")
      ->check(CLI::Validator(CLI::ExistingDirectory).description(""))
      ->type_name("DIR")
      ->capture_default_str();
}

}  // namespace hugemm::cli

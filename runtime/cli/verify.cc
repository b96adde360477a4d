// `hugemm verify`: maps a buffer of each page size this machine offers, mirrors it in a
// shadow table and holds every leaf against the live kernel.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "hugemm/backing.h"
#include "hugemm/pgtable.h"
#include "runtime/cli/command.h"

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
};

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
      return Usage("verify", absl::InvalidArgumentError(absl::StrFormat(
                                 "--range %s %s: not a non-empty range of whole 4K pages",
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
  std::map<size_t, size_t> leaves;
  bool failed = false;
  bool pfns_hidden = false;
  auto absorb = [&](const VerifyReport& r) {
    for (const auto& [size, n] : r.leaves_checked) leaves[size] += n;
    for (const VerifyMismatch& m : r.mismatches) {
      if (!json) std::printf("mismatch: %s\n", m.what.c_str());
      mismatches.push_back({{"address", absl::StrFormat("0x%x", m.va)}, {"what", m.what}});
    }
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
                                     : absl::StrFormat("%s: %s", s.name, e.status().message());
      if (!json) std::printf("skipped %s\n", why.c_str());
      skipped.push_back(why);
      continue;
    }
    for (size_t i = 0; i < e->page_count(); ++i) {
      folios.push_back(FolioFor(*e, i));
      if (absl::Status st =
              table->Map(folios.back().get(), folios.back()->data, kProtRead | kProtWrite);
          !st.ok()) {
        std::fprintf(stderr, "hugemm verify: %s: %s\n", s.name, std::string(st.message()).c_str());
        failed = true;
      }
    }
    absl::StatusOr<VerifyReport> r = table->Verify(e->data(), e->size());
    if (!r.ok()) return Fail("verify", r.status());
    if (!r->pfns_checked) {
      // Once, not for every page size: it is the process that may not read them.
      if (!pfns_hidden) {
        std::fprintf(stderr, "hugemm verify: pagemap hides PFNs (needs CAP_SYS_ADMIN)\n");
      }
      pfns_hidden = true;
      failed = true;
    }
    absorb(*r);
    extents.push_back(std::move(*e));
  }
  if (range_len != 0) {
    const void* va = reinterpret_cast<const void*>(range_va);
    absl::StatusOr<uint64_t> id = table->RegisterExternal(va, range_len);
    absl::StatusOr<VerifyReport> r =
        id.ok() ? table->Verify(va, range_len) : absl::StatusOr<VerifyReport>(id.status());
    if (!r.ok()) {
      std::fprintf(stderr, "hugemm verify: range: %s\n", std::string(r.status().message()).c_str());
      failed = true;
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
    summary += absl::StrFormat("%s%s: %u", summary.empty() ? "" : ", ", PageSizeName(size), n);
  }
  const size_t bad = mismatches.size();
  const bool ok = !failed && bad == 0 && total > 0;
  if (json) {
    out["leaves_checked"] = std::move(counts);
    out["mismatch_count"] = bad;
    out["mismatches"] = std::move(mismatches);
    out["skipped"] = std::move(skipped);
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
      app, "verify", "Hold a shadow page table over 4K, 2M and 1G buffers against the kernel",
      [flags] { return RunVerify(*flags); });
  table.AddJsonFlag(verify, flags->json, "One JSON object");
  verify
      ->add_option("--range", flags->range,
                   "Also register the mapped range [ADDR, ADDR+LEN) of this process and "
                   "verify it (decimal or 0x hex)")
      ->expected(2)
      ->option_text("ADDR LEN")  // not CLI11's "ADDR LEN x 2": the two values are named
      ->check(AddressValue());
}

}  // namespace hugemm::cli

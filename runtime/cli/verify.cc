// `hugemm verify`: maps a buffer of each page size this machine offers, mirrors it in a
// shadow table and holds every leaf against the live kernel.
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
#include "runtime/util/json.h"

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

int RunVerify(const Args& in) {
  Args args = in;
  const bool json = TakeFlag(&args, "--json");
  uintptr_t range_va = 0;
  size_t range_len = 0;
  for (auto it = args.begin(); it != args.end(); ++it) {
    if (*it != "--range") continue;
    if (args.end() - it < 3) {
      std::fprintf(stderr, "hugemm verify: --range needs ADDR LEN\n");
      return 2;
    }
    range_va = std::strtoull((it + 1)->c_str(), nullptr, 0);
    range_len = std::strtoull((it + 2)->c_str(), nullptr, 0);
    args.erase(it, it + 3);
    break;
  }
  if (int rc = RejectLeftovers("verify", args)) return rc;

  // Folios and extents outlive the table, which drops its references when it dies.
  std::vector<Extent> extents;
  std::vector<std::unique_ptr<Folio>> folios;
  auto table = std::make_unique<PageTable>(DetectHostGeometry());
  Json out = Json::MakeObject();
  out.Set("geometry", table->geometry().name);
  Json skipped = Json::MakeArray();
  Json mismatches = Json::MakeArray();
  std::map<size_t, size_t> leaves;
  bool failed = false;
  auto absorb = [&](const VerifyReport& r) {
    for (const auto& [size, n] : r.leaves_checked) leaves[size] += n;
    for (const VerifyMismatch& m : r.mismatches) {
      if (!json) std::printf("mismatch: %s\n", m.what.c_str());
      Json j = Json::MakeObject();
      j.Set("address", absl::StrFormat("0x%x", m.va));
      j.Set("what", m.what);
      mismatches.Push(std::move(j));
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
      const std::string why = absl::StrFormat("%s: %s", s.name, e.status().message());
      if (!json) std::printf("skipped %s\n", why.c_str());
      skipped.Push(why);
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
    if (!r.ok()) {
      std::fprintf(stderr, "hugemm verify: %s\n", std::string(r.status().message()).c_str());
      return 1;
    }
    if (!r->pfns_checked) {
      std::fprintf(stderr, "hugemm verify: pagemap hides PFNs (needs CAP_SYS_ADMIN)\n");
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

  Json counts = Json::MakeObject();
  size_t total = 0;
  std::string summary;
  for (const auto& [size, n] : leaves) {
    counts.Set(PageSizeName(size), n);
    total += n;
    summary += absl::StrFormat("%s%s: %u", summary.empty() ? "" : ", ", PageSizeName(size), n);
  }
  const size_t bad = mismatches.as_array().size();
  const bool ok = !failed && bad == 0 && total > 0;
  if (json) {
    out.Set("leaves_checked", std::move(counts));
    out.Set("mismatch_count", bad);
    out.Set("mismatches", std::move(mismatches));
    out.Set("skipped", std::move(skipped));
    out.Set("ok", ok);
    std::printf("%s\n", out.Dump().c_str());
  } else {
    std::printf("%s: %zu leaves checked (%s), %zu mismatches: %s\n", table->geometry().name.c_str(),
                total, summary.c_str(), bad, ok ? "shadow agrees with the kernel" : "FAILED");
  }
  table.reset();
  return ok ? 0 : 1;
}

}  // namespace

HUGEMM_REGISTER_COMMAND("verify",
                        "hold a shadow page table over 4K / 2M / 1G buffers against the kernel "
                        "[--json] [--range ADDR LEN]",
                        RunVerify);

}  // namespace hugemm::cli

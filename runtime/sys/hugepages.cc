#include "runtime/sys/hugepages.h"

#include <algorithm>
#include <cerrno>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "hugemm/page_size.h"
#include "runtime/sys/files.h"

namespace hugemm::sys {
namespace {

std::string PoolDir(const std::string& base, size_t page_size) {
  return absl::StrCat(base, "/hugepages-", page_size / 1024, "kB");
}

bool IsOctal(char c) { return c >= '0' && c <= '7'; }

// /proc/mounts writes a space, tab, newline or backslash in a path as \ooo (octal): the
// path as the file system knows it.
std::string UnescapeMountField(absl::string_view field) {
  std::string out;
  for (size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 3 < field.size() && IsOctal(field[i + 1]) &&
        IsOctal(field[i + 2]) && IsOctal(field[i + 3])) {
      out.push_back(static_cast<char>(((field[i + 1] - '0') << 6) | ((field[i + 2] - '0') << 3) |
                                      (field[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(field[i]);
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<size_t>> HugePageSizes(Os& os, const std::string& sysfs_root) {
  absl::StatusOr<std::vector<std::string>> names =
      os.ListDir(absl::StrCat(sysfs_root, "/kernel/mm/hugepages"));
  if (!names.ok()) return names.status();
  std::vector<size_t> sizes;
  for (const std::string& n : *names) {
    size_t kb = 0;
    if (absl::StartsWith(n, "hugepages-") && absl::EndsWith(n, "kB") &&
        absl::SimpleAtoi(n.substr(10, n.size() - 12), &kb)) {
      sizes.push_back(kb * 1024);
    }
  }
  std::sort(sizes.begin(), sizes.end());
  return sizes;
}

absl::StatusOr<HugePagePool> ReadHugePagePool(Os& os, size_t page_size,
                                              const std::string& sysfs_root) {
  HugePagePool pool;
  pool.page_size = page_size;
  const std::string dir = PoolDir(absl::StrCat(sysfs_root, "/kernel/mm/hugepages"), page_size);
  struct Field {
    const char* name;
    int64_t* out;
  } fields[] = {{"nr_hugepages", &pool.nr},
                {"free_hugepages", &pool.free},
                {"resv_hugepages", &pool.resv},
                {"surplus_hugepages", &pool.surplus},
                {"nr_overcommit_hugepages", &pool.overcommit}};
  for (const Field& f : fields) {
    absl::StatusOr<int64_t> v = ReadCount(os, absl::StrCat(dir, "/", f.name));
    if (!v.ok()) return v.status();
    *f.out = *v;
  }
  absl::StatusOr<std::vector<int>> nodes = OnlineNodes(os, sysfs_root);
  if (!nodes.ok()) return nodes.status();
  for (int node : *nodes) {
    const std::string ndir = PoolDir(
        absl::StrCat(sysfs_root, "/devices/system/node/node", node, "/hugepages"), page_size);
    absl::StatusOr<bool> exists = PathExists(os, ndir);
    if (!exists.ok()) return exists.status();
    if (!*exists) continue;
    NodePool np;
    np.node = node;
    absl::StatusOr<int64_t> nr = ReadCount(os, ndir + "/nr_hugepages");
    absl::StatusOr<int64_t> fr = ReadCount(os, ndir + "/free_hugepages");
    absl::StatusOr<int64_t> su = ReadCount(os, ndir + "/surplus_hugepages");
    if (!nr.ok()) return nr.status();
    if (!fr.ok()) return fr.status();
    if (!su.ok()) return su.status();
    np.nr = *nr;
    np.free = *fr;
    np.surplus = *su;
    pool.nodes.push_back(np);
  }
  return pool;
}

absl::StatusOr<std::vector<int>> OnlineNodes(Os& os, const std::string& sysfs_root) {
  std::vector<int> nodes;
  absl::StatusOr<std::vector<std::string>> names =
      os.ListDir(absl::StrCat(sysfs_root, "/devices/system/node"));
  if (!names.ok() && ErrnoOf(names.status()) != ENOENT) return names.status();
  if (names.ok()) {
    for (const std::string& n : *names) {
      int id = 0;
      if (absl::StartsWith(n, "node") && absl::SimpleAtoi(n.substr(4), &id)) nodes.push_back(id);
    }
  }
  std::sort(nodes.begin(), nodes.end());
  if (nodes.empty()) nodes.push_back(0);
  return nodes;
}

absl::StatusOr<std::vector<HugetlbfsMount>> HugetlbfsMounts(Os& os,
                                                            const std::string& mounts_file) {
  absl::StatusOr<std::string> text = os.ReadFile(mounts_file);
  if (!text.ok()) return text.status();
  std::vector<HugetlbfsMount> mounts;
  for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (f.size() < 4 || f[2] != "hugetlbfs") continue;
    HugetlbfsMount m;
    m.path = UnescapeMountField(f[1]);
    m.page_size = DefaultHugePageSize(os);
    for (absl::string_view opt : absl::StrSplit(f[3], ',')) {
      if (absl::ConsumePrefix(&opt, "pagesize=")) {
        absl::StatusOr<size_t> ps = ParsePageSize(opt);
        if (ps.ok()) m.page_size = *ps;
      } else if (absl::ConsumePrefix(&opt, "size=")) {
        (void)absl::SimpleAtoi(opt, &m.size_limit);  // the kernel shows it in bytes
      }
    }
    mounts.push_back(std::move(m));
  }
  return mounts;
}

size_t DefaultHugePageSize(Os& os) {
  absl::StatusOr<uint64_t> bytes = ReadKibField(os, "/proc/meminfo", "Hugepagesize");
  return bytes.ok() ? *bytes : 0;
}

std::string DescribePool(Os& os, size_t page_size, int node, const std::string& sysfs_root) {
  absl::StatusOr<HugePagePool> pool = ReadHugePagePool(os, page_size, sysfs_root);
  if (!pool.ok()) return "";
  if (node < 0) {
    return absl::StrCat(PageSizeName(page_size), " pool: ", pool->free, " free, ", pool->resv,
                        " reserved, of ", pool->nr);
  }
  for (const NodePool& n : pool->nodes) {
    if (n.node == node) {
      return absl::StrCat(PageSizeName(page_size), " pool on node ", node, ": ", n.free,
                          " free of ", n.nr);
    }
  }
  return absl::StrCat(PageSizeName(page_size), " pool: none on node ", node);
}

}  // namespace hugemm::sys

// The library on two NUMA nodes, in the VM (tests/vm --numa 2 --dax-node 1): placement
// is checked with the kernel's own answer (move_pages), never with hugemm's word.
//   - buffers and allocations asked for a node are on that node;
//   - `hugemm info` lists both nodes' pools and the device-DAX device's node;
//   - per-node pools never mix, whatever is freed and allocated again;
//   - exhausting node 1 is an error naming node 1 and its counts, and node 0 keeps its
//     pages;
//   - two device-DAX buffers of one runtime never share memory;
//   - a thread bound to other nodes is served the node it asks for, and keeps its
//     memory policy;
//   - a node outside the process's cpuset is refused with an error that says so.
// Outside a two-node VM every test skips.
#include <linux/mempolicy.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "hugemm/backing.h"
#include "hugemm/runtime.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace hugemm {
namespace {

constexpr size_t k2M = kPageSize2M;

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : fallback;
}

// The node of each `step`-th byte of [p, p + length), from move_pages (a negative errno
// where the kernel has none).
std::vector<int> KernelNodes(const void* p, size_t length, size_t step) {
  std::vector<void*> pages;
  for (size_t off = 0; off < length; off += step) {
    pages.push_back(const_cast<std::byte*>(static_cast<const std::byte*>(p) + off));
  }
  std::vector<int> status(pages.size(), -1);
  if (syscall(SYS_move_pages, 0, pages.size(), pages.data(), nullptr, status.data(), 0) != 0) {
    return std::vector<int>(pages.size(), -errno);
  }
  return status;
}

bool AllOn(const std::vector<int>& nodes, int node) {
  for (int n : nodes) {
    if (n != node) return false;
  }
  return !nodes.empty();
}

std::string PoolFile(int node, const char* file) {
  return "/sys/devices/system/node/node" + std::to_string(node) + "/hugepages/hugepages-2048kB/" +
         file;
}

int64_t ReadPool(int node, const char* file) {
  std::ifstream in(PoolFile(node, file));
  int64_t v = -1;
  in >> v;
  return v;
}

bool WritePool(int node, int64_t pages) {
  std::ofstream out(PoolFile(node, "nr_hugepages"));
  out << pages << std::endl;
  return static_cast<bool>(out) && ReadPool(node, "nr_hugepages") == pages;
}

std::string RunCli(const std::string& args) {
  std::string out;
  FILE* p = popen((std::string(HUGEMM_CLI_PATH) + " " + args + " 2>&1").c_str(), "r");
  if (p == nullptr) return out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  pclose(p);
  return out;
}

class NumaVmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (EnvInt("HUGEMM_IN_VM", 0) != 1 || EnvInt("HUGEMM_TEST_NUMA_NODES", 1) < 2) {
      GTEST_SKIP() << "needs the two-node VM (tests/vm --numa 2)";
    }
    absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
    ASSERT_TRUE(rt.ok()) << rt.status();
    rt_ = std::move(*rt);
  }

  std::unique_ptr<Runtime> rt_;
};

TEST_F(NumaVmTest, BuffersAskedForANodeAreOnIt) {
  for (int node : {1, 0}) {
    absl::StatusOr<Buffer> buf = rt_->MapBuffer(4 * k2M, {.node = node});
    ASSERT_TRUE(buf.ok()) << buf.status();
    EXPECT_TRUE(AllOn(KernelNodes(buf->data(), buf->size(), k2M), node)) << "node " << node;
    absl::StatusOr<FolioInfo> info = rt_->FolioInfoAt(buf->data());
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->node, node);
  }
}

TEST_F(NumaVmTest, AllocationsAskedForANodeAreOnIt) {
  for (int node : {1, 0}) {
    for (size_t bytes : {size_t{4} << 10, size_t{64} << 10, k2M}) {
      absl::StatusOr<Buffer> buf = rt_->Allocate(bytes, {.node = node});
      ASSERT_TRUE(buf.ok()) << buf.status();
      EXPECT_TRUE(AllOn(KernelNodes(buf->data(), buf->size(), kPageSize4K), node))
          << HumanBytes(bytes) << " on node " << node;
    }
  }
}

TEST_F(NumaVmTest, PerNodePoolsNeverMix) {
  // Folios of both nodes freed and allocated in turns, so that each node's free lists
  // and per-thread caches see the other node's folios come and go.
  std::vector<Buffer> held[2];
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < 16; ++i) {
      for (int node : {0, 1}) {
        absl::StatusOr<Buffer> buf = rt_->Allocate(size_t{128} << 10, {.node = node});
        ASSERT_TRUE(buf.ok()) << buf.status();
        ASSERT_TRUE(AllOn(KernelNodes(buf->data(), buf->size(), kPageSize4K), node))
            << "round " << round << ": a node " << node << " folio is elsewhere";
        held[node].push_back(std::move(*buf));
      }
    }
    held[round % 2].clear();  // one node's folios go back, then both allocate again
  }
  int pools_per_node[2] = {0, 0};
  for (const PoolStats& s : rt_->allocator().Stats()) {
    ASSERT_TRUE(s.node == 0 || s.node == 1) << s.describe << " has node " << s.node;
    ++pools_per_node[s.node];
    EXPECT_GT(s.mapped_bytes, 0u) << s.describe;
  }
  EXPECT_EQ(pools_per_node[0], 1);
  EXPECT_EQ(pools_per_node[1], 1);
}

TEST_F(NumaVmTest, InfoListsBothNodesPoolsAndTheDaxNode) {
  const nlohmann::json json = nlohmann::json::parse(RunCli("info --json"), nullptr, false);
  ASSERT_FALSE(json.is_discarded()) << "hugemm info --json printed no JSON";
  ASSERT_TRUE(json.contains("numa_nodes"));
  ASSERT_EQ(json["numa_nodes"].size(), 2u);
  const nlohmann::json* two_meg = nullptr;
  for (const nlohmann::json& pool : json["pools"]) {
    if (pool["page_size"].get<int64_t>() == static_cast<int64_t>(k2M)) two_meg = &pool;
  }
  ASSERT_NE(two_meg, nullptr);
  int seen = 0;
  for (const nlohmann::json& n : (*two_meg)["nodes"]) {
    const int node = n["node"].get<int>();
    EXPECT_EQ(n["nr"].get<int64_t>(), ReadPool(node, "nr_hugepages")) << "node " << node;
    EXPECT_EQ(n["free"].get<int64_t>(), ReadPool(node, "free_hugepages")) << "node " << node;
    seen |= 1 << node;
  }
  EXPECT_EQ(seen, 3) << "the 2M pool does not list nodes 0 and 1";
  ASSERT_TRUE(json.contains("dax_devices"));
  ASSERT_EQ(json["dax_devices"].size(), 1u);
  EXPECT_EQ(json["dax_devices"][0]["numa_node"].get<int>(), EnvInt("HUGEMM_TEST_DAX_NODE", -1));
  // And for people: a row per node under the 2M pool, and the device's node.
  const std::string text = RunCli("info");
  EXPECT_TRUE(std::regex_search(text, std::regex("\\n\\s+0\\s+\\d+")) &&
              std::regex_search(text, std::regex("\\n\\s+1\\s+\\d+")))
      << text;
  EXPECT_NE(text.find("node " + std::to_string(EnvInt("HUGEMM_TEST_DAX_NODE", -1))),
            std::string::npos)
      << text;
}

TEST_F(NumaVmTest, DaxMemoryIsOnTheDevicesNode) {
  const int dax_node = EnvInt("HUGEMM_TEST_DAX_NODE", -1);
  const char* dax = std::getenv("HUGEMM_TEST_DAX");
  ASSERT_NE(dax, nullptr);
  absl::StatusOr<DaxDeviceInfo> info = ReadDaxDevice(dax);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->numa_node, dax_node);
  absl::StatusOr<Buffer> buf = rt_->MapBuffer(
      info->align, {.backing = BackingKind::kDevDax, .node = dax_node, .devdax_path = dax});
  ASSERT_TRUE(buf.ok()) << buf.status();
  absl::StatusOr<FolioInfo> folio = rt_->FolioInfoAt(buf->data());
  ASSERT_TRUE(folio.ok()) << folio.status();
  EXPECT_EQ(folio->node, dax_node);
  absl::StatusOr<Buffer> elsewhere = rt_->MapBuffer(
      info->align, {.backing = BackingKind::kDevDax, .node = 1 - dax_node, .devdax_path = dax});
  EXPECT_FALSE(elsewhere.ok());
  EXPECT_NE(elsewhere.status().message().find("node " + std::to_string(dax_node)),
            std::string::npos)
      << elsewhere.status();
  // The allocator's one pool per device refuses the other node too, before and after the
  // pool exists, and serves the device's own.
  const AllocOptions alloc_elsewhere{
      .backing = BackingKind::kDevDax, .page_size = 0, .node = 1 - dax_node, .devdax_path = dax};
  for (int round = 0; round < 2; ++round) {
    absl::StatusOr<Buffer> small = rt_->Allocate(kPageSize4K, alloc_elsewhere);
    ASSERT_FALSE(small.ok()) << "round " << round;
    EXPECT_EQ(small.status().code(), absl::StatusCode::kInvalidArgument) << small.status();
    EXPECT_NE(small.status().message().find("node " + std::to_string(dax_node)), std::string::npos)
        << small.status();
    absl::StatusOr<Buffer> own = rt_->Allocate(
        kPageSize4K,
        {.backing = BackingKind::kDevDax, .page_size = 0, .node = dax_node, .devdax_path = dax});
    ASSERT_TRUE(own.ok()) << own.status();
    absl::StatusOr<FolioInfo> own_folio = rt_->FolioInfoAt(own->data());
    ASSERT_TRUE(own_folio.ok()) << own_folio.status();
    EXPECT_EQ(own_folio->node, dax_node);
  }
}

// Node 1's pool shrunk to a size no other count has. It stays so: growing it back in a
// small node after the boot may find no free 2M of memory, and the VM is thrown away.
class NumaExhaustTest : public NumaVmTest {
 protected:
  static constexpr int64_t kNode1Pages = 7;

  void SetUp() override {
    NumaVmTest::SetUp();
    if (IsSkipped()) return;
    ASSERT_GE(ReadPool(1, "nr_hugepages"), kNode1Pages);
    ASSERT_TRUE(WritePool(1, kNode1Pages));
    ASSERT_EQ(ReadPool(1, "free_hugepages"), kNode1Pages);
    node0_free_ = ReadPool(0, "free_hugepages");
  }

  // Allocates 2M folios on node 1 until it fails; returns the error.
  absl::Status ExhaustNode1(std::vector<Buffer>* got) {
    for (int i = 0; i <= kNode1Pages + 2; ++i) {
      absl::StatusOr<Buffer> buf = rt_->Allocate(k2M, {.node = 1});
      if (!buf.ok()) return buf.status();
      EXPECT_TRUE(AllOn(KernelNodes(buf->data(), k2M, k2M), 1));
      got->push_back(std::move(*buf));
      EXPECT_EQ(ReadPool(0, "free_hugepages"), node0_free_) << "node 0 gave a page for node 1";
    }
    return absl::OkStatus();
  }

  // The error names node 1 and node 1's own counts: its free pages and its total, not
  // the machine's.
  static void ExpectNamesNode1(const absl::Status& st, int64_t free) {
    const std::string m(st.message());
    ASSERT_NE(m.find("node 1"), std::string::npos) << m;
    const std::string counts = m.substr(m.find("node 1") + 6);
    EXPECT_TRUE(std::regex_search(counts, std::regex("\\b" + std::to_string(free) + " free\\b")) &&
                std::regex_search(counts, std::regex("\\b" + std::to_string(kNode1Pages) + "\\b")))
        << "no node 1 counts (" << free << " free of " << kNode1Pages << ") in: " << m;
  }

  int64_t node0_free_ = 0;
};

TEST_F(NumaExhaustTest, Node1GivesItsPagesAndNoMoreAndNode0KeepsItsOwn) {
  std::vector<Buffer> got;
  const absl::Status error = ExhaustNode1(&got);
  EXPECT_EQ(got.size(), static_cast<size_t>(kNode1Pages)) << "node 1 had " << kNode1Pages;
  EXPECT_EQ(error.code(), absl::StatusCode::kResourceExhausted) << error;
  EXPECT_EQ(ReadPool(1, "nr_hugepages"), kNode1Pages) << "node 1's pool grew";
  got.clear();
  rt_->allocator().Shrink();
  absl::StatusOr<Buffer> buf = rt_->MapBuffer((kNode1Pages + 1) * k2M, {.node = 1});
  EXPECT_FALSE(buf.ok()) << "node 1 mapped " << kNode1Pages + 1 << " pages from a pool of "
                         << kNode1Pages;
  EXPECT_EQ(ReadPool(0, "free_hugepages"), node0_free_);
  EXPECT_EQ(ReadPool(1, "free_hugepages"), kNode1Pages) << "a failed map kept node 1 pages";
}

TEST_F(NumaExhaustTest, TheAllocatorsErrorNamesNode1AndItsCounts) {
  std::vector<Buffer> got;
  const absl::Status error = ExhaustNode1(&got);
  ASSERT_FALSE(error.ok());
  ExpectNamesNode1(error, 0);
}

TEST_F(NumaExhaustTest, MapBuffersErrorIsExhaustionNamingNode1AndItsCounts) {
  absl::StatusOr<Buffer> buf = rt_->MapBuffer((kNode1Pages + 1) * k2M, {.node = 1});
  ASSERT_FALSE(buf.ok());
  EXPECT_EQ(buf.status().code(), absl::StatusCode::kResourceExhausted) << buf.status();
  // Refused at the mmap, which reserves on node 1, before any page was taken.
  ExpectNamesNode1(buf.status(), kNode1Pages);
}

// The kernel reserves a mapping's huge pages at mmap, from the free pages of the nodes the
// thread's memory policy binds it to, before the mbind to the node asked for. A thread
// bound to node 0, whose pool is all but used, that asks for node 1 is served node 1
// all the same (Map binds the thread to node 1 for its mmap), and keeps its own policy
// exactly, mode flags and nodes, after a served call and after a refused one.
TEST_F(NumaVmTest, AThreadBoundElsewhereIsServedTheNodeItAsksForAndKeepsItsPolicy) {
  const int64_t node0_free = ReadPool(0, "free_hugepages");
  const int64_t node1_free = ReadPool(1, "free_hugepages");
  ASSERT_GE(node0_free, 4);
  ASSERT_GE(node1_free, 6);
  const std::string mount = testing::HugetlbfsMountFor(k2M);
  ASSERT_FALSE(mount.empty());
  absl::StatusOr<Buffer> fill = rt_->MapBuffer((node0_free - 2) * k2M, {.node = 0});
  ASSERT_TRUE(fill.ok()) << fill.status();
  const MemoryPolicy own = testing::ThreadPolicyNow();
  ASSERT_NE(own.mode, -1) << std::strerror(errno);
  using testing::PolicyOf;
  for (const MemoryPolicy& asked : {
           PolicyOf(MPOL_BIND, {0}),  // numactl --membind=0
           PolicyOf(MPOL_BIND | MPOL_F_STATIC_NODES, {0}),
           PolicyOf(MPOL_BIND | MPOL_F_RELATIVE_NODES, {0}),
           PolicyOf(MPOL_BIND | MPOL_F_NUMA_BALANCING, {0}),
           PolicyOf(MPOL_PREFERRED_MANY, {0}),
           PolicyOf(MPOL_INTERLEAVE, {0, 1}),
           PolicyOf(MPOL_LOCAL, {}),
           PolicyOf(MPOL_DEFAULT, {}),
       }) {
    SCOPED_TRACE(testing::DescribePolicy(asked));
    ASSERT_TRUE(testing::SetThreadPolicy(asked)) << std::strerror(errno);
    const std::string before = testing::DescribePolicy(testing::ThreadPolicyNow());
    absl::StatusOr<Buffer> buf = rt_->MapBuffer(4 * k2M, {.node = 1});
    const std::string after_served = testing::DescribePolicy(testing::ThreadPolicyNow());
    // A named hugetlbfs file, which another process could open, the same way.
    absl::StatusOr<Buffer> named = rt_->MapBuffer(
        2 * k2M,
        {.backing = BackingKind::kHugetlbfs, .node = 1, .file_name = "hugemm-numa-policy"});
    const std::string after_named = testing::DescribePolicy(testing::ThreadPolicyNow());
    absl::StatusOr<Buffer> too_big = rt_->MapBuffer((node1_free + 1) * k2M, {.node = 1});
    const std::string after_refused = testing::DescribePolicy(testing::ThreadPolicyNow());
    ASSERT_TRUE(testing::SetThreadPolicy(own)) << std::strerror(errno);
    unlink((mount + "/hugemm-numa-policy").c_str());

    ASSERT_TRUE(buf.ok()) << buf.status();
    EXPECT_TRUE(AllOn(KernelNodes(buf->data(), buf->size(), k2M), 1));
    absl::StatusOr<FolioInfo> info = rt_->FolioInfoAt(buf->data());
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->node, 1);
    EXPECT_EQ(after_served, before) << "a served call changed the thread's policy";
    ASSERT_TRUE(named.ok()) << named.status();
    EXPECT_TRUE(AllOn(KernelNodes(named->data(), named->size(), k2M), 1));
    EXPECT_EQ(after_named, before) << "a served call changed the thread's policy";
    ASSERT_FALSE(too_big.ok()) << node1_free + 1 << " pages from node 1's " << node1_free;
    EXPECT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted) << too_big.status();
    EXPECT_EQ(after_refused, before) << "a refused call changed the thread's policy";
  }
}

// A process whose cpuset allows node 0 alone asks for node 1: mbind refuses (EINVAL), and
// the error says the node is outside the cpuset, not only "Invalid argument".
TEST_F(NumaVmTest, ANodeOutsideTheCpusetIsRefusedNamingTheCpuset) {
  const std::string root = "/sys/fs/cgroup";
  if (access((root + "/cgroup.controllers").c_str(), F_OK) != 0) {
    ASSERT_EQ(mount("cgroup2", root.c_str(), "cgroup2", 0, nullptr), 0) << std::strerror(errno);
  }
  const std::string group = root + "/hugemm-numa-node0";
  ASSERT_TRUE(std::ofstream(root + "/cgroup.subtree_control") << "+cpuset" << std::endl);
  ASSERT_TRUE(mkdir(group.c_str(), 0755) == 0 || errno == EEXIST) << std::strerror(errno);
  ASSERT_TRUE(std::ofstream(group + "/cpuset.mems") << "0" << std::endl);
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {  // the child joins the group, so that this process keeps both nodes
    close(fds[0]);
    std::string out;
    if (!(std::ofstream(group + "/cgroup.procs") << getpid() << std::endl)) {
      out = "could not join " + group;
    } else {
      absl::StatusOr<std::shared_ptr<Backing>> backing = Backing::Create({});
      if (!backing.ok()) {
        out = backing.status().ToString();
      } else {
        absl::StatusOr<Extent> e = (*backing)->Map({.length = k2M, .node = 1});
        out = e.ok() ? "mapped" : e.status().ToString();
      }
    }
    (void)!write(fds[1], out.data(), out.size());
    _exit(0);
  }
  close(fds[1]);
  std::string got;
  char chunk[512];
  for (ssize_t n; (n = read(fds[0], chunk, sizeof chunk)) > 0;) got.append(chunk, n);
  close(fds[0]);
  int wstatus = 0;
  ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
  rmdir(group.c_str());
  EXPECT_NE(got.find("INVALID_ARGUMENT"), std::string::npos) << got;
  EXPECT_NE(got.find("node 1 is outside this process's cpuset (memory nodes 0)"), std::string::npos)
      << got;
}

TEST_F(NumaVmTest, DevDaxBuffersOfOneRuntimeNeverShareMemory) {
  const char* dax = std::getenv("HUGEMM_TEST_DAX");
  ASSERT_NE(dax, nullptr);
  const BufferOptions opts{.backing = BackingKind::kDevDax, .devdax_path = dax};
  absl::StatusOr<Buffer> a = rt_->MapBuffer(2 * k2M, opts);
  absl::StatusOr<Buffer> b = rt_->MapBuffer(2 * k2M, opts);
  absl::StatusOr<Buffer> c =
      rt_->Allocate(k2M, {.backing = BackingKind::kDevDax, .page_size = 0, .devdax_path = dax});
  ASSERT_TRUE(a.ok() && b.ok() && c.ok()) << a.status() << b.status() << c.status();
  struct Range {
    uint64_t first, last;
  };
  auto frames = [&](const Buffer& buf) {
    std::optional<Translation> t = rt_->Translate(buf.data());
    return Range{t ? t->pfn : 0, t ? t->pfn + buf.size() / kPageSize4K : 0};
  };
  const Range ra = frames(*a), rb = frames(*b), rc = frames(*c);
  auto apart = [](Range x, Range y) { return x.last <= y.first || y.last <= x.first; };
  EXPECT_TRUE(apart(ra, rb)) << "two MapBuffers share frames from 0x" << std::hex << ra.first
                             << " and 0x" << rb.first;
  EXPECT_TRUE(apart(ra, rc)) << "a MapBuffer and an allocation share frames from 0x" << std::hex
                             << ra.first << " and 0x" << rc.first;
  // The same check through the memory itself: a write to one shows in the other.
  std::memset(a->data(), 0xa5, k2M);
  std::memset(b->data(), 0x5a, k2M);
  EXPECT_EQ(static_cast<unsigned char>(a->data()[0]), 0xa5) << "b's write landed in a";
}

}  // namespace
}  // namespace hugemm

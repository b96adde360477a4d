// Two hosts, real data: one end of an RDMA exchange between two processes on two
// soft-RoCE devices (rxe_a, rxe_b on the two ends of a veth pair in the VM). The ends
// swap queue-pair details over TCP, then move data between hugemm buffers with RDMA
// WRITE (client -> server), RDMA READ (the client reads the server's buffer) and
// SEND/RECV (client -> server), each work request under a registration from the MR
// cache; every byte is checked on the receiving side.
//
//   rdma_pair server DEVICE PORT MEMORY
//   rdma_pair client DEVICE SERVER_ADDRESS PORT MEMORY
//
// MEMORY: 2M (8 MiB of 2M hugetlb pages), 1G (one 1G hugetlb page: 16 MiB moved, in
// four pieces spread over it) or devdax (64 MiB of $HUGEMM_TEST_DAX). Exit 0 when every
// check passed on this end.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "hugemm/runtime.h"
#include "hugemm/verbs.h"
#include "tests/verbs/rc_endpoint.h"

namespace hugemm::testing {
namespace {

constexpr size_t kChunk = 1 << 20;  // bytes per work request
constexpr int kAccess = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;

struct Piece {
  size_t offset;
  size_t length;
};

// What moves: the whole buffer, or four 4 MiB pieces spread over a large one (its first
// and last bytes included).
std::vector<Piece> PiecesOf(size_t size) {
  if (size <= (64u << 20)) return {{0, size}};
  const size_t piece = 4u << 20;
  return {{0, piece},
          {(size / 3) & ~(kChunk - 1), piece},
          {(2 * size / 3) & ~(kChunk - 1), piece},
          {size - piece, piece}};
}

uint64_t PatternWord(uint64_t seed, size_t offset) {
  uint64_t z = (offset / 8) ^ (seed << 56) ^ 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void Fill(std::byte* buf, const std::vector<Piece>& pieces, uint64_t seed) {
  for (const Piece& p : pieces) {
    auto* w = reinterpret_cast<uint64_t*>(buf + p.offset);
    for (size_t i = 0; i < p.length / 8; ++i) w[i] = PatternWord(seed, p.offset + 8 * i);
  }
}

// Every byte of every piece; the first difference named.
absl::Status Check(const std::byte* buf, const std::vector<Piece>& pieces, uint64_t seed,
                   const char* what) {
  size_t bytes = 0;
  for (const Piece& p : pieces) {
    auto* w = reinterpret_cast<const uint64_t*>(buf + p.offset);
    for (size_t i = 0; i < p.length / 8; ++i) {
      if (w[i] != PatternWord(seed, p.offset + 8 * i)) {
        return absl::DataLossError(
            absl::StrFormat("%s: byte offset 0x%x holds 0x%016x, want 0x%016x", what,
                            p.offset + 8 * i, w[i], PatternWord(seed, p.offset + 8 * i)));
      }
    }
    bytes += p.length;
  }
  std::printf("  %s: %zu bytes checked, all as sent\n", what, bytes);
  return absl::OkStatus();
}

absl::StatusOr<Buffer> MapMemory(Runtime& rt, const std::string& memory) {
  if (memory == "2M") return rt.MapBuffer(8u << 20, {.page_size = kPageSize2M});
  if (memory == "1G") return rt.MapBuffer(kPageSize1G, {.page_size = kPageSize1G});
  if (memory == "devdax") {
    const char* dax = std::getenv("HUGEMM_TEST_DAX");
    if (dax == nullptr) return absl::NotFoundError("HUGEMM_TEST_DAX is not set");
    return rt.MapBuffer(64u << 20, {.backing = BackingKind::kDevDax, .devdax_path = dax});
  }
  return absl::InvalidArgumentError("MEMORY is one of 2M, 1G, devdax, not " + memory);
}

// Posts one work request per chunk of every piece, each under its own handle from the
// cache (released when its completion is reaped), at most kDepth outstanding.
template <typename PostFn>
absl::Status PerChunk(RcEndpoint& ep, MrCache& cache, std::byte* buf,
                      const std::vector<Piece>& pieces, PostFn post) {
  std::vector<MrHandle> held;
  int outstanding = 0;
  for (const Piece& p : pieces) {
    for (size_t off = p.offset; off < p.offset + p.length; off += kChunk) {
      const size_t len = std::min(kChunk, p.offset + p.length - off);
      absl::StatusOr<MrHandle> mr = cache.Get(ep.pd(), buf + off, len, kAccess);
      if (!mr.ok()) return mr.status();
      if (absl::Status st = post(buf + off, len, mr->lkey(), off, held.size()); !st.ok()) {
        return st;
      }
      held.push_back(std::move(*mr));
      if (++outstanding == RcEndpoint::kDepth / 2) {
        if (absl::Status st = ep.Complete(outstanding); !st.ok()) return st;
        outstanding = 0;
        held.clear();
      }
    }
  }
  return ep.Complete(outstanding);
}

absl::Status Run(bool server, const std::string& device, const std::string& host, int port,
                 const std::string& memory) {
  const char* gid_env = std::getenv("HUGEMM_TEST_RXE_GID");
  const int gid = gid_env != nullptr ? std::atoi(gid_env) : 1;
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
  if (!rt.ok()) return rt.status();
  absl::StatusOr<Buffer> buf = MapMemory(**rt, memory);
  if (!buf.ok()) return buf.status();
  std::optional<Translation> t = (*rt)->Translate(buf->data());
  std::printf("%s on %s: %s memory, %zu bytes at %p, folios of %zu bytes, first PFN 0x%llx\n",
              server ? "server" : "client", device.c_str(), memory.c_str(), buf->size(),
              static_cast<void*>(buf->data()), buf->folio_size(),
              static_cast<unsigned long long>(t ? t->pfn : 0));
  absl::StatusOr<std::unique_ptr<RcEndpoint>> ep = RcEndpoint::Open(device, gid);
  if (!ep.ok()) return ep.status();
  // After the endpoint: the cache deregisters on the endpoint's PD as it goes.
  absl::StatusOr<std::unique_ptr<MrCache>> cache = MrCache::Create(**rt);
  if (!cache.ok()) return cache.status();

  absl::StatusOr<TcpLink> link = server ? TcpLink::Accept(port) : TcpLink::Connect(host, port);
  if (!link.ok()) return link.status();
  // The whole buffer for the peer's RDMA: one handle, held for the run.
  absl::StatusOr<MrHandle> whole = (*cache)->Get((*ep)->pd(), buf->data(), buf->size(), kAccess);
  if (!whole.ok()) return whole.status();
  PeerInfo mine = (*ep)->Info();
  mine.addr = reinterpret_cast<uintptr_t>(buf->data());
  mine.length = buf->size();
  mine.rkey = whole->rkey();
  PeerInfo peer;
  if (absl::Status st = link->Send(&mine, sizeof(mine)); !st.ok()) return st;
  if (absl::Status st = link->Recv(&peer, sizeof(peer)); !st.ok()) return st;
  if (absl::Status st = (*ep)->Connect(peer); !st.ok()) return st;
  const std::vector<Piece> pieces = PiecesOf(std::min<size_t>(buf->size(), peer.length));
  RcEndpoint& e = **ep;
  std::byte* b = buf->data();
  auto agree = [&](uint64_t ok) -> absl::Status {
    absl::StatusOr<uint64_t> theirs = link->Swap(ok);
    if (!theirs.ok()) return theirs.status();
    if (ok != 1 || *theirs != 1) return absl::AbortedError("a check failed on the other end");
    return absl::OkStatus();
  };
  auto step = [&](const absl::Status& st) -> absl::Status {
    if (!st.ok()) {
      (void)link->Swap(0);
      return st;
    }
    return agree(1);
  };
  if (absl::Status st = agree(1); !st.ok()) return st;  // both connected

  // RDMA WRITE, client -> server.
  if (!server) {
    Fill(b, pieces, 1);
    absl::Status st =
        PerChunk(e, **cache, b, pieces,
                 [&](std::byte* p, size_t len, uint32_t lkey, size_t off, uint64_t id) {
                   return e.PostWrite(p, len, lkey, peer.addr + off, peer.rkey, id);
                 });
    if (st = step(st); !st.ok()) return st;
    if (st = agree(1); !st.ok()) return st;  // the server's check
  } else {
    if (absl::Status st = agree(1); !st.ok()) return st;  // written
    if (absl::Status st = step(Check(b, pieces, 1, "RDMA WRITE into this end")); !st.ok()) {
      return st;
    }
  }

  // RDMA READ: the client reads the server's buffer.
  if (server) {
    Fill(b, pieces, 2);
    if (absl::Status st = agree(1); !st.ok()) return st;  // filled
    if (absl::Status st = agree(1); !st.ok()) return st;  // read and checked
  } else {
    if (absl::Status st = agree(1); !st.ok()) return st;
    absl::Status st =
        PerChunk(e, **cache, b, pieces,
                 [&](std::byte* p, size_t len, uint32_t lkey, size_t off, uint64_t id) {
                   return e.PostRead(p, len, lkey, peer.addr + off, peer.rkey, id);
                 });
    if (st.ok()) st = Check(b, pieces, 2, "RDMA READ from the other end");
    if (st = step(st); !st.ok()) return st;
  }

  // SEND / RECV, client -> server: the server posts its receives first.
  if (server) {
    std::vector<MrHandle> held;
    int posted = 0;
    absl::Status st;
    for (const Piece& p : pieces) {
      for (size_t off = p.offset; st.ok() && off < p.offset + p.length; off += kChunk) {
        const size_t len = std::min(kChunk, p.offset + p.length - off);
        absl::StatusOr<MrHandle> mr = (*cache)->Get(e.pd(), b + off, len, kAccess);
        st = mr.ok() ? e.PostRecv(b + off, len, mr->lkey(), posted++) : mr.status();
        if (mr.ok()) held.push_back(std::move(*mr));
      }
    }
    if (absl::Status ready = agree(st.ok() ? 1 : 0); !ready.ok()) return st.ok() ? ready : st;
    st = e.Complete(posted);
    held.clear();
    if (st.ok()) st = Check(b, pieces, 3, "SEND into this end's receives");
    if (st = step(st); !st.ok()) return st;
  } else {
    Fill(b, pieces, 3);
    if (absl::Status st = agree(1); !st.ok()) return st;  // receives posted
    absl::Status st = PerChunk(e, **cache, b, pieces,
                               [&](std::byte* p, size_t len, uint32_t lkey, size_t, uint64_t id) {
                                 return e.PostSend(p, len, lkey, id);
                               });
    if (st = step(st); !st.ok()) return st;
  }

  whole->Release();
  const MrCacheStats s = (*cache)->Stats();
  std::printf("  MR cache: %llu hits, %llu misses, %llu registrations\n",
              static_cast<unsigned long long>(s.hits), static_cast<unsigned long long>(s.misses),
              static_cast<unsigned long long>(s.registrations));
  if (s.registrations != 1) {
    return absl::InternalError("the buffer was registered more than once");
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace hugemm::testing

int main(int argc, char** argv) {
  const bool server = argc == 5 && std::strcmp(argv[1], "server") == 0;
  const bool client = argc == 6 && std::strcmp(argv[1], "client") == 0;
  if (!server && !client) {
    std::fprintf(stderr,
                 "usage: %s server DEVICE PORT MEMORY\n"
                 "       %s client DEVICE SERVER_ADDRESS PORT MEMORY\n"
                 "MEMORY: 2M, 1G or devdax\n",
                 argv[0], argv[0]);
    return 2;
  }
  const std::string device = argv[2];
  const std::string host = client ? argv[3] : "";
  const int port = std::atoi(argv[client ? 4 : 3]);
  const std::string memory = argv[client ? 5 : 4];
  absl::Status st = hugemm::testing::Run(server, device, host, port, memory);
  if (!st.ok()) {
    std::fprintf(stderr, "rdma_pair %s: FAILED: %s\n", argv[1], std::string(st.message()).c_str());
    return 1;
  }
  std::printf("rdma_pair %s (%s): WRITE, READ and SEND/RECV passed\n", argv[1], memory.c_str());
  return 0;
}

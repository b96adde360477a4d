// The io consumer's C API (hugemm_io.h) under random call sequences: real io_uring, real
// O_DIRECT reads and writes of a file on the root file system, into and out of buffers
// that come and go while I/Os are in flight.
//
// Each input attaches a ring of its own to a runtime (in one of the three table modes),
// then allocates and frees buffers, prepares reads and writes (inside, across and outside
// its buffers, aligned or not), submits, completes, cancels, pins and unpins tokens, and
// asks for buffer indexes. Every call must answer as the header says: 0, a count or an
// index, or a negative errno with a message; never a crash (ASan, UBSan). Beyond that:
//   - a prepared I/O covers only memory of live buffers (a free folio is no fixed buffer);
//   - the device moves exactly the bytes asked for, into exactly that memory: the file
//     and every live buffer are modelled byte for byte, and a read that landed anywhere
//     else, or a write that took other bytes, breaks the model;
//   - a buffer freed with an I/O in flight keeps its memory until the completion: no
//     buffer allocated meanwhile is written by that I/O;
//   - a completion hands back the user_data it was prepared with, once;
//   - with nothing in flight and no token held, every folio of a live buffer has its
//     owner's reference and its mapping's, and no pin;
//   - the input leaves the process's descriptors as it found them.
// One input in eight opens a runtime of its own and closes it with the io still attached:
// the io must then answer -EINVAL to everything but hugemm_io_detach. Of the others, one in
// four closes its ring before the detach and makes another (which takes the same
// descriptor number) with a buffer table of its own: the memory that then comes and goes,
// and the detach, must leave that table alone.
#include <fcntl.h>
#include <liburing.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "fuzz/c_failure.h"
#include "fuzz/fuzz_input.h"
#include "hugemm/hugemm.h"
#include "hugemm/hugemm_io.h"
#include "soak/footprint.h"

namespace hugemm::fuzz {
namespace {

constexpr int kMaxOps = 40;
constexpr size_t k4K = 4096;
constexpr size_t k2M = size_t{2} << 20;
constexpr size_t kFileBytes = 4 * k2M;
constexpr size_t kBudget = 4 * k2M;  // live buffers, at most
constexpr unsigned kRingEntries = 32;
constexpr uint64_t kNop = ~uint64_t{0};  // user_data of an SQE cancelled and made a NOP

// What outlives an input: the runtimes (pools grow once) and the file with its model.
struct Shared {
  hugemm_runtime* runtimes[2] = {};  // without and with the kernel's pins
  int fd = -1;                       // O_DIRECT, unlinked
  std::vector<uint8_t> file;         // what the file holds
};

Shared& State() {
  static Shared* shared = [] {
    auto* s = new Shared;
    const hugemm_options options[2] = {{HUGEMM_REFCOUNT_FOLIO, 0}, {HUGEMM_REFCOUNT_FOLIO, 1}};
    for (int i = 0; i < 2; ++i) {
      FUZZ_CHECK(hugemm_open(&options[i], &s->runtimes[i]) == 0, hugemm_last_error());
    }
    // The root file system, not /tmp (tmpfs has no O_DIRECT).
    char path[] = "/var/tmp/hugemm-io-fuzz-XXXXXX";
    const int fd = mkostemp(path, O_DIRECT);
    FUZZ_CHECK(fd >= 0, std::string("mkostemp: ") + std::strerror(errno));
    unlink(path);
    s->fd = fd;
    s->file.resize(kFileBytes);
    for (size_t i = 0; i < kFileBytes; ++i) s->file[i] = static_cast<uint8_t>(i * 7 + (i >> 12));
    void* aligned = nullptr;
    FUZZ_CHECK(posix_memalign(&aligned, k4K, kFileBytes) == 0, "posix_memalign");
    std::memcpy(aligned, s->file.data(), kFileBytes);
    FUZZ_CHECK(pwrite(fd, aligned, kFileBytes, 0) == static_cast<ssize_t>(kFileBytes),
               std::string("pwrite: ") + std::strerror(errno));
    std::free(aligned);
    return s;
  }();
  return *shared;
}

struct Buf {
  hugemm_buffer b{};
  std::vector<uint8_t> model;  // what its bytes must be
  bool freed = false;
  uintptr_t lo() const { return reinterpret_cast<uintptr_t>(b.data); }
  uintptr_t hi() const { return lo() + b.size; }
};

struct Io {
  uint64_t tag = 0;
  bool write = false;
  uintptr_t addr = 0;
  size_t length = 0;
  uint64_t offset = 0;
  bool submitted = false;
  io_uring_sqe* sqe = nullptr;  // until submitted
  std::vector<uint8_t> data;    // a write's bytes, from the models when it was prepared
  std::vector<size_t> bufs;     // the buffers it covered then (bufs_ only grows)
};

bool Overlap(uintptr_t a, size_t alen, uintptr_t b, size_t blen) {
  return a < b + blen && b < a + alen;
}

class Driver {
 public:
  explicit Driver(FuzzInput& in) : in_(in), shared_(State()) {}
  void Run();

 private:
  // A failed call: a known negative errno and words for it.
  void CheckFailure(const char* call, long rc) {
    CheckCFailure(call, rc, {EINVAL, ENOENT, EBUSY, ENOMEM, EFAULT, EOPNOTSUPP, EAGAIN}, trace_);
  }
  size_t Live() const {
    size_t n = 0;
    for (const Buf& b : bufs_) n += b.freed ? 0 : b.b.size;
    return n;
  }
  // Whether [addr, addr + length) lies in live buffers only.
  bool InLiveBuffers(uintptr_t addr, size_t length) const;
  // Memory and file ranges an I/O may not share with one in flight.
  bool Conflicts(bool write, uintptr_t addr, size_t length, uint64_t offset) const;

  void OpAlloc();
  void OpFree();
  void OpPrep();
  void OpSubmit();
  void OpComplete();
  void OpCancel();
  void OpPin();
  void OpUnpin();
  void OpIndex();
  void Landed(const Io& io, int res);
  void Drain();
  void CheckBuffers();
  void ReplaceRing();
  void CheckOwnTable();
  void Finish();

  FuzzInput& in_;
  Shared& shared_;
  hugemm_runtime* rt_ = nullptr;
  bool own_ = false;
  io_uring ring_{};
  hugemm_io* io_ = nullptr;
  std::vector<Buf> bufs_;
  std::vector<Io> ios_;
  std::vector<uint64_t> tokens_;
  uint64_t next_tag_ = 1;
  void* own_buffer_ = nullptr;  // the replacement ring's one registered buffer (4K)
  const bool trace_ = std::getenv("HUGEMM_FUZZ_TRACE") != nullptr;
};

bool Driver::InLiveBuffers(uintptr_t addr, size_t length) const {
  uintptr_t at = addr;
  const uintptr_t end = addr + length;
  while (at < end) {
    bool found = false;
    for (const Buf& b : bufs_) {
      if (!b.freed && at >= b.lo() && at < b.hi()) {
        at = b.hi();
        found = true;
        break;
      }
    }
    if (!found) return false;
  }
  return true;
}

bool Driver::Conflicts(bool write, uintptr_t addr, size_t length, uint64_t offset) const {
  for (const Io& io : ios_) {
    // A read writes its memory and a write reads it; the file the other way round.
    if ((!write || !io.write) && Overlap(addr, length, io.addr, io.length)) return true;
    if ((write || io.write) && Overlap(offset, length, io.offset, io.length)) return true;
  }
  return false;
}

void Driver::OpAlloc() {
  size_t bytes = k4K << in_.Below(10);
  const bool map = in_.Below(4) == 0;
  if (map) bytes = k2M;
  if (Live() + bytes > kBudget) return;
  hugemm_buffer b{};
  const int rc = map ? hugemm_map_buffer(rt_, bytes, nullptr, &b)
                     : hugemm_alloc(rt_, bytes, nullptr, /*uninitialized=*/1, &b);
  CheckFailure(map ? "map_buffer" : "alloc", rc);
  if (rc != 0) return;
  if (trace_) std::fprintf(stderr, "  buffer %p, %zu bytes\n", b.data, b.size);
  Buf buf{b, std::vector<uint8_t>(b.size), false};
  const auto seed = static_cast<uint8_t>(in_.Byte() | 1);
  for (size_t i = 0; i < b.size; ++i) buf.model[i] = static_cast<uint8_t>(seed * (i + 3));
  std::memcpy(b.data, buf.model.data(), b.size);
  bufs_.push_back(std::move(buf));
}

void Driver::OpFree() {
  if (bufs_.empty()) return;
  void* const p = bufs_[in_.Below(bufs_.size())].b.data;
  const int rc = hugemm_free(rt_, p);
  CheckFailure("free", rc);
  // A freed buffer's address may be a live one's again.
  auto live = std::find_if(bufs_.begin(), bufs_.end(),
                           [p](const Buf& b) { return !b.freed && b.b.data == p; });
  FUZZ_CHECK((rc == 0) == (live != bufs_.end()),
             "free: a live buffer refused, or a freed one freed again");
  if (rc == 0) live->freed = true;  // an I/O in flight may still land in it: unmodelled now
}

void Driver::OpPrep() {
  if (ios_.size() >= kRingEntries / 2) return;
  Io io;
  io.write = in_.Bool();
  // Mostly inside a live buffer; sometimes running past it, or anywhere.
  if (!bufs_.empty() && in_.Below(8) != 0) {
    const Buf& b = bufs_[in_.Below(bufs_.size())];
    size_t off = in_.Below(b.b.size / k4K) * k4K;
    if (in_.Below(8) == 0) off += 512 * in_.Below(8);
    io.addr = b.lo() + off;
    const size_t room = b.b.size - std::min(off, b.b.size);
    io.length = std::max<size_t>(k4K, std::min<size_t>(room, k4K << in_.Below(7)));
    if (in_.Below(8) == 0) io.length += k4K * in_.Below(4);  // past the end
  } else {
    io.addr = in_.Bool() ? 0 : static_cast<uintptr_t>(in_.U64());
    io.length = k4K;
  }
  if (in_.Below(16) == 0) io.length = in_.Below(3 * k4K);  // unaligned or zero
  io.length = std::min<size_t>(io.length, 1u << 20);
  io.offset = in_.Below(kFileBytes / k4K) * k4K;
  if (in_.Below(16) == 0) io.offset += 512;
  // Within the file: a write keeps its size, and a read past its end may leave the memory
  // beyond the bytes it returns zeroed (ext4 fills the hole it maps there).
  if (io.offset + io.length > kFileBytes) return;
  if (Conflicts(io.write, io.addr, io.length, io.offset)) return;
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) return;
  std::memset(sqe, 0, sizeof(*sqe));
  io.tag = next_tag_++;
  auto* p = reinterpret_cast<void*>(io.addr);
  const auto len = static_cast<unsigned>(io.length);
  const int rc = io.write ? hugemm_io_prep_write(io_, sqe, shared_.fd, p, len, io.offset, io.tag)
                          : hugemm_io_prep_read(io_, sqe, shared_.fd, p, len, io.offset, io.tag);
  CheckFailure(io.write ? "prep_write" : "prep_read", rc);
  if (trace_) {
    std::fprintf(stderr, "  tag %lu: %#lx, %zu bytes, file offset %#lx\n", io.tag, io.addr,
                 io.length, io.offset);
  }
  if (rc != 0) {
    // The SQE is the ring's now: it goes out as a NOP.
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, kNop);
    return;
  }
  FUZZ_CHECK(io.length > 0 && InLiveBuffers(io.addr, io.length),
             absl::StrFormat("prepared an I/O of %u bytes at %#x, not all in live buffers",
                             io.length, io.addr));
  io.sqe = sqe;
  if (io.write) io.data.resize(io.length);
  for (size_t i = 0; i < bufs_.size(); ++i) {
    const Buf& b = bufs_[i];
    if (b.freed || !Overlap(b.lo(), b.b.size, io.addr, io.length)) continue;
    io.bufs.push_back(i);
    if (!io.write) continue;
    const uintptr_t lo = std::max(b.lo(), io.addr), hi = std::min(b.hi(), io.addr + io.length);
    std::memcpy(io.data.data() + (lo - io.addr), b.model.data() + (lo - b.lo()), hi - lo);
  }
  ios_.push_back(std::move(io));
}

void Driver::OpSubmit() {
  const int rc = io_uring_submit(&ring_);
  FUZZ_CHECK(rc >= 0, absl::StrFormat("io_uring_submit: %d", rc));
  for (Io& io : ios_) {
    io.submitted = true;
    io.sqe = nullptr;
  }
}

// What a completed I/O changed, as the models see it.
void Driver::Landed(const Io& io, int res) {
  if (res < 0) return;  // refused whole (alignment): nothing moved
  FUZZ_CHECK(static_cast<size_t>(res) <= io.length, "an I/O moved more bytes than asked");
  const auto n = static_cast<size_t>(res);
  if (io.write) {
    FUZZ_CHECK(io.offset + n <= kFileBytes, "a write past the file's end");
    // What the buffers held when it was prepared: nothing may write memory under a write
    // in flight, not even after its buffer was freed. A later read of the file shows it.
    std::memcpy(shared_.file.data() + io.offset, io.data.data(), n);
    return;
  }
  // Inside the file, O_DIRECT on ext4 reads all or nothing (the memory beyond a short
  // read would be unknown).
  FUZZ_CHECK(n == io.length,
             absl::StrFormat("a read of %u bytes inside the file returned %u", io.length, n));
  // Into the buffers it was prepared for, those still live: a buffer allocated since on
  // memory the read still had pinned would keep its old bytes in the model.
  for (size_t i : io.bufs) {
    Buf& b = bufs_[i];
    if (b.freed) continue;
    const uintptr_t lo = std::max(b.lo(), io.addr), hi = std::min(b.hi(), io.addr + n);
    std::memcpy(b.model.data() + (lo - b.lo()), shared_.file.data() + io.offset + (lo - io.addr),
                hi - lo);
  }
}

void Driver::OpComplete() {
  size_t submitted = 0;
  for (const Io& io : ios_) submitted += io.submitted;
  if (submitted == 0) return;
  io_uring_cqe* cqe = nullptr;
  const int w = io_uring_wait_cqe(&ring_, &cqe);
  FUZZ_CHECK(w == 0 && cqe != nullptr, absl::StrFormat("io_uring_wait_cqe: %d", w));
  if (io_uring_cqe_get_data64(cqe) == kNop) {
    io_uring_cqe_seen(&ring_, cqe);
    return;
  }
  // Without a place for the user_data only when one I/O can be this one.
  const bool want_tag = submitted > 1 || in_.Below(8) != 0;
  uint64_t tag = 0;
  const int rc = hugemm_io_complete(io_, cqe, want_tag ? &tag : nullptr);
  CheckFailure("complete", rc);
  FUZZ_CHECK(rc == 0, std::string("complete of a prepared I/O: ") + hugemm_last_error());
  const int res = cqe->res;
  io_uring_cqe_seen(&ring_, cqe);
  if (trace_) std::fprintf(stderr, "  tag %lu: res %d\n", want_tag ? tag : 0, res);
  auto it = std::find_if(ios_.begin(), ios_.end(), [&](const Io& io) {
    return io.submitted && (!want_tag || io.tag == tag);
  });
  FUZZ_CHECK(it != ios_.end(), absl::StrFormat("complete handed back tag %u, not in flight", tag));
  Landed(*it, res);
  ios_.erase(it);
  // The same completion again is no I/O's any more.
  if (in_.Below(8) == 0) {
    io_uring_cqe again{};
    again.user_data = io_uring_cqe_get_data64(cqe);
    const int rc2 = hugemm_io_complete(io_, &again, nullptr);
    CheckFailure("complete again", rc2);
    FUZZ_CHECK(rc2 == -ENOENT, "a completion completed twice");
  }
}

void Driver::OpCancel() {
  auto it = std::find_if(ios_.begin(), ios_.end(), [](const Io& io) { return !io.submitted; });
  if (it == ios_.end()) {
    // An SQE hugemm never prepared, or one carrying a token of hugemm_io_pin, which
    // only hugemm_io_unpin gives back.
    io_uring_sqe bogus{};
    const bool pin_token = !tokens_.empty() && in_.Bool();
    bogus.user_data = pin_token ? tokens_[in_.Below(tokens_.size())] : in_.U64();
    const int rc = hugemm_io_cancel(io_, &bogus, nullptr);
    CheckFailure("cancel", rc);
    FUZZ_CHECK(!pin_token || rc == -ENOENT, "cancel of an SQE carrying a pin token");
    return;
  }
  uint64_t tag = 0;
  const int rc = hugemm_io_cancel(io_, it->sqe, &tag);
  CheckFailure("cancel", rc);
  FUZZ_CHECK(rc == 0 && tag == it->tag, "cancel of a prepared SQE");
  io_uring_prep_nop(it->sqe);
  io_uring_sqe_set_data64(it->sqe, kNop);
  ios_.erase(it);
}

void Driver::OpPin() {
  uintptr_t addr = 0;
  size_t length = k4K;
  if (!bufs_.empty() && in_.Below(8) != 0) {
    const Buf& b = bufs_[in_.Below(bufs_.size())];
    addr = b.lo() + in_.Below(b.b.size / k4K) * k4K;
    length = in_.Below(8) == 0 ? in_.Below(b.b.size + k4K) : k4K << in_.Below(6);
  } else {
    addr = static_cast<uintptr_t>(in_.U64());
  }
  uint64_t token = 0;
  const int rc = hugemm_io_pin(io_, reinterpret_cast<const void*>(addr), length, in_.Bool(),
                               in_.Below(32) == 0 ? nullptr : &token);
  CheckFailure("pin", rc);
  if (rc != 0) return;
  FUZZ_CHECK(token != 0, "pin: a zero token");
  FUZZ_CHECK(length > 0 && InLiveBuffers(addr, length), "pin of memory not in live buffers");
  tokens_.push_back(token);
}

void Driver::OpUnpin() {
  if (!tokens_.empty() && in_.Below(4) != 0) {
    const size_t k = in_.Below(tokens_.size());
    const int rc = hugemm_io_unpin(io_, tokens_[k]);
    FUZZ_CHECK(rc == 0, std::string("unpin of a token held: ") + hugemm_last_error());
    tokens_.erase(tokens_.begin() + static_cast<ptrdiff_t>(k));
    return;
  }
  // A prepared I/O's token is no pin token: the I/O keeps its pins until its completion.
  auto prepared =
      std::find_if(ios_.begin(), ios_.end(), [](const Io& io) { return !io.submitted; });
  if (prepared != ios_.end() && in_.Below(4) == 0) {
    const int rc = hugemm_io_unpin(io_, prepared->sqe->user_data);
    CheckFailure("unpin of a prepared I/O's token", rc);
    FUZZ_CHECK(rc == -ENOENT, "unpin of a prepared I/O's token");
    return;
  }
  const uint64_t token = in_.U64();
  if (std::find(tokens_.begin(), tokens_.end(), token) != tokens_.end()) return;
  const int rc = hugemm_io_unpin(io_, token);
  CheckFailure("unpin", rc);
  FUZZ_CHECK(rc == -ENOENT || (rc == -EINVAL && token == 0), "unpin of a token never handed out");
}

void Driver::OpIndex() {
  uintptr_t addr = static_cast<uintptr_t>(in_.U64());
  size_t length = in_.Below(k2M);
  if (!bufs_.empty() && in_.Below(4) != 0) {
    const Buf& b = bufs_[in_.Below(bufs_.size())];
    addr = b.lo() + in_.Below(b.b.size);
    length = 1 + in_.Below(b.hi() - addr);
  }
  const int rc = hugemm_io_buffer_index(io_, reinterpret_cast<const void*>(addr), length);
  if (trace_) std::fprintf(stderr, "  index of %#lx, %zu bytes\n", addr, length);
  CheckFailure("buffer_index", rc);
  // Live hugemm memory of a runtime whose pools are registered is a fixed buffer, unless
  // it crosses a 1 GiB boundary.
  const bool crosses = (addr >> 30) != ((addr + length - 1) >> 30);
  FUZZ_CHECK(rc >= 0 || length == 0 || !InLiveBuffers(addr, length) || crosses,
             absl::StrFormat("buffer_index of live memory: %s", hugemm_last_error()));
}

// Everything submitted completes, everything prepared and not submitted is cancelled.
void Driver::Drain() {
  for (Io& io : ios_) {
    if (io.submitted) continue;
    uint64_t tag = 0;
    FUZZ_CHECK(hugemm_io_cancel(io_, io.sqe, &tag) == 0 && tag == io.tag, "cancel at the end");
    io_uring_prep_nop(io.sqe);
    io_uring_sqe_set_data64(io.sqe, kNop);
  }
  std::erase_if(ios_, [](const Io& io) { return !io.submitted; });
  FUZZ_CHECK(io_uring_submit(&ring_) >= 0, "io_uring_submit at the end");
  while (!ios_.empty()) OpComplete();
  // NOPs still in the completion queue.
  io_uring_cqe* cqe = nullptr;
  while (io_uring_peek_cqe(&ring_, &cqe) == 0 && cqe != nullptr) {
    FUZZ_CHECK(io_uring_cqe_get_data64(cqe) == kNop, "a completion of no I/O");
    io_uring_cqe_seen(&ring_, cqe);
  }
  FUZZ_CHECK(hugemm_io_in_flight(io_) == tokens_.size(),
             absl::StrFormat("%u in flight with every I/O complete and %u tokens held",
                             hugemm_io_in_flight(io_), tokens_.size()));
}

// With nothing in flight: every live buffer holds what the model says, and, with no token
// held, its folios have no pin.
void Driver::CheckBuffers() {
  for (const Buf& b : bufs_) {
    if (b.freed) continue;
    const auto* bytes = static_cast<const uint8_t*>(b.b.data);
    const auto diff = std::mismatch(b.model.begin(), b.model.end(), bytes);
    FUZZ_CHECK(diff.first == b.model.end(),
               absl::StrFormat("byte %u of a %u-byte buffer is %u, not %u",
                               diff.first - b.model.begin(), b.b.size, *diff.second, *diff.first));
    if (!tokens_.empty()) continue;
    for (size_t off = 0; off < b.b.size; off += b.b.folio_size) {
      hugemm_folio_info info{};
      FUZZ_CHECK(hugemm_folio_info_at(rt_, bytes + off, &info) == 0, "folio info of a buffer");
      FUZZ_CHECK(info.pincount == 0 && (info.order == 0 ? info.refcount < 1024 : true),
                 absl::StrFormat("a folio of a buffer with nothing in flight is pinned: "
                                 "refcount %d, pincount %d",
                                 info.refcount, info.pincount));
    }
  }
}

void Driver::Finish() {
  Drain();
  CheckBuffers();
  for (uint64_t t : tokens_) {
    FUZZ_CHECK(hugemm_io_unpin(io_, t) == 0, "unpin at the end");
  }
  tokens_.clear();
  CheckBuffers();
  if (own_ && in_.Bool()) {
    // Closed under the attached io, buffers and all: the io is good for its detach only.
    hugemm_close(rt_);
    uint64_t token = 0;
    const int rc = hugemm_io_pin(io_, bufs_.empty() ? nullptr : bufs_[0].b.data, k4K, 0, &token);
    FUZZ_CHECK(rc == -EINVAL, "an io of a closed runtime pinned");
    FUZZ_CHECK(hugemm_io_in_flight(io_) == 0, "in flight after the close");
    hugemm_io_detach(io_);
    io_ = nullptr;
    rt_ = nullptr;
  } else {
    const bool replace = in_.Below(4) == 0;
    if (replace) {
      ReplaceRing();
      OpAlloc();  // registered, if it fits, in the closed ring the io still holds
    }
    for (Buf& b : bufs_) {
      if (!b.freed) FUZZ_CHECK(hugemm_free(rt_, b.b.data) == 0, "free at the end");
    }
    hugemm_io_detach(io_);
    io_ = nullptr;
    if (replace) CheckOwnTable();
    if (own_) hugemm_close(rt_);
  }
  io_uring_queue_exit(&ring_);
  std::free(own_buffer_);
  own_buffer_ = nullptr;
}

// The program's ring closed with the io attached (nothing in flight), and a new one made
// with one registered buffer of the program's own.
void Driver::ReplaceRing() {
  const int number = ring_.ring_fd;
  io_uring_queue_exit(&ring_);
  FUZZ_CHECK(io_uring_queue_init(kRingEntries, &ring_, 0) == 0, "io_uring_queue_init");
  if (trace_) std::fprintf(stderr, "  ring %d closed, ring %d made\n", number, ring_.ring_fd);
  FUZZ_CHECK(posix_memalign(&own_buffer_, k4K, k4K) == 0, "posix_memalign");
  const iovec iov{own_buffer_, k4K};
  FUZZ_CHECK(io_uring_register_buffers(&ring_, &iov, 1) == 0, "a new ring's own table");
}

// The new ring's table still holds the program's buffer: a fixed read through index 0
// brings the file's bytes into it.
void Driver::CheckOwnTable() {
  const uint64_t offset = in_.Below(kFileBytes / k4K) * k4K;
  std::memset(own_buffer_, 0, k4K);
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  FUZZ_CHECK(sqe != nullptr, "no SQE in a new ring");
  io_uring_prep_read_fixed(sqe, shared_.fd, own_buffer_, k4K, offset, 0);
  FUZZ_CHECK(io_uring_submit(&ring_) == 1, "io_uring_submit");
  io_uring_cqe* cqe = nullptr;
  FUZZ_CHECK(io_uring_wait_cqe(&ring_, &cqe) == 0, "io_uring_wait_cqe");
  const int res = cqe->res;
  io_uring_cqe_seen(&ring_, cqe);
  FUZZ_CHECK(res == static_cast<int>(k4K),
             absl::StrFormat("a fixed read through the new ring's own buffer: %d (%s)", res,
                             res < 0 ? std::strerror(-res) : "short"));
  FUZZ_CHECK(std::memcmp(own_buffer_, shared_.file.data() + offset, k4K) == 0,
             "the new ring's own buffer does not hold the file's bytes");
}

void Driver::Run() {
  own_ = in_.Below(8) == 0;
  const int pins = in_.Bool();
  const soak::ProcessFootprint before = soak::ProcessFootprint::Now(/*mappings=*/false);
  if (own_) {
    hugemm_options o{HUGEMM_REFCOUNT_FOLIO, pins};
    FUZZ_CHECK(hugemm_open(&o, &rt_) == 0, hugemm_last_error());
  } else {
    rt_ = shared_.runtimes[pins];
  }
  FUZZ_CHECK(io_uring_queue_init(kRingEntries, &ring_, 0) == 0, "io_uring_queue_init");
  hugemm_io_options o{static_cast<int>(in_.Below(3)), static_cast<unsigned>(in_.Below(6))};
  if (in_.Below(16) == 0) o.mode = static_cast<int>(in_.U32());
  int rc = hugemm_io_attach(rt_, ring_.ring_fd, in_.Below(8) == 0 ? nullptr : &o, &io_);
  CheckFailure("attach", rc);
  if (trace_) std::fprintf(stderr, "  own %d, kernel pins %d\n", own_, pins);
  if (rc == 0) {
    if (trace_) std::fprintf(stderr, "  mode %d\n", hugemm_io_mode(io_));
    FUZZ_CHECK(hugemm_io_mode(io_) == HUGEMM_IO_CLONE || hugemm_io_mode(io_) == HUGEMM_IO_IOVEC,
               "attach: no mode");
    hugemm_io* second = nullptr;
    FUZZ_CHECK(
        hugemm_io_attach(rt_, ring_.ring_fd, nullptr, &second) == -EBUSY && second == nullptr,
        "a second attach to the same ring");
    for (int op = 0; op < kMaxOps && !in_.empty(); ++op) {
      switch (in_.Weighted({8, 4, 12, 6, 8, 2, 3, 3, 2})) {
        case 0:
          OpAlloc();
          break;
        case 1:
          OpFree();
          break;
        case 2:
          OpPrep();
          break;
        case 3:
          OpSubmit();
          break;
        case 4:
          OpComplete();
          break;
        case 5:
          OpCancel();
          break;
        case 6:
          OpPin();
          break;
        case 7:
          OpUnpin();
          break;
        default:
          OpIndex();
          break;
      }
    }
    Finish();
  } else {
    FUZZ_CHECK(io_ == nullptr, "a failed attach handed out an io");
    io_uring_queue_exit(&ring_);
    if (own_) hugemm_close(rt_);
  }
  soak::ProcessFootprint after = soak::ProcessFootprint::Now(/*mappings=*/false);
  // VmPin is not compared: the kernel gives a ring's registered buffers back after the ring
  // is gone, on a worker of its own.
  after.vm_pin_kb = before.vm_pin_kb;
  const std::string leak = before.Diff(after);
  FUZZ_CHECK(leak.empty(), "after the input: " + leak);
}

}  // namespace
}  // namespace hugemm::fuzz

HUGEMM_FUZZ_ENTRY_POINT(hugemm::fuzz::Driver)

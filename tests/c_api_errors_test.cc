// The bad-input matrix of hugemm.h: every public function against each kind of bad input
// that applies to it (NULL runtime, NULL output, zero length, unaligned, absurd length,
// unknown flags, conflicting flags, a freed pointer, a pointer from another runtime, a
// stale subscription, a call from a notifier callback). Each cell is its own test: the
// call returns the errno hugemm.h documents for it with a message, and leaves nothing
// behind (the buffer it probes keeps the refcount it had, and the process its
// descriptors, huge page mappings and VmPin). doc/design.md ("Errors") has the same table.
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "hugemm/gup.h"
#include "hugemm/hugemm.h"
#include "runtime/api/c_bridge.h"
#include "soak/footprint.h"
#include "tests/test_util.h"

namespace {

constexpr size_t k2M = size_t{2} << 20;
constexpr size_t kAbsurd = SIZE_MAX - 4095;

// What every cell may use: two runtimes, a live buffer of each, a freed buffer's address.
struct World {
  hugemm_runtime* rt = nullptr;
  hugemm_runtime* other = nullptr;
  hugemm_buffer buf{};
  hugemm_buffer other_buf{};
  void* freed = nullptr;
};

World* g_world = nullptr;
// The message of a cell that makes more calls after the one it tests.
std::string g_message;

// A call's outcome: what it returned, or that it returns nothing to check (void).
constexpr long kNoReturn = 1L << 40;

struct Cell {
  const char* function;
  const char* input;
  long want;  // the negative errno, or the value of a call that cannot fail
  std::function<long(World&)> call;
};

long PinPagesInto(World& w, const void* addr, size_t n, unsigned flags) {
  std::vector<hugemm_page> pages(n > 1024 ? 1024 : (n == 0 ? 1 : n));
  return hugemm_pin_pages(w.rt, addr, n, flags, pages.data());
}

long PinFoliosAt(World& w, const void* addr, size_t length, unsigned flags) {
  hugemm_folio_span spans[4];
  return hugemm_pin_folios(w.rt, addr, length, flags, spans, 4);
}

long PinSegmentsAt(World& w, const void* addr, size_t length, unsigned flags) {
  hugemm_dma_segment segs[4];
  return hugemm_pin_segments(w.rt, addr, length, flags, 0, segs, 4);
}

// A call made from a notifier callback of the runtime it names: the callbacks run under
// the lock that subscribing, unsubscribing and unmapping take, so those must not wait for
// it there. Maps a 2M buffer, subscribes to it with a start callback that makes `call`,
// frees the buffer (which runs the callback) and returns what `call` returned there;
// -EIO when the callbacks did not run once each (or the end ran after an unsubscribe). The message
// of the call is kept in g_message.
struct InCallback {
  World* w;
  hugemm_subscription* sub = nullptr;
  std::function<long(InCallback&)> call;
  long rc = -EIO;
  int starts = 0, ends = 0;
};

long FromCallback(World& w, std::function<long(InCallback&)> call) {
  InCallback in{&w, nullptr, std::move(call)};
  hugemm_buffer b;
  if (hugemm_map_buffer(w.rt, k2M, nullptr, &b) != 0) return -EIO;
  auto start = [](void* user, const void*, size_t, int) {
    auto* in = static_cast<InCallback*>(user);
    ++in->starts;
    in->rc = in->call(*in);
    g_message = hugemm_last_error();
  };
  auto end = [](void* user, const void*, size_t, int) { ++static_cast<InCallback*>(user)->ends; };
  if (hugemm_subscribe(w.rt, b.data, k2M, start, end, &in, &in.sub, nullptr) != 0 ||
      hugemm_free(w.rt, b.data) != 0) {
    return -EIO;
  }
  // A call that unsubscribed (and cleared in.sub) silenced the rest: no end after it.
  const bool unsubscribed = in.sub == nullptr;
  if (!unsubscribed) hugemm_unsubscribe(in.sub);
  if (in.starts != 1 || in.ends != (unsubscribed ? 0 : 1)) return -EIO;
  return in.rc;
}

std::vector<Cell> Matrix() {
  const unsigned kPin = HUGEMM_PIN | HUGEMM_WRITE;
  const unsigned kUnknown = 1u << 9;
  std::vector<Cell> m = {
      // hugemm_open
      {"open", "null_output", -EINVAL, [](World&) { return long{hugemm_open(nullptr, nullptr)}; }},
      {"open", "unknown_refcount", -EINVAL,
       [](World&) {
         hugemm_options o{7, 0};
         hugemm_runtime* rt = nullptr;
         const long rc = hugemm_open(&o, &rt);
         return rt == nullptr ? rc : 0L;
       }},
      // hugemm_close
      {"close", "null_runtime", kNoReturn,
       [](World&) {
         hugemm_close(nullptr);
         return kNoReturn;
       }},
      // hugemm_map_buffer
      {"map_buffer", "null_runtime", -EINVAL,
       [](World&) {
         hugemm_buffer b;
         return long{hugemm_map_buffer(nullptr, k2M, nullptr, &b)};
       }},
      {"map_buffer", "null_output", -EINVAL,
       [](World& w) { return long{hugemm_map_buffer(w.rt, k2M, nullptr, nullptr)}; }},
      {"map_buffer", "zero_length", -EINVAL,
       [](World& w) {
         hugemm_buffer b;
         return long{hugemm_map_buffer(w.rt, 0, nullptr, &b)};
       }},
      {"map_buffer", "unaligned_length", -EINVAL,
       [](World& w) {
         hugemm_buffer b;
         return long{hugemm_map_buffer(w.rt, k2M + 4096, nullptr, &b)};
       }},
      {"map_buffer", "absurd_length", -EINVAL,
       [](World& w) {
         hugemm_buffer b;
         return long{hugemm_map_buffer(w.rt, kAbsurd & ~(k2M - 1), nullptr, &b)};
       }},
      {"map_buffer", "beyond_the_address_space", -EINVAL,
       [](World& w) {
         hugemm_buffer b;
         return long{hugemm_map_buffer(w.rt, size_t{1} << 62, nullptr, &b)};
       }},
      {"map_buffer", "beyond_the_user_half", -EINVAL,
       [](World& w) {
         // A program maps below 2^47 on x86-64, whose table covers 48 bits.
         hugemm_buffer b;
         return long{hugemm_map_buffer(w.rt, size_t{1} << 47, nullptr, &b)};
       }},
      {"map_buffer", "unknown_backing", -EINVAL,
       [](World& w) {
         hugemm_buffer b;
         hugemm_buffer_options o{9, 0, -1, nullptr};
         return long{hugemm_map_buffer(w.rt, k2M, &o, &b)};
       }},
      {"map_buffer", "conflicting_page_size", -EINVAL,
       [](World& w) {
         hugemm_buffer b;
         hugemm_buffer_options o{HUGEMM_BACKING_HUGETLB, 3 * 4096, -1, nullptr};
         return long{hugemm_map_buffer(w.rt, k2M, &o, &b)};
       }},
      {"map_buffer", "offline_node", -EINVAL,
       [](World& w) {
         hugemm_buffer b;
         hugemm_buffer_options o{HUGEMM_BACKING_HUGETLB, 0, 1000, nullptr};
         return long{hugemm_map_buffer(w.rt, k2M, &o, &b)};
       }},
      {"map_buffer", "no_such_device", -ENOENT,
       [](World& w) {
         hugemm_buffer b;
         hugemm_buffer_options o{HUGEMM_BACKING_DEVDAX, 0, -1, "/dev/dax-none.0"};
         return long{hugemm_map_buffer(w.rt, k2M, &o, &b)};
       }},
      // hugemm_alloc
      {"alloc", "null_runtime", -EINVAL,
       [](World&) {
         hugemm_buffer b;
         return long{hugemm_alloc(nullptr, 4096, nullptr, 0, &b)};
       }},
      {"alloc", "null_output", -EINVAL,
       [](World& w) { return long{hugemm_alloc(w.rt, 4096, nullptr, 0, nullptr)}; }},
      {"alloc", "zero_length", -EINVAL,
       [](World& w) {
         hugemm_buffer b;
         return long{hugemm_alloc(w.rt, 0, nullptr, 0, &b)};
       }},
      {"alloc", "absurd_length", -EINVAL,
       [](World& w) {
         hugemm_buffer b;
         return long{hugemm_alloc(w.rt, kAbsurd, nullptr, 0, &b)};
       }},
      {"alloc", "unknown_backing", -EINVAL,
       [](World& w) {
         hugemm_buffer b;
         hugemm_buffer_options o{9, 0, -1, nullptr};
         return long{hugemm_alloc(w.rt, 4096, &o, 0, &b)};
       }},
      {"alloc", "conflicting_page_size", -EINVAL,
       [](World& w) {
         hugemm_buffer b;
         hugemm_buffer_options o{HUGEMM_BACKING_ANON, k2M, -1, nullptr};
         return long{hugemm_alloc(w.rt, 4096, &o, 0, &b)};
       }},
      {"alloc", "offline_node", -EINVAL,
       [](World& w) {
         hugemm_buffer b;
         hugemm_buffer_options o{HUGEMM_BACKING_HUGETLB, 0, 1000, nullptr};
         return long{hugemm_alloc(w.rt, 4096, &o, 0, &b)};
       }},
      {"alloc", "no_such_device", -ENOENT,
       [](World& w) {
         hugemm_buffer b;
         hugemm_buffer_options o{HUGEMM_BACKING_DEVDAX, 0, -1, "/dev/dax-none.0"};
         return long{hugemm_alloc(w.rt, 4096, &o, 0, &b)};
       }},
      // hugemm_free
      {"free", "null_runtime", -EINVAL,
       [](World& w) { return long{hugemm_free(nullptr, w.buf.data)}; }},
      {"free", "null_pointer", -ENOENT, [](World& w) { return long{hugemm_free(w.rt, nullptr)}; }},
      {"free", "unaligned", -ENOENT,
       [](World& w) { return long{hugemm_free(w.rt, static_cast<char*>(w.buf.data) + 4096)}; }},
      {"free", "freed_pointer", -ENOENT, [](World& w) { return long{hugemm_free(w.rt, w.freed)}; }},
      {"free", "other_runtime", -ENOENT,
       [](World& w) { return long{hugemm_free(w.rt, w.other_buf.data)}; }},
      {"free", "inside_callback", -EDEADLK,
       [](World& w) {
         hugemm_buffer other;
         if (hugemm_map_buffer(w.rt, k2M, nullptr, &other) != 0) return long{-EIO};
         const long rc = FromCallback(
             w, [&](InCallback& in) { return long{hugemm_free(in.w->rt, other.data)}; });
         // Refused there, it frees after.
         return hugemm_free(w.rt, other.data) == 0 ? rc : long{-EIO};
       }},
      {"free", "inside_callback_of_other_runtime", 0,
       [](World& w) {
         hugemm_buffer other;
         if (hugemm_map_buffer(w.other, k2M, nullptr, &other) != 0) return long{-EIO};
         return FromCallback(
             w, [&](InCallback& in) { return long{hugemm_free(in.w->other, other.data)}; });
       }},
      {"free", "inside_callback_of_other_runtime_inside_this_ones", -EDEADLK,
       [](World& w) {
         // This runtime's callback frees memory of the other runtime, whose callback then
         // frees memory of this one: the thread holds this runtime's lock further out, so
         // that free is refused, not left waiting for it.
         struct Nested {
           hugemm_runtime* rt;
           void* mine;
           long rc = -EIO;
           std::string message;
         };
         hugemm_buffer mine, theirs;
         if (hugemm_map_buffer(w.rt, k2M, nullptr, &mine) != 0) return long{-EIO};
         if (hugemm_map_buffer(w.other, k2M, nullptr, &theirs) != 0) return long{-EIO};
         Nested nested{w.rt, mine.data};
         auto start = [](void* user, const void*, size_t, int) {
           auto* n = static_cast<Nested*>(user);
           n->rc = hugemm_free(n->rt, n->mine);
           n->message = hugemm_last_error();
         };
         hugemm_subscription* sub = nullptr;
         if (hugemm_subscribe(w.other, theirs.data, k2M, start, nullptr, &nested, &sub,
                              nullptr) != 0) {
           return long{-EIO};
         }
         const long outer = FromCallback(
             w, [&](InCallback&) { return long{hugemm_free(w.other, theirs.data)}; });
         hugemm_unsubscribe(sub);
         g_message = nested.message;
         // The free of the other runtime's memory went through; the refused one frees after.
         if (outer != 0 || hugemm_free(w.rt, mine.data) != 0) return long{-EIO};
         if (nested.message.find("another runtime") == std::string::npos) return long{-EIO};
         return nested.rc;
       }},
      // hugemm_trim
      {"trim", "null_runtime", -EINVAL, [](World&) { return hugemm_trim(nullptr); }},
      {"trim", "inside_callback", -EDEADLK,
       [](World& w) { return FromCallback(w, [](InCallback& in) { return hugemm_trim(in.w->rt); }); }},
      {"trim", "inside_callback_of_other_runtime", 0,
       [](World& w) {
         return FromCallback(w, [](InCallback& in) { return hugemm_trim(in.w->other) >= 0 ? 0L : -1L; });
       }},
      // hugemm_register_external
      {"register_external", "null_runtime", -EINVAL,
       [](World& w) {
         uint64_t id;
         return long{hugemm_register_external(nullptr, w.buf.data, k2M, &id)};
       }},
      {"register_external", "null_output", -EINVAL,
       [](World& w) { return long{hugemm_register_external(w.rt, w.buf.data, k2M, nullptr)}; }},
      {"register_external", "zero_length", -EINVAL,
       [](World& w) {
         uint64_t id;
         return long{hugemm_register_external(w.rt, w.freed, 0, &id)};
       }},
      {"register_external", "unaligned", -EINVAL,
       [](World& w) {
         uint64_t id;
         return long{hugemm_register_external(w.rt, static_cast<char*>(w.freed) + 1, 4096, &id)};
       }},
      {"register_external", "absurd_length", -EINVAL,
       [](World& w) {
         uint64_t id;
         return long{hugemm_register_external(w.rt, w.freed, kAbsurd, &id)};
       }},
      {"register_external", "freed_pointer", -ENOENT,
       [](World& w) {
         uint64_t id;
         return long{hugemm_register_external(w.rt, w.freed, k2M, &id)};
       }},
      {"register_external", "not_faulted_in", -EFAULT,
       [](World& w) {
         uint64_t id;
         void* mem = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
         if (mem == MAP_FAILED) return long{-EIO};
         const long rc = hugemm_register_external(w.rt, mem, 4096, &id);
         g_message = hugemm_last_error();
         if (rc == 0) (void)hugemm_unregister_external(w.rt, id);
         munmap(mem, 4096);
         return rc;
       }},
      {"register_external", "part_of_a_huge_page", -EINVAL,
       [](World& w) {
         uint64_t id;
         void* mem = mmap(nullptr, k2M, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
         if (mem == MAP_FAILED) return long{-EIO};
         const long rc = hugemm_register_external(w.rt, mem, 4096, &id);
         g_message = hugemm_last_error();
         if (rc == 0) (void)hugemm_unregister_external(w.rt, id);
         munmap(mem, k2M);
         return rc;
       }},
      {"register_external", "own_buffer", -EEXIST,
       [](World& w) {
         uint64_t id;
         return long{hugemm_register_external(w.rt, w.buf.data, k2M, &id)};
       }},
      {"register_external", "inside_callback", -EDEADLK,
       [](World& w) {
         void* mem = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
         if (mem == MAP_FAILED) return long{-EIO};
         static_cast<char*>(mem)[0] = 1;
         uint64_t id = 0;
         const long rc = FromCallback(
             w, [&](InCallback& in) { return long{hugemm_register_external(in.w->rt, mem, 4096, &id)}; });
         // Refused there, it registers after.
         const bool after = hugemm_register_external(w.rt, mem, 4096, &id) == 0 &&
                            hugemm_unregister_external(w.rt, id) == 0;
         munmap(mem, 4096);
         return after ? rc : long{-EIO};
       }},
      // hugemm_unregister_external
      {"unregister_external", "null_runtime", -EINVAL,
       [](World&) { return long{hugemm_unregister_external(nullptr, 1)}; }},
      {"unregister_external", "other_runtime", -ENOENT,
       [](World& w) {
         uint64_t id = 0;
         void* mem = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
         if (mem == MAP_FAILED) return long{-EIO};
         static_cast<char*>(mem)[0] = 1;
         if (hugemm_register_external(w.other, mem, 4096, &id) != 0) {
           munmap(mem, 4096);
           return long{-EIO};
         }
         const long rc = hugemm_unregister_external(w.rt, id);
         g_message = hugemm_last_error();
         const bool undone = hugemm_unregister_external(w.other, id) == 0;
         munmap(mem, 4096);
         return undone ? rc : long{-EIO};
       }},
      {"unregister_external", "stale_id", -ENOENT,
       [](World& w) {
         uint64_t id = 0;
         void* mem = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
         if (mem == MAP_FAILED) return long{-EIO};
         static_cast<char*>(mem)[0] = 1;
         if (hugemm_register_external(w.rt, mem, 4096, &id) != 0 ||
             hugemm_unregister_external(w.rt, id) != 0) {
           munmap(mem, 4096);
           return long{-EIO};
         }
         const long rc = hugemm_unregister_external(w.rt, id);
         g_message = hugemm_last_error();
         munmap(mem, 4096);
         return rc;
       }},
      {"unregister_external", "unknown_id", -ENOENT,
       [](World& w) { return long{hugemm_unregister_external(w.rt, 0xdead'beef)}; }},
      {"unregister_external", "inside_callback", -EDEADLK,
       [](World& w) {
         uint64_t id = 0;
         void* mem = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
         if (mem == MAP_FAILED) return long{-EIO};
         static_cast<char*>(mem)[0] = 1;
         if (hugemm_register_external(w.rt, mem, 4096, &id) != 0) {
           munmap(mem, 4096);
           return long{-EIO};
         }
         const long rc =
             FromCallback(w, [&](InCallback& in) { return long{hugemm_unregister_external(in.w->rt, id)}; });
         const bool undone = hugemm_unregister_external(w.rt, id) == 0;
         munmap(mem, 4096);
         return undone ? rc : long{-EIO};
       }},
      // hugemm_pin_pages
      {"pin_pages", "null_runtime", -EINVAL,
       [](World& w) {
         hugemm_page p;
         return hugemm_pin_pages(nullptr, w.buf.data, 1, HUGEMM_PIN, &p);
       }},
      {"pin_pages", "null_output", -EINVAL,
       [](World& w) { return hugemm_pin_pages(w.rt, w.buf.data, 1, HUGEMM_PIN, nullptr); }},
      {"pin_pages", "zero_length", 0,
       [=](World& w) { return PinPagesInto(w, w.buf.data, 0, kPin); }},
      {"pin_pages", "zero_length_null_output", 0,
       [](World& w) { return hugemm_pin_pages(w.rt, w.buf.data, 0, HUGEMM_PIN, nullptr); }},
      {"pin_pages", "zero_length_null_output_bad_flags", -EINVAL,
       [=](World& w) { return hugemm_pin_pages(w.rt, w.buf.data, 0, kPin | kUnknown, nullptr); }},
      {"pin_pages", "absurd_length", -EINVAL,
       [=](World& w) { return PinPagesInto(w, w.buf.data, SIZE_MAX / 2, kPin); }},
      {"pin_pages", "unknown_flags", -EINVAL,
       [=](World& w) { return PinPagesInto(w, w.buf.data, 1, kPin | kUnknown); }},
      {"pin_pages", "conflicting_flags", -EINVAL,
       [=](World& w) { return PinPagesInto(w, w.buf.data, 1, HUGEMM_PIN | HUGEMM_GET); }},
      {"pin_pages", "longterm_get", -EINVAL,
       [=](World& w) { return PinPagesInto(w, w.buf.data, 1, HUGEMM_GET | HUGEMM_LONGTERM); }},
      {"pin_pages", "no_kind", -EINVAL,
       [=](World& w) { return PinPagesInto(w, w.buf.data, 1, HUGEMM_WRITE); }},
      {"pin_pages", "freed_pointer", -ENOENT,
       [=](World& w) { return PinPagesInto(w, w.freed, 1, kPin); }},
      {"pin_pages", "other_runtime", -ENOENT,
       [=](World& w) { return PinPagesInto(w, w.other_buf.data, 1, kPin); }},
      // hugemm_pin_folios
      {"pin_folios", "null_runtime", -EINVAL,
       [](World& w) {
         hugemm_folio_span s;
         return hugemm_pin_folios(nullptr, w.buf.data, k2M, HUGEMM_PIN, &s, 1);
       }},
      {"pin_folios", "null_output", -EINVAL,
       [](World& w) { return hugemm_pin_folios(w.rt, w.buf.data, k2M, HUGEMM_PIN, nullptr, 1); }},
      {"pin_folios", "zero_length", 0,
       [=](World& w) { return PinFoliosAt(w, w.buf.data, 0, kPin); }},
      {"pin_folios", "zero_length_null_output", 0,
       [](World& w) { return hugemm_pin_folios(w.rt, w.buf.data, 0, HUGEMM_PIN, nullptr, 4); }},
      {"pin_folios", "absurd_length", -EINVAL,
       [=](World& w) { return PinFoliosAt(w, w.buf.data, kAbsurd, kPin); }},
      {"pin_folios", "unknown_flags", -EINVAL,
       [=](World& w) { return PinFoliosAt(w, w.buf.data, k2M, kPin | kUnknown); }},
      {"pin_folios", "conflicting_flags", -EINVAL,
       [=](World& w) { return PinFoliosAt(w, w.buf.data, k2M, HUGEMM_PIN | HUGEMM_GET); }},
      {"pin_folios", "freed_pointer", -ENOENT,
       [=](World& w) { return PinFoliosAt(w, w.freed, k2M, kPin); }},
      {"pin_folios", "other_runtime", -ENOENT,
       [=](World& w) { return PinFoliosAt(w, w.other_buf.data, k2M, kPin); }},
      // hugemm_pin_segments
      {"pin_segments", "null_runtime", -EINVAL,
       [](World& w) {
         hugemm_dma_segment s;
         return hugemm_pin_segments(nullptr, w.buf.data, k2M, HUGEMM_PIN, 0, &s, 1);
       }},
      {"pin_segments", "null_output", -EINVAL,
       [](World& w) {
         return hugemm_pin_segments(w.rt, w.buf.data, k2M, HUGEMM_PIN, 0, nullptr, 1);
       }},
      {"pin_segments", "zero_length", 0,
       [=](World& w) { return PinSegmentsAt(w, w.buf.data, 0, kPin); }},
      {"pin_segments", "zero_length_null_output", 0,
       [](World& w) {
         return hugemm_pin_segments(w.rt, w.buf.data, 0, HUGEMM_PIN, 0, nullptr, 4);
       }},
      {"pin_segments", "absurd_length", -EINVAL,
       [=](World& w) { return PinSegmentsAt(w, w.buf.data, kAbsurd, kPin); }},
      {"pin_segments", "unknown_flags", -EINVAL,
       [=](World& w) { return PinSegmentsAt(w, w.buf.data, k2M, kPin | kUnknown); }},
      {"pin_segments", "conflicting_flags", -EINVAL,
       [=](World& w) { return PinSegmentsAt(w, w.buf.data, k2M, HUGEMM_PIN | HUGEMM_GET); }},
      {"pin_segments", "max_segment_below_4k", -EINVAL,
       [=](World& w) {
         hugemm_dma_segment segs[4];
         return hugemm_pin_segments(w.rt, w.buf.data, 8192, kPin, 4095, segs, 4);
       }},
      {"pin_segments", "freed_pointer", -ENOENT,
       [=](World& w) { return PinSegmentsAt(w, w.freed, k2M, kPin); }},
      {"pin_segments", "other_runtime", -ENOENT,
       [=](World& w) { return PinSegmentsAt(w, w.other_buf.data, k2M, kPin); }},
      // hugemm_unpin_pages
      {"unpin_pages", "null_runtime", -EINVAL,
       [](World&) { return hugemm_unpin_pages(nullptr, nullptr, 0, 0); }},
      {"unpin_pages", "null_pages", -EINVAL,
       [](World& w) { return hugemm_unpin_pages(w.rt, nullptr, 1, 0); }},
      {"unpin_pages", "zero_length", 0,
       [](World& w) { return hugemm_unpin_pages(w.rt, nullptr, 0, 0); }},
      // hugemm_unpin_folios
      {"unpin_folios", "null_runtime", -EINVAL,
       [](World&) { return hugemm_unpin_folios(nullptr, nullptr, 0, HUGEMM_PIN, 0); }},
      {"unpin_folios", "null_spans", -EINVAL,
       [](World& w) { return hugemm_unpin_folios(w.rt, nullptr, 1, HUGEMM_PIN, 0); }},
      {"unpin_folios", "zero_length", 0,
       [](World& w) { return hugemm_unpin_folios(w.rt, nullptr, 0, HUGEMM_PIN, 0); }},
      {"unpin_folios", "unknown_flags", -EINVAL,
       [=](World& w) { return hugemm_unpin_folios(w.rt, nullptr, 0, HUGEMM_PIN | kUnknown, 0); }},
      {"unpin_folios", "conflicting_flags", -EINVAL,
       [](World& w) { return hugemm_unpin_folios(w.rt, nullptr, 0, HUGEMM_PIN | HUGEMM_GET, 0); }},
      {"unpin_folios", "longterm_get", -EINVAL,
       [](World& w) {
         return hugemm_unpin_folios(w.rt, nullptr, 0, HUGEMM_GET | HUGEMM_LONGTERM, 0);
       }},
      // hugemm_unpin_range
      {"unpin_range", "null_runtime", -EINVAL,
       [](World& w) { return long{hugemm_unpin_range(nullptr, w.buf.data, k2M, HUGEMM_PIN, 0)}; }},
      {"unpin_range", "zero_length", -EINVAL,
       [](World& w) { return long{hugemm_unpin_range(w.rt, w.buf.data, 0, HUGEMM_PIN, 0)}; }},
      {"unpin_range", "absurd_length", -EINVAL,
       [](World& w) { return long{hugemm_unpin_range(w.rt, w.buf.data, kAbsurd, HUGEMM_PIN, 0)}; }},
      {"unpin_range", "beyond_the_address_space", -EFAULT,
       [](World& w) {
         return long{hugemm_unpin_range(w.rt, w.buf.data, size_t{1} << 62, HUGEMM_PIN, 0)};
       }},
      {"unpin_range", "unknown_flags", -EINVAL,
       [=](World& w) {
         return long{hugemm_unpin_range(w.rt, w.buf.data, k2M, HUGEMM_PIN | kUnknown, 0)};
       }},
      {"unpin_range", "conflicting_flags", -EINVAL,
       [](World& w) {
         return long{hugemm_unpin_range(w.rt, w.buf.data, k2M, HUGEMM_PIN | HUGEMM_GET, 0)};
       }},
      {"unpin_range", "longterm_get", -EINVAL,
       [](World& w) {
         return long{hugemm_unpin_range(w.rt, w.buf.data, k2M, HUGEMM_GET | HUGEMM_LONGTERM, 0)};
       }},
      {"unpin_range", "freed_pointer", -EFAULT,
       [](World& w) { return long{hugemm_unpin_range(w.rt, w.freed, k2M, HUGEMM_PIN, 0)}; }},
      {"unpin_range", "other_runtime", -EFAULT,
       [](World& w) {
         return long{hugemm_unpin_range(w.rt, w.other_buf.data, k2M, HUGEMM_PIN, 0)};
       }},
      {"unpin_range", "never_pinned", -EFAULT,
       [](World& w) { return long{hugemm_unpin_range(w.rt, w.buf.data, k2M, HUGEMM_PIN, 0)}; }},
      {"unpin_range", "never_taken", -EFAULT,
       [](World& w) { return long{hugemm_unpin_range(w.rt, w.buf.data, k2M, HUGEMM_GET, 0)}; }},
      // hugemm_maybe_dma_pinned (answers 0 for anything it cannot answer)
      {"maybe_dma_pinned", "null_runtime", 0,
       [](World& w) { return long{hugemm_maybe_dma_pinned(nullptr, w.buf.data)}; }},
      {"maybe_dma_pinned", "freed_pointer", 0,
       [](World& w) { return long{hugemm_maybe_dma_pinned(w.rt, w.freed)}; }},
      // the page accessors of an entry no pin wrote
      {"page_accessors", "zero_entry", kNoReturn,
       [](World&) {
         const hugemm_page zero{0};
         (void)hugemm_page_folio(zero);
         (void)hugemm_page_index(zero);
         (void)hugemm_page_address(zero);
         (void)hugemm_page_pfn(zero);
         return kNoReturn;
       }},
      // hugemm_translate
      {"translate", "null_runtime", -EINVAL,
       [](World& w) {
         hugemm_translation t;
         return long{hugemm_translate(nullptr, w.buf.data, 0, &t)};
       }},
      {"translate", "null_output", -EINVAL,
       [](World& w) { return long{hugemm_translate(w.rt, w.buf.data, 0, nullptr)}; }},
      {"translate", "freed_pointer", -ENOENT,
       [](World& w) {
         hugemm_translation t;
         return long{hugemm_translate(w.rt, w.freed, 0, &t)};
       }},
      {"translate", "other_runtime", -ENOENT,
       [](World& w) {
         hugemm_translation t;
         return long{hugemm_translate(w.rt, w.other_buf.data, 0, &t)};
       }},
      // hugemm_folio_info_at
      {"folio_info_at", "null_runtime", -EINVAL,
       [](World& w) {
         hugemm_folio_info i;
         return long{hugemm_folio_info_at(nullptr, w.buf.data, &i)};
       }},
      {"folio_info_at", "null_output", -EINVAL,
       [](World& w) { return long{hugemm_folio_info_at(w.rt, w.buf.data, nullptr)}; }},
      {"folio_info_at", "freed_pointer", -ENOENT,
       [](World& w) {
         hugemm_folio_info i;
         return long{hugemm_folio_info_at(w.rt, w.freed, &i)};
       }},
      {"folio_info_at", "other_runtime", -ENOENT,
       [](World& w) {
         hugemm_folio_info i;
         return long{hugemm_folio_info_at(w.rt, w.other_buf.data, &i)};
       }},
      // hugemm_verify
      {"verify", "null_runtime", -EINVAL,
       [](World& w) { return hugemm_verify(nullptr, w.buf.data, k2M, nullptr); }},
      {"verify", "zero_length", -EINVAL,
       [](World& w) { return hugemm_verify(w.rt, w.buf.data, 0, nullptr); }},
      {"verify", "absurd_length", -EINVAL,
       [](World& w) { return hugemm_verify(w.rt, w.buf.data, kAbsurd, nullptr); }},
      {"verify", "freed_pointer", -ENOENT,
       [](World& w) {
         hugemm_verify_report r;
         return hugemm_verify(w.rt, w.freed, k2M, &r);
       }},
      {"verify", "other_runtime", -ENOENT,
       [](World& w) {
         hugemm_verify_report r;
         return hugemm_verify(w.rt, w.other_buf.data, k2M, &r);
       }},
      // hugemm_subscribe
      {"subscribe", "null_runtime", -EINVAL,
       [](World& w) {
         hugemm_subscription* s;
         return long{
             hugemm_subscribe(nullptr, w.buf.data, k2M, nullptr, nullptr, nullptr, &s, nullptr)};
       }},
      {"subscribe", "null_output", -EINVAL,
       [](World& w) {
         return long{
             hugemm_subscribe(w.rt, w.buf.data, k2M, nullptr, nullptr, nullptr, nullptr, nullptr)};
       }},
      {"subscribe", "zero_length", -EINVAL,
       [](World& w) {
         hugemm_subscription* s;
         return long{hugemm_subscribe(w.rt, w.buf.data, 0, nullptr, nullptr, nullptr, &s, nullptr)};
       }},
      {"subscribe", "absurd_length", -EINVAL,
       [](World& w) {
         hugemm_subscription* s = nullptr;
         const long rc =
             hugemm_subscribe(w.rt, w.buf.data, kAbsurd, nullptr, nullptr, nullptr, &s, nullptr);
         if (rc == 0) hugemm_unsubscribe(s);
         return rc;
       }},
      {"subscribe", "inside_callback", -EDEADLK,
       [](World& w) {
         return FromCallback(w, [](InCallback& in) {
           hugemm_subscription* s = nullptr;
           const long rc = hugemm_subscribe(in.w->rt, in.w->buf.data, k2M, nullptr, nullptr,
                                            nullptr, &s, nullptr);
           if (rc == 0) hugemm_unsubscribe(s);
           return rc;
         });
       }},
      // hugemm_unsubscribe
      {"unsubscribe", "inside_callback", 0,
       [](World& w) {
         // From its own start callback: at once no callback of it runs (not its end), and
         // it ends after the announcement instead of waiting for the lock it holds.
         return FromCallback(w, [](InCallback& in) {
           hugemm_unsubscribe(in.sub);
           in.sub = nullptr;
           return 0L;
         });
       }},
      // hugemm_unsubscribe
      {"unsubscribe", "null_subscription", kNoReturn,
       [](World&) {
         hugemm_unsubscribe(nullptr);
         return kNoReturn;
       }},
      {"unsubscribe", "stale_after_close", kNoReturn,
       [](World&) {
         // A subscription whose runtime is closed: hugemm_close ended it; unsubscribing
         // it afterwards frees what is left and calls nothing.
         hugemm_options o{HUGEMM_REFCOUNT_FOLIO, 0};
         hugemm_runtime* rt = nullptr;
         if (hugemm_open(&o, &rt) != 0) return long{-EIO};
         hugemm_subscription* s = nullptr;
         int heard = 0;
         if (hugemm_subscribe(rt, nullptr, SIZE_MAX, nullptr, nullptr, &heard, &s, nullptr) != 0) {
           hugemm_close(rt);
           return long{-EIO};
         }
         hugemm_close(rt);
         hugemm_unsubscribe(s);
         return kNoReturn;
       }},
  };
  return m;
}

class CApiErrors : public testing::TestWithParam<Cell> {
 protected:
  static void SetUpTestSuite() {
    auto* w = new World;
    hugemm_options o{HUGEMM_REFCOUNT_FOLIO, 0};
    if (hugemm_open(&o, &w->rt) != 0 || hugemm_open(&o, &w->other) != 0) return;
    hugemm_buffer gone{};
    if (hugemm_map_buffer(w->rt, k2M, nullptr, &w->buf) != 0 ||
        hugemm_map_buffer(w->other, k2M, nullptr, &w->other_buf) != 0 ||
        hugemm_map_buffer(w->rt, k2M, nullptr, &gone) != 0) {
      return;  // no huge pages: every cell skips
    }
    w->freed = gone.data;
    if (hugemm_free(w->rt, gone.data) != 0) return;
    g_world = w;
  }
  static void TearDownTestSuite() {
    if (g_world == nullptr) return;
    hugemm_close(g_world->rt);
    hugemm_close(g_world->other);
    delete g_world;
    g_world = nullptr;
  }
};

TEST_P(CApiErrors, AnswersAsDocumentedAndLeavesNothing) {
  if (g_world == nullptr) GTEST_SKIP() << "no huge pages";
  World& w = *g_world;
  const Cell& cell = GetParam();
  hugemm_folio_info before{};
  ASSERT_EQ(hugemm_folio_info_at(w.rt, w.buf.data, &before), 0) << hugemm_last_error();
  const hugemm::soak::ProcessFootprint fp = hugemm::soak::ProcessFootprint::Now();

  g_message.clear();
  const long rc = cell.call(w);
  const std::string message = g_message.empty() ? hugemm_last_error() : g_message;

  EXPECT_EQ(rc, cell.want) << cell.function << " " << cell.input << ": " << message << " ("
                           << std::strerror(rc < 0 ? static_cast<int>(-rc) : 0) << ")";
  if (cell.want < 0 && rc < 0) {
    EXPECT_NE(message, "") << "an error without words";
  }
  hugemm_folio_info after{};
  ASSERT_EQ(hugemm_folio_info_at(w.rt, w.buf.data, &after), 0) << hugemm_last_error();
  EXPECT_EQ(after.refcount, before.refcount) << "a reference was left behind";
  EXPECT_EQ(after.pincount, before.pincount) << "a pin was left behind";
  EXPECT_EQ(fp.Diff(hugemm::soak::ProcessFootprint::Now()), "");
}

// The kernel's refusal at open comes back as its own errno (not -EAGAIN): with no
// descriptor left, the kernel pin table's io_uring_setup fails with EMFILE. Not a cell:
// AddressSanitizer's own memory checks need descriptors (a pipe), so it is skipped there.
// Every flag word, the six flags' 64 sets and an unknown bit: each pin and each unpin
// that takes flags accepts it exactly when the C++ pin does (CheckGupFlags), and refuses
// it with -EINVAL and the same words. Memory here is neither mapped nor pinned: an
// accepted word pins nothing from an empty range and unpins nothing.
TEST(CApiFlags, PinsAndUnpinsJudgeFlagsByTheCppRule) {
  hugemm_runtime* rt = nullptr;
  ASSERT_EQ(hugemm_open(nullptr, &rt), 0) << hugemm_last_error();
  static char nowhere[4096] __attribute__((aligned(4096)));
  hugemm_folio_span span{};
  hugemm_page page{};
  hugemm_dma_segment seg{};
  std::vector<unsigned> words;
  for (unsigned f = 0; f < 64; ++f) words.push_back(f);
  words.push_back(HUGEMM_PIN | 0x400u);
  int accepted = 0;
  for (const unsigned f : words) {
    const absl::Status want = hugemm::CheckGupFlags(static_cast<hugemm::GupFlags>(f));
    accepted += want.ok() ? 1 : 0;
    const std::vector<std::pair<const char*, std::function<long()>>> calls = {
        {"pin_pages", [&] { return hugemm_pin_pages(rt, nowhere, 0, f, &page); }},
        {"pin_folios", [&] { return hugemm_pin_folios(rt, nowhere, 0, f, &span, 1); }},
        {"pin_segments", [&] { return hugemm_pin_segments(rt, nowhere, 0, f, 0, &seg, 1); }},
        {"unpin_folios", [&] { return hugemm_unpin_folios(rt, &span, 0, f, 0); }},
        {"unpin_range", [&] { return long{hugemm_unpin_range(rt, nowhere, 4096, f, 0)}; }},
    };
    for (const auto& [name, call] : calls) {
      SCOPED_TRACE(absl::StrFormat("%s, flags 0x%x", name, f));
      const long rc = call();
      if (want.ok()) {
        // unpin_range of memory the runtime does not map: -EFAULT, past the flag check.
        EXPECT_EQ(rc, std::string(name) == "unpin_range" ? -EFAULT : 0) << hugemm_last_error();
      } else {
        EXPECT_EQ(rc, -EINVAL);
        EXPECT_EQ(std::string(hugemm_last_error()), std::string(want.message()));
      }
    }
  }
  EXPECT_EQ(accepted, 24) << "PIN or GET, each with or without WRITE, FAST_ONLY, PARTIAL; "
                             "PIN with or without LONGTERM";
  hugemm_close(rt);
}

// A small buffer freed on a thread that then allocates nothing waits in that thread's
// cache, and its page is still the runtime's to give: another thread's hugemm_trim gives
// it back while the freeing thread waits. Each trim returns what went back to the kernel.
TEST(CApiTrim, APageHeldInAnIdleThreadsCacheGoesBackOnAnotherThreadsTrim) {
  HUGEMM_NEED_HUGEPAGES(hugemm::kPageSize2M, 2);
  hugemm_runtime* rt = nullptr;
  ASSERT_EQ(hugemm_open(nullptr, &rt), 0) << hugemm_last_error();
  hugemm_buffer small{};
  ASSERT_EQ(hugemm_alloc(rt, 4096, nullptr, 0, &small), 0) << hugemm_last_error();
  // In use: a trim puts back what this thread's cache took along, and the kernel gets
  // nothing.
  EXPECT_EQ(hugemm_trim(rt), 0);
  std::mutex mu;
  std::condition_variable cv;
  int step = 0;
  long freeing_thread_trim = -1;
  std::thread other([&] {
    EXPECT_EQ(hugemm_free(rt, small.data), 0) << hugemm_last_error();
    std::unique_lock<std::mutex> lock(mu);
    step = 1;
    cv.notify_all();
    cv.wait(lock, [&] { return step == 2; });
    freeing_thread_trim = hugemm_trim(rt);
    step = 3;
    cv.notify_all();
    cv.wait(lock, [&] { return step == 4; });
  });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return step == 1; });
  }
  EXPECT_EQ(hugemm_trim(rt), long{k2M}) << "the idle thread's cache kept the page";
  {
    std::unique_lock<std::mutex> lock(mu);
    step = 2;
    cv.notify_all();
    cv.wait(lock, [&] { return step == 3; });
  }
  EXPECT_EQ(freeing_thread_trim, 0) << "the page went back twice";
  {
    std::lock_guard<std::mutex> lock(mu);
    step = 4;
    cv.notify_all();
  }
  other.join();
  // The pool grows again from the kernel.
  ASSERT_EQ(hugemm_alloc(rt, 4096, nullptr, 0, &small), 0) << hugemm_last_error();
  EXPECT_EQ(hugemm_free(rt, small.data), 0);
  EXPECT_EQ(hugemm_trim(rt), long{k2M});
  hugemm_close(rt);
}

// The failure path of every C call: an OK status handed to it (the mistake
// hugemm_io_buffer_index once made, which returned index 0) is -EIO with a message, never 0.
TEST(CApiBridge, AFailureWithAnOkStatusIsNeverZero) {
  EXPECT_EQ(hugemm::bridge::CApiFail(absl::OkStatus()), -EIO);
  EXPECT_NE(std::string(hugemm_last_error()), "");
  EXPECT_EQ(hugemm::bridge::CApiFailKernel("hugemm_f", absl::OkStatus()), -EIO);
  EXPECT_EQ(hugemm::bridge::CApiFail("hugemm_f", absl::OkStatus()), -EIO);
  EXPECT_EQ(hugemm::bridge::CApiFail(absl::NotFoundError("x")), -ENOENT);
  EXPECT_EQ(std::string(hugemm_last_error()), "x");
}

// A failure from the layers below a C call is said with the call's name first, once.
TEST(CApiBridge, AFailureFromBelowNamesTheCall) {
  EXPECT_EQ(hugemm::bridge::CApiFail("hugemm_f", absl::NotFoundError("x")), -ENOENT);
  EXPECT_EQ(std::string(hugemm_last_error()), "hugemm_f: x");
  EXPECT_EQ(hugemm::bridge::CApiFail("hugemm_f", absl::NotFoundError("hugemm_f: x")), -ENOENT);
  EXPECT_EQ(std::string(hugemm_last_error()), "hugemm_f: x");
  EXPECT_EQ(hugemm::bridge::CApiFailKernel("hugemm_f", hugemm::ErrnoStatus(EBADF, "y")), -EBADF);
  EXPECT_TRUE(absl::StartsWith(hugemm_last_error(), "hugemm_f: y: ")) << hugemm_last_error();
  hugemm_runtime* rt = nullptr;
  ASSERT_EQ(hugemm_open(nullptr, &rt), 0);
  char stack[64];
  hugemm_folio_info info;
  EXPECT_EQ(hugemm_folio_info_at(rt, stack, &info), -ENOENT);
  EXPECT_TRUE(absl::StartsWith(hugemm_last_error(), "hugemm_folio_info_at: "))
      << hugemm_last_error();
  EXPECT_EQ(hugemm_free(rt, stack), -ENOENT);
  EXPECT_TRUE(absl::StartsWith(hugemm_last_error(), "hugemm_free: ")) << hugemm_last_error();
  hugemm_close(rt);
}

TEST(CApiOpen, AKernelRefusalIsTheKernelsErrno) {
#ifdef __SANITIZE_ADDRESS__
  GTEST_SKIP() << "the sanitizer needs descriptors of its own";
#endif
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
  rlimit none = saved;
  none.rlim_cur = 0;
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &none), 0);
  hugemm_runtime* rt = nullptr;
  const int rc = hugemm_open(nullptr, &rt);
  const std::string message = hugemm_last_error();
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &saved), 0);
  EXPECT_EQ(rc, -EMFILE) << message;
  EXPECT_NE(message.find("EMFILE"), std::string::npos) << message;
  EXPECT_EQ(rt, nullptr);
  hugemm_close(rt);
}

// Out of descriptors part way through a program's life: the calls that open one (a memfd,
// a /proc or /sys file: the map, the allocation, the registration and the verification)
// answer the kernel's EMFILE, not -ENOMEM ("no huge pages"), name
// it, and leave nothing behind; the same runtime serves the next request once
// descriptors are free. In a child, whose limit is its own.
TEST(CApiExhaustion, NoDescriptorLeftIsEmfileAndTheRuntimeServesAfterwards) {
  HUGEMM_NEED_HUGEPAGES(hugemm::kPageSize2M, 4);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    hugemm_runtime* rt = nullptr;
    if (hugemm_open(nullptr, &rt) != 0) _exit(2);
    // Memory of the program's own, faulted in, for the registration.
    void* own = mmap(nullptr, k2M, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
    if (own == MAP_FAILED) _exit(3);
    hugemm_buffer held{};  // for the verification, which reads /proc/self/maps
    if (hugemm_map_buffer(rt, k2M, nullptr, &held) != 0) _exit(3);
    const hugemm::soak::ProcessFootprint before = hugemm::soak::ProcessFootprint::Now();
    rlimit saved{};
    if (getrlimit(RLIMIT_NOFILE, &saved) != 0) _exit(4);
    rlimit none = saved;
    none.rlim_cur = 0;
    if (setrlimit(RLIMIT_NOFILE, &none) != 0) _exit(4);
    hugemm_buffer b{};
    const int map_rc = hugemm_map_buffer(rt, k2M, nullptr, &b);
    const std::string map_msg = hugemm_last_error();
    hugemm_buffer_options fs{HUGEMM_BACKING_HUGETLBFS, 0, -1, nullptr};
    const int alloc_rc = hugemm_alloc(rt, 4096, &fs, 0, &b);
    const std::string alloc_msg = hugemm_last_error();
    uint64_t id = 0;
    const int reg_rc = hugemm_register_external(rt, own, k2M, &id);
    const std::string reg_msg = hugemm_last_error();
    const long verify_rc = hugemm_verify(rt, held.data, k2M, nullptr);
    const std::string verify_msg = hugemm_last_error();
    if (setrlimit(RLIMIT_NOFILE, &saved) != 0) _exit(4);
    int bad = 0;
    for (const auto& [rc, msg, what] :
         {std::tuple(map_rc, map_msg, "map"), std::tuple(alloc_rc, alloc_msg, "alloc"),
          std::tuple(reg_rc, reg_msg, "register"),
          std::tuple(static_cast<int>(verify_rc), verify_msg, "verify")}) {
      if (rc != -EMFILE || msg.find("EMFILE") == std::string::npos) {
        std::fprintf(stderr, "%s: %d (%s): %s\n", what, rc, std::strerror(-rc), msg.c_str());
        bad = 5;
      }
    }
    if (bad != 0) _exit(bad);
    const std::string leak = before.Diff(hugemm::soak::ProcessFootprint::Now());
    if (!leak.empty()) {
      std::fprintf(stderr, "left behind: %s\n", leak.c_str());
      _exit(6);
    }
    if (hugemm_map_buffer(rt, k2M, nullptr, &b) != 0 || hugemm_free(rt, b.data) != 0 ||
        hugemm_register_external(rt, own, k2M, &id) != 0 ||
        hugemm_unregister_external(rt, id) != 0 ||
        hugemm_verify(rt, held.data, k2M, nullptr) != 0 || hugemm_free(rt, held.data) != 0) {
      std::fprintf(stderr, "afterwards: %s\n", hugemm_last_error());
      _exit(7);
    }
    hugemm_close(rt);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "2-4: setup; 5: wrong errno or message; 6: something left behind; 7: refused afterwards";
}

INSTANTIATE_TEST_SUITE_P(Matrix, CApiErrors, testing::ValuesIn(Matrix()),
                         [](const testing::TestParamInfo<Cell>& info) {
                           return std::string(info.param.function) + "_" + info.param.input;
                         });

}  // namespace

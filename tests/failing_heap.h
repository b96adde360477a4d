// A heap that fails on request, for the out-of-memory tests: a program that links
// failing_heap.cc has its operator new and delete replaced by ones that take from malloc
// and, on the thread that asks for it, fail the k-th allocation of a call (and, in the
// "exhausted" mode, every one after). They also count the allocations not yet deleted,
// on every thread, which is how a test sees one a call left behind.
#ifndef HUGEMM_TESTS_FAILING_HEAP_H_
#define HUGEMM_TESTS_FAILING_HEAP_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace hugemm::testing {

// From now on this thread's allocations fail from the k-th (0: the next one) on: that one
// alone, or that one and every one after when `exhausted`.
void ArmHeapFailure(long k, bool exhausted);
// Stops the failures on this thread. True if an allocation failed since the arming.
bool DisarmHeapFailure();
// Allocations made and not yet deleted, on every thread.
long LiveAllocations();

// One call with the heap failing at its k-th allocation: what it returned, and whether it
// met a failure.
struct HeapOutcome {
  long rc = 0;
  bool hit = false;
};
template <typename Call>
HeapOutcome WithHeapFailing(long k, bool exhausted, Call call) {
  ArmHeapFailure(k, exhausted);
  const long rc = call();
  return {rc, DisarmHeapFailure()};
}

// Lets this thread's allocations through while it lives (test code that must not fail,
// called from inside a call under test), then arms the failures as they were.
class HeapFailuresPaused {
 public:
  HeapFailuresPaused();
  ~HeapFailuresPaused();
  HeapFailuresPaused(const HeapFailuresPaused&) = delete;
  HeapFailuresPaused& operator=(const HeapFailuresPaused&) = delete;

 private:
  long left_;
  bool exhausted_;
};

// More allocations than any one call makes: a call still meeting failures past this loops.
inline constexpr long kMaxHeapFailures = 20000;

// Runs `round(k, exhausted, &hit)` for k = 0, 1, ... in both modes until a round meets no
// failure (hit stays false). A round makes its call with the heap failing at allocation k
// (WithHeapFailing), checks it and undoes everything it made. `snapshot()`, called before
// each k, returns what tells, after a round, what the round left behind ("" for nothing:
// descriptors, huge pages, whatever the test counts). Allocations are counted here: a
// round may leave what lives as long as the process (a table grown once, a thread's error
// message), so a round that leaves some is run again, and the second run must leave none.
template <typename Round, typename Snapshot>
void EveryHeapFailure(Round round, Snapshot snapshot) {
  for (bool exhausted : {false, true}) {
    const char* mode = exhausted ? " (and every one after)" : "";
    for (long k = 0;; ++k) {
      ASSERT_LT(k, kMaxHeapFailures) << "the call still meets failures";
      auto left_behind = snapshot();
      bool hit = false;
      long left = 0;
      for (int run = 0; run < 2; ++run) {
        const long live = LiveAllocations();
        round(k, exhausted, &hit);
        if (::testing::Test::HasFailure()) {
          ADD_FAILURE() << "in the round with allocation " << k << " failing" << mode;
          return;
        }
        const std::string leak = left_behind();
        ASSERT_EQ(leak, "") << "left behind by the round with allocation " << k << " failing"
                            << mode;
        left = LiveAllocations() - live;
        if (left == 0) break;
      }
      EXPECT_EQ(left, 0) << "allocations left behind, twice, by the round with allocation " << k
                         << " failing" << mode;
      if (!hit) break;
    }
  }
}

// A snapshot for EveryHeapFailure of the free huge pages of `page_size`, waited for after
// the round: the kernel gives a registration's or a ring's pages back in the background.
inline auto FreeHugePagesSnapshot(size_t page_size) {
  return [page_size] {
    return [page_size, before = FreeHugePages(page_size)]() -> std::string {
      if (WaitForFreeHugePages(page_size, before)) return "";
      return "free huge pages: " + std::to_string(FreeHugePages(page_size)) + ", were " +
             std::to_string(before);
    };
  };
}

}  // namespace hugemm::testing

#endif  // HUGEMM_TESTS_FAILING_HEAP_H_

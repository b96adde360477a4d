// A heap that fails on request, for the out-of-memory tests: a program that links
// failing_heap.cc has its operator new and delete replaced by ones that take from malloc
// and, on the thread that asks for it, fail the k-th allocation of a call (and, in the
// "exhausted" mode, every one after). They also count the allocations not yet deleted,
// on every thread, which is how a test sees one a call left behind.
#ifndef HUGEMM_TESTS_FAILING_HEAP_H_
#define HUGEMM_TESTS_FAILING_HEAP_H_

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

}  // namespace hugemm::testing

#endif  // HUGEMM_TESTS_FAILING_HEAP_H_

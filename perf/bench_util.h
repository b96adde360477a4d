// Timing helpers shared by the benchmarks behind `hugemm bench`. Every benchmark times
// its subject and its baseline in the same run and reports their ratio, because a shared
// machine's absolute numbers drift while ratios hold.
#ifndef HUGEMM_PERF_BENCH_UTIL_H_
#define HUGEMM_PERF_BENCH_UTIL_H_

#include <time.h>

#include <cstdint>
#include <vector>

namespace hugemm::perf {

inline uint64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

struct Summary {
  double min = 0;
  double median = 0;
  double max = 0;
};

// min / median / max of the samples (which it sorts).
Summary Summarize(std::vector<double> samples);

// Keeps the compiler from dropping a computed value.
template <typename T>
inline void DoNotOptimize(const T& value) {
  asm volatile("" : : "r,m"(value) : "memory");
}

}  // namespace hugemm::perf

#endif  // HUGEMM_PERF_BENCH_UTIL_H_

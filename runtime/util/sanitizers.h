// Which sanitizer a build runs under, for the few places that must do something else
// there: HUGEMM_TSAN under ThreadSanitizer (GCC's and Clang's spellings), which models
// neither liburcu's barriers nor membarrier(2).
#ifndef HUGEMM_RUNTIME_UTIL_SANITIZERS_H_
#define HUGEMM_RUNTIME_UTIL_SANITIZERS_H_

#if defined(__SANITIZE_THREAD__)
#define HUGEMM_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define HUGEMM_TSAN 1
#endif
#endif

#endif  // HUGEMM_RUNTIME_UTIL_SANITIZERS_H_

// The promise every call of hugemm's C APIs makes when it fails: a negative errno the
// header names, and words for it in hugemm_last_error().
#ifndef HUGEMM_FUZZ_C_FAILURE_H_
#define HUGEMM_FUZZ_C_FAILURE_H_

#include <algorithm>
#include <cstdio>
#include <initializer_list>
#include <string>

#include "absl/strings/str_format.h"
#include "fuzz/fuzz_input.h"
#include "hugemm/hugemm.h"

namespace hugemm::fuzz {

// `rc` is what `call` returned: a count or 0, or minus one of `known`, with a message.
// With `trace`, every answer is printed.
inline void CheckCFailure(const char* call, long rc, std::initializer_list<int> known, bool trace) {
  if (trace) std::fprintf(stderr, "%s: %ld %s\n", call, rc, rc < 0 ? hugemm_last_error() : "");
  if (rc >= 0) return;
  FUZZ_CHECK(std::find(known.begin(), known.end(), -rc) != known.end(),
             absl::StrFormat("%s: errno %d (%s)", call, -rc, hugemm_last_error()));
  FUZZ_CHECK(hugemm_last_error()[0] != '\0', std::string(call) + ": an error without words");
}

}  // namespace hugemm::fuzz

#endif  // HUGEMM_FUZZ_C_FAILURE_H_

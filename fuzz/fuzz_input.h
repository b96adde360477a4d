// Reading a fuzzer's bytes as decisions, and failing loudly when a check does not hold.
//
// A FuzzInput hands out small integers from the front of the data; once the data runs
// out every read returns 0, so any input, however short, is a valid program. Decisions
// come from the bytes, never from a random source, so a failing input replays exactly.
#ifndef HUGEMM_FUZZ_FUZZ_INPUT_H_
#define HUGEMM_FUZZ_FUZZ_INPUT_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace hugemm::fuzz {

class FuzzInput {
 public:
  FuzzInput(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  bool empty() const { return pos_ >= size_; }
  uint8_t Byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint16_t U16() { return static_cast<uint16_t>(Byte() | Byte() << 8); }
  uint32_t U32() { return U16() | static_cast<uint32_t>(U16()) << 16; }
  uint64_t U64() { return U32() | static_cast<uint64_t>(U32()) << 32; }
  bool Bool() { return Byte() & 1; }
  // A value in [0, n) (0 when n is 0).
  size_t Below(size_t n) {
    if (n == 0) return 0;
    const uint64_t v = n <= 256 ? Byte() : n <= 65536 ? U16() : U64();
    return static_cast<size_t>(v % n);
  }
  // One of the first n choices, each as likely as its weight (weights sum to at most 255).
  template <size_t N>
  size_t Weighted(const uint8_t (&weights)[N]) {
    unsigned total = 0;
    for (uint8_t w : weights) total += w;
    unsigned pick = Byte() % total;
    for (size_t i = 0; i < N; ++i) {
      if (pick < weights[i]) return i;
      pick -= weights[i];
    }
    return N - 1;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// A broken promise: print what and where, then abort so the fuzzer keeps the input.
[[noreturn]] inline void Broken(const char* file, int line, const std::string& what) {
  std::fprintf(stderr, "%s:%d: check failed: %s\n", file, line, what.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace hugemm::fuzz

#define FUZZ_CHECK(cond, what)                                                                   \
  do {                                                                                           \
    if (!(cond)) ::hugemm::fuzz::Broken(__FILE__, __LINE__, std::string(#cond) + ": " + (what)); \
  } while (0)

// libFuzzer's entry point for a fuzzer whose `Driver(FuzzInput&)` runs one input with
// Run(); at global scope, after the Driver.
#define HUGEMM_FUZZ_ENTRY_POINT(Driver)                                     \
  extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) { \
    ::hugemm::fuzz::FuzzInput in(data, size);                               \
    Driver driver(in);                                                      \
    driver.Run();                                                           \
    return 0;                                                               \
  }

#endif  // HUGEMM_FUZZ_FUZZ_INPUT_H_

// A small JSON value: enough to print `--json` output and to parse it back in tests.
// Objects keep insertion order so output reads in the order it was built.
#ifndef HUGEMM_RUNTIME_UTIL_JSON_H_
#define HUGEMM_RUNTIME_UTIL_JSON_H_

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace hugemm {

class Json {
 public:
  using Array = std::vector<Json>;
  using Object = std::vector<std::pair<std::string, Json>>;

  Json() : v_(nullptr) {}
  Json(std::nullptr_t) : v_(nullptr) {}
  Json(bool b) : v_(b) {}
  Json(int v) : v_(static_cast<double>(v)) {}
  Json(long v) : v_(static_cast<double>(v)) {}
  Json(long long v) : v_(static_cast<double>(v)) {}
  Json(unsigned v) : v_(static_cast<double>(v)) {}
  Json(unsigned long v) : v_(static_cast<double>(v)) {}
  Json(unsigned long long v) : v_(static_cast<double>(v)) {}
  Json(double v) : v_(v) {}
  Json(const char* s) : v_(std::string(s)) {}
  Json(std::string s) : v_(std::move(s)) {}
  Json(absl::string_view s) : v_(std::string(s)) {}
  Json(Array a) : v_(std::move(a)) {}
  Json(Object o) : v_(std::move(o)) {}

  static Json MakeObject() { return Json(Object{}); }
  static Json MakeArray() { return Json(Array{}); }

  bool is_null() const { return std::holds_alternative<std::nullptr_t>(v_); }
  bool is_bool() const { return std::holds_alternative<bool>(v_); }
  bool is_number() const { return std::holds_alternative<double>(v_); }
  bool is_string() const { return std::holds_alternative<std::string>(v_); }
  bool is_array() const { return std::holds_alternative<Array>(v_); }
  bool is_object() const { return std::holds_alternative<Object>(v_); }

  bool as_bool() const { return std::get<bool>(v_); }
  double as_number() const { return std::get<double>(v_); }
  int64_t as_int() const { return static_cast<int64_t>(std::get<double>(v_)); }
  const std::string& as_string() const { return std::get<std::string>(v_); }
  const Array& as_array() const { return std::get<Array>(v_); }
  Array& as_array() { return std::get<Array>(v_); }
  const Object& as_object() const { return std::get<Object>(v_); }

  // Object access. Set replaces an existing key.
  Json& Set(absl::string_view key, Json value);
  // nullptr when absent or not an object.
  const Json* Find(absl::string_view key) const;
  // Array append.
  Json& Push(Json value);

  // Compact with `indent` < 0, else pretty-printed.
  std::string Dump(int indent = 2) const;

  static absl::StatusOr<Json> Parse(absl::string_view text);

 private:
  void DumpTo(std::string* out, int indent, int depth) const;
  std::variant<std::nullptr_t, bool, double, std::string, Array, Object> v_;
};

}  // namespace hugemm

#endif  // HUGEMM_RUNTIME_UTIL_JSON_H_

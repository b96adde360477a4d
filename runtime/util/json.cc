#include "runtime/util/json.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace hugemm {
namespace {

void Escape(absl::string_view s, std::string* out) {
  out->push_back('"');
  for (char c : s) {
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\t':
        out->append("\\t");
        break;
      case '\r':
        out->append("\\r");
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          absl::StrAppendFormat(out, "\\u%04x", c);
        } else {
          out->push_back(c);
        }
    }
  }
  out->push_back('"');
}

class Parser {
 public:
  explicit Parser(absl::string_view text) : s_(text) {}

  absl::StatusOr<Json> ParseDocument() {
    absl::StatusOr<Json> v = ParseValue(0);
    if (!v.ok()) return v;
    SkipSpace();
    if (pos_ != s_.size()) return Error("trailing characters");
    return v;
  }

 private:
  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat("JSON: ", what, " at offset ", pos_));
  }
  void SkipSpace() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\t' || s_[pos_] == '\r')) {
      ++pos_;
    }
  }
  bool Consume(absl::string_view word) {
    if (s_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  absl::StatusOr<Json> ParseValue(int depth) {
    if (depth > 64) return Error("nesting too deep");
    SkipSpace();
    if (pos_ >= s_.size()) return Error("unexpected end");
    char c = s_[pos_];
    if (c == '{') return ParseObject(depth);
    if (c == '[') return ParseArray(depth);
    if (c == '"') {
      absl::StatusOr<std::string> str = ParseString();
      if (!str.ok()) return str.status();
      return Json(std::move(*str));
    }
    if (Consume("true")) return Json(true);
    if (Consume("false")) return Json(false);
    if (Consume("null")) return Json(nullptr);
    return ParseNumber();
  }

  absl::StatusOr<Json> ParseNumber() {
    const size_t start = pos_;
    while (pos_ < s_.size() &&
           (std::isdigit(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '-' ||
            s_[pos_] == '+' || s_[pos_] == '.' || s_[pos_] == 'e' || s_[pos_] == 'E')) {
      ++pos_;
    }
    if (start == pos_) return Error("unexpected character");
    std::string num(s_.substr(start, pos_ - start));
    char* end = nullptr;
    double v = std::strtod(num.c_str(), &end);
    if (end != num.c_str() + num.size()) return Error("bad number");
    return Json(v);
  }

  absl::StatusOr<std::string> ParseString() {
    ++pos_;  // opening quote
    std::string out;
    while (pos_ < s_.size() && s_[pos_] != '"') {
      char c = s_[pos_++];
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (pos_ >= s_.size()) break;
      char e = s_[pos_++];
      switch (e) {
        case 'n':
          out.push_back('\n');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'u': {
          if (pos_ + 4 > s_.size()) return Error("bad \\u escape");
          unsigned code = 0;
          if (std::sscanf(std::string(s_.substr(pos_, 4)).c_str(), "%4x", &code) != 1) {
            return Error("bad \\u escape");
          }
          pos_ += 4;
          if (code < 0x80) {
            out.push_back(static_cast<char>(code));
          } else if (code < 0x800) {
            out.push_back(static_cast<char>(0xc0 | (code >> 6)));
            out.push_back(static_cast<char>(0x80 | (code & 0x3f)));
          } else {
            out.push_back(static_cast<char>(0xe0 | (code >> 12)));
            out.push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3f)));
            out.push_back(static_cast<char>(0x80 | (code & 0x3f)));
          }
          break;
        }
        default:
          out.push_back(e);
      }
    }
    if (pos_ >= s_.size()) return Error("unterminated string");
    ++pos_;  // closing quote
    return out;
  }

  absl::StatusOr<Json> ParseArray(int depth) {
    ++pos_;
    Json arr = Json::MakeArray();
    SkipSpace();
    if (Consume("]")) return arr;
    while (true) {
      absl::StatusOr<Json> v = ParseValue(depth + 1);
      if (!v.ok()) return v;
      arr.Push(std::move(*v));
      SkipSpace();
      if (Consume("]")) return arr;
      if (!Consume(",")) return Error("expected , or ]");
    }
  }

  absl::StatusOr<Json> ParseObject(int depth) {
    ++pos_;
    Json obj = Json::MakeObject();
    SkipSpace();
    if (Consume("}")) return obj;
    while (true) {
      SkipSpace();
      if (pos_ >= s_.size() || s_[pos_] != '"') return Error("expected a key");
      absl::StatusOr<std::string> key = ParseString();
      if (!key.ok()) return key.status();
      SkipSpace();
      if (!Consume(":")) return Error("expected :");
      absl::StatusOr<Json> v = ParseValue(depth + 1);
      if (!v.ok()) return v;
      obj.Set(*key, std::move(*v));
      SkipSpace();
      if (Consume("}")) return obj;
      if (!Consume(",")) return Error("expected , or }");
    }
  }

  absl::string_view s_;
  size_t pos_ = 0;
};

}  // namespace

Json& Json::Set(absl::string_view key, Json value) {
  Object& o = std::get<Object>(v_);
  for (auto& [k, v] : o) {
    if (k == key) {
      v = std::move(value);
      return v;
    }
  }
  o.emplace_back(std::string(key), std::move(value));
  return o.back().second;
}

const Json* Json::Find(absl::string_view key) const {
  if (!is_object()) return nullptr;
  for (const auto& [k, v] : std::get<Object>(v_)) {
    if (k == key) return &v;
  }
  return nullptr;
}

Json& Json::Push(Json value) {
  Array& a = std::get<Array>(v_);
  a.push_back(std::move(value));
  return a.back();
}

std::string Json::Dump(int indent) const {
  std::string out;
  DumpTo(&out, indent, 0);
  return out;
}

void Json::DumpTo(std::string* out, int indent, int depth) const {
  auto newline = [&](int d) {
    if (indent < 0) return;
    out->push_back('\n');
    out->append(static_cast<size_t>(indent * d), ' ');
  };
  if (is_null()) {
    out->append("null");
  } else if (is_bool()) {
    out->append(as_bool() ? "true" : "false");
  } else if (is_number()) {
    double v = as_number();
    if (!std::isfinite(v)) {
      out->append("null");
    } else if (v == std::floor(v) && std::fabs(v) < 9.0e15) {
      absl::StrAppend(out, static_cast<int64_t>(v));
    } else {
      absl::StrAppendFormat(out, "%.6g", v);
    }
  } else if (is_string()) {
    Escape(as_string(), out);
  } else if (is_array()) {
    const Array& a = as_array();
    out->push_back('[');
    for (size_t i = 0; i < a.size(); ++i) {
      if (i) out->push_back(',');
      newline(depth + 1);
      a[i].DumpTo(out, indent, depth + 1);
    }
    if (!a.empty()) newline(depth);
    out->push_back(']');
  } else {
    const Object& o = as_object();
    out->push_back('{');
    for (size_t i = 0; i < o.size(); ++i) {
      if (i) out->push_back(',');
      newline(depth + 1);
      Escape(o[i].first, out);
      out->append(indent < 0 ? ":" : ": ");
      o[i].second.DumpTo(out, indent, depth + 1);
    }
    if (!o.empty()) newline(depth);
    out->push_back('}');
  }
}

absl::StatusOr<Json> Json::Parse(absl::string_view text) { return Parser(text).ParseDocument(); }

}  // namespace hugemm

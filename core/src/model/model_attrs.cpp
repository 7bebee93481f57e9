#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>

#include "model_parse.hpp"

namespace memfit {

namespace {
bool read_int(const std::string& s, i64& v) {
  auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}
}  // namespace

Value parse_attr_text(const AttrSpec& spec, const std::string& text, const SourcePos& pos, const std::string& layer) {
  Value v;
  v.pos = pos;
  auto bad = [&](const std::string& expected) -> Value {
    throw Error(pos, layer, std::string("option ") + spec.key + "='" + text + "' is not " + expected,
                std::string("write ") + spec.key + "=" +
                    (spec.type == Value::Type::pair      ? "3 or 3x3"
                     : spec.type == Value::Type::boolean ? "true or false"
                     : spec.type == Value::Type::real    ? "0.5"
                                                         : "a whole number"));
  };
  switch (spec.type) {
    case Value::Type::integer:
      v.type = Value::Type::integer;
      if (!read_int(text, v.a)) return bad("a whole number");
      return v;
    case Value::Type::pair: {
      // keywords some pair options accept: padding same/valid, a pool's stride defaulting to its kernel
      if ((std::string(spec.key) == "padding" && (text == "same" || text == "valid")) ||
          (std::string(spec.key) == "stride" && text == "kernel")) {
        v.type = Value::Type::text;
        v.text = text;
        return v;
      }
      auto x = text.find('x');
      const char* expected = std::string(spec.key) == "padding" ? "a whole number, AxB, same or valid" : "a whole number or AxB";
      v.type = x == std::string::npos ? Value::Type::integer : Value::Type::pair;
      if (x == std::string::npos) {
        if (!read_int(text, v.a)) return bad(expected);
        v.type = Value::Type::pair;
        v.b = v.a;
      } else if (!read_int(text.substr(0, x), v.a) || !read_int(text.substr(x + 1), v.b)) {
        return bad(expected);
      }
      if (v.a < 0 || v.b < 0) return bad("a non-negative size");
      if (v.a > (i64{1} << 40) || v.b > (i64{1} << 40)) return bad("a reasonable size (under 2^40)");
      return v;
    }
    case Value::Type::boolean:
      v.type = Value::Type::boolean;
      if (text == "true" || text == "1" || text == "yes") v.flag = true;
      else if (text == "false" || text == "0" || text == "no") v.flag = false;
      else return bad("true or false");
      return v;
    case Value::Type::real: {
      v.type = Value::Type::real;
      v.text = text;
      // Decimal spellings only: strtod also reads "nan", "inf" and hex floats, and a NaN or infinite
      // option has no PyTorch meaning (the JSON writer would print it as null and refuse its own output).
      if (text.empty() || text.find_first_not_of("0123456789+-.eE") != std::string::npos) return bad("a finite number");
      char* end = nullptr;
      errno = 0;
      v.real = std::strtod(text.c_str(), &end);
      if (end != text.c_str() + text.size()) return bad("a number");
      if (errno == ERANGE || !std::isfinite(v.real)) return bad("a number in the range of a double");
      return v;
    }
    case Value::Type::text:
      v.type = Value::Type::text;
      v.text = text;
      return v;
  }
  return v;
}

const AttrSpec* find_attr(const OpRule& rule, std::string_view key) {
  for (const auto& s : rule.attrs)
    if (key == s.key) return &s;
  return nullptr;
}

std::string attr_keys(const OpRule& rule) {
  std::string keys;
  for (const auto& s : rule.attrs) keys += (keys.empty() ? "" : ", ") + std::string(s.key);
  return keys;
}

void fill_defaults(const OpRule& rule, Layer& layer) {
  for (const auto& spec : rule.attrs) {
    if (layer.attrs.count(spec.key)) continue;
    if (!spec.default_text) {
      std::string pos_hint;
      for (std::size_t i = 0; i < rule.positional.size(); ++i)
        if (std::string(rule.positional[i]) == spec.key) pos_hint = " (argument " + std::to_string(i + 1) + ")";
      throw Error(layer.pos, layer.name, std::string(rule.kind) + " needs " + spec.key + pos_hint,
                  std::string("give it, e.g. ") +
                      (std::string(rule.kind) == "conv2d" ? "conv 32 3x3"
                       : std::string(rule.kind) == "linear" ? "fc 500"
                                                             : std::string(spec.key) + "=..."));
    }
    layer.attrs[spec.key] = parse_attr_text(spec, spec.default_text, layer.pos, layer.name);
  }
}

std::string_view strip_bom(std::string_view src) {
  if (src.size() >= 3 && src.substr(0, 3) == "\xEF\xBB\xBF") src.remove_prefix(3);
  return src;
}

std::size_t invalid_utf8_at(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    // lead byte: sequence length and the allowed range of the second byte (RFC 3629 table 3-7),
    // which excludes overlong forms (C0, C1, E0 80..9F, F0 80..8F), surrogates (ED A0..BF) and > U+10FFFF
    std::size_t n = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c == 0xE0) n = 3, lo = 0xA0;
    else if (c >= 0xE1 && c <= 0xEC) n = 3;
    else if (c == 0xED) n = 3, hi = 0x9F;
    else if (c >= 0xEE && c <= 0xEF) n = 3;
    else if (c == 0xF0) n = 4, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3) n = 4;
    else if (c == 0xF4) n = 4, hi = 0x8F;
    else return i;
    if (i + n > s.size()) return i;
    auto c1 = static_cast<unsigned char>(s[i + 1]);
    if (c1 < lo || c1 > hi) return i;
    for (std::size_t k = 2; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return i;
    i += n;
  }
  return std::string_view::npos;
}

std::string utf8_or_question_marks(std::string_view s) {
  std::string out;
  while (!s.empty()) {
    std::size_t bad = invalid_utf8_at(s);
    if (bad == std::string_view::npos) {
      out += s;
      break;
    }
    out += s.substr(0, bad);
    out += '?';
    s.remove_prefix(bad + 1);
  }
  return out;
}

}  // namespace memfit

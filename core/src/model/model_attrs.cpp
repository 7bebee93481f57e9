#include <cerrno>
#include <charconv>
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
      char* end = nullptr;
      errno = 0;
      v.real = std::strtod(text.c_str(), &end);
      if (text.empty() || end != text.c_str() + text.size() || errno != 0) return bad("a number");
      return v;
    }
    case Value::Type::text:
      v.type = Value::Type::text;
      v.text = text;
      return v;
  }
  return v;
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

}  // namespace memfit

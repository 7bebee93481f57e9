#include "memfit/common.hpp"

#include <cctype>
#include <cstdio>
#include <limits>

namespace memfit {

namespace {
std::string compose(const SourcePos& pos, const std::string& layer, const std::string& problem,
                    const std::string& fix) {
  std::string out;
  if (!pos.file.empty()) {
    out += pos.file;
    if (pos.line > 0) out += ":" + std::to_string(pos.line);
    if (pos.column > 0) out += ":" + std::to_string(pos.column);
    out += ": ";
  }
  if (!layer.empty()) out += "layer '" + layer + "': ";
  out += problem;
  if (!fix.empty()) out += ". Fix: " + fix;
  return out;
}
}  // namespace

Error::Error(SourcePos pos, std::string layer, std::string problem, std::string fix)
    : std::runtime_error(compose(pos, layer, problem, fix)),
      pos_(std::move(pos)),
      layer_(std::move(layer)),
      problem_(std::move(problem)),
      fix_(std::move(fix)) {}

i64 checked_add(i64 a, i64 b, std::string_view what) {
  i64 r;
  if (__builtin_add_overflow(a, b, &r))
    throw Error({}, "", "byte count overflows 64 bits while adding " + std::string(what),
                "use a smaller batch or smaller layers");
  return r;
}

i64 checked_mul(i64 a, i64 b, std::string_view what) {
  i64 r;
  if (__builtin_mul_overflow(a, b, &r))
    throw Error({}, "", "size overflows 64 bits while computing " + std::string(what),
                "use a smaller batch or smaller layers");
  return r;
}

std::string format_count(i64 n) {
  std::string digits = std::to_string(n < 0 ? -n : n);
  std::string out;
  int k = 0;
  for (auto it = digits.rbegin(); it != digits.rend(); ++it, ++k) {
    if (k > 0 && k % 3 == 0) out.insert(out.begin(), ',');
    out.insert(out.begin(), *it);
  }
  return n < 0 ? "-" + out : out;
}

std::string format_bytes_exact(i64 bytes) { return format_count(bytes) + " B"; }

std::string format_mib(i64 bytes) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f MiB", static_cast<double>(bytes) / static_cast<double>(MiB));
  return buf;
}

i64 parse_size(std::string_view text, std::string_view what) {
  auto fail = [&](const std::string& why) -> i64 {
    throw Error({}, "", "cannot read " + std::string(what) + " '" + std::string(text) + "': " + why,
                "write a size like 8GiB, 12GB, 12000MiB or a byte count");
  };
  std::size_t i = 0;
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  // Integer part and optional fraction, kept as an exact decimal (mantissa / 10^n_frac).
  i64 mantissa = 0;
  int n_frac = 0, n_digits = 0;
  bool in_frac = false;
  for (; i < text.size(); ++i) {
    char c = text[i];
    if (c == '.' && !in_frac) { in_frac = true; continue; }
    if (c == ',')
      fail("a comma is neither a decimal point nor a digit group here (1,5GiB could mean 1.5 or 15 GiB); "
           "write 1.5GiB, or 1500MiB without separators");
    if (c == '_') continue;
    if (!std::isdigit(static_cast<unsigned char>(c))) break;
    if (__builtin_mul_overflow(mantissa, i64{10}, &mantissa) ||
        __builtin_add_overflow(mantissa, i64{c - '0'}, &mantissa))
      fail("the number is too large");
    ++n_digits;
    if (in_frac && ++n_frac > 18) fail("too many decimals");  // 10^19 would overflow the divisor
  }
  if (n_digits == 0) fail("no number");
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  std::string unit;
  for (; i < text.size(); ++i) unit += static_cast<char>(std::tolower(static_cast<unsigned char>(text[i])));
  i64 scale = 1;
  if (unit.empty() || unit == "b") scale = 1;
  else if (unit == "kib" || unit == "k") scale = KiB;
  else if (unit == "mib" || unit == "m") scale = MiB;
  else if (unit == "gib" || unit == "g") scale = GiB;
  else if (unit == "tib") scale = 1024 * GiB;
  else if (unit == "kb") scale = kB;
  else if (unit == "mb") scale = MB;
  else if (unit == "gb") scale = GB;
  else if (unit == "tb") scale = 1000 * GB;
  else fail("unknown unit '" + unit + "' (use B, KiB, MiB, GiB, kB, MB or GB)");
  i64 value = 0;
  if (__builtin_mul_overflow(mantissa, scale, &value)) fail("the size overflows 64 bits");
  i64 divisor = 1;
  for (int k = 0; k < n_frac; ++k) divisor *= 10;
  if (value % divisor != 0) fail("not a whole number of bytes");
  value /= divisor;
  if (value > kMaxSizeBytes) fail("larger than 1 PiB (" + format_count(kMaxSizeBytes) + " B), the most memfit accepts");
  return value;
}

i64 dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f16: return 2;
    case DType::bf16: return 2;
    case DType::i64: return 8;
    case DType::b8: return 1;
    case DType::u8: return 1;
  }
  return 0;
}

bool parse_dtype_name(const std::string& t, DType& out) {
  if (t == "float32" || t == "fp32" || t == "float") out = DType::f32;
  else if (t == "float16" || t == "fp16" || t == "half") out = DType::f16;
  else if (t == "bfloat16" || t == "bf16") out = DType::bf16;
  else return false;
  return true;
}
const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
    case DType::i64: return "int64";
    case DType::b8: return "bool";
    case DType::u8: return "uint8";
  }
  return "?";
}

const char* category_name(Category c) {
  switch (c) {
    case Category::parameter: return "parameter";
    case Category::buffer: return "buffer";
    case Category::gradient: return "gradient";
    case Category::optimizer_state: return "optimizer_state";
    case Category::input: return "input";
    case Category::activation: return "activation";
    case Category::activation_grad: return "activation_grad";
    case Category::workspace: return "workspace";
    case Category::temporary: return "temporary";
  }
  return "?";
}

const char* torch_rules_name(TorchRules r) { return r == TorchRules::v1_13 ? "1.13" : "2"; }

const char* phase_name(Phase p) {
  switch (p) {
    case Phase::setup: return "setup";
    case Phase::zero_grad: return "zero_grad";
    case Phase::forward: return "forward";
    case Phase::loss: return "loss";
    case Phase::backward: return "backward";
    case Phase::optimizer: return "optimizer";
  }
  return "?";
}

}  // namespace memfit

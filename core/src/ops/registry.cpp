// The op registry and the attribute readers rules use. The rules themselves live by family in
// this folder (conv_pool, norm, activation, shape, loss). Every layer kind memfit knows, one rule each. Shapes follow PyTorch's formulas exactly; the memory
// behaviour follows tools/autograd/derivatives.yaml (what is saved) and the ATen kernels (what is
// allocated). Citations are to pytorch/pytorch; docs/pytorch-behaviour.md collects the evidence, and
// tests/reference/ holds what torch really saved on the CPU.
#include "memfit/ops.hpp"
#include "rules.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <memory>
#include <stdexcept>

namespace memfit {

// ---------------------------------------------------------------------------------------------
// Tensor helpers

i64 TensorType::numel() const {
  i64 n = 1;
  for (i64 d : shape) n = checked_mul(n, d, "a tensor's element count");
  return n;
}
i64 TensorType::bytes() const { return checked_mul(numel(), dtype_size(dtype), "a tensor's bytes"); }
std::vector<i64> TensorType::layout() const {
  if (!strides.empty()) return strides;
  std::vector<i64> st(shape.size());
  i64 step = 1;
  for (std::size_t k = shape.size(); k-- > 0;) {
    st[k] = step;
    step = checked_mul(step, std::max<i64>(shape[k], 1), "a tensor's strides");
  }
  return st;
}
bool TensorType::is_contiguous() const {
  if (strides.empty()) return true;
  i64 expected = 1;
  for (std::size_t k = shape.size(); k-- > 0;) {
    if (shape[k] == 1) continue;
    if (strides[k] != expected) return false;
    expected = checked_mul(expected, shape[k], "a tensor's strides");
  }
  return true;
}

// Follows computeStride_impl (aten/src/ATen/TensorUtils.cpp): walk the old dims from the last,
// splitting them into chunks of contiguous memory; each chunk must be covered exactly by
// consecutive new dims.
bool view_strides(const std::vector<i64>& shape, const std::vector<i64>& strides, const std::vector<i64>& new_shape,
                  std::vector<i64>& out) {
  out.assign(new_shape.size(), 1);
  if (shape.empty()) return true;
  const i64 n_view = static_cast<i64>(new_shape.size());
  i64 view_d = n_view - 1;
  i64 chunk_base_stride = strides.back();
  i64 tensor_numel = 1, view_numel = 1;
  for (i64 tensor_d = static_cast<i64>(shape.size()) - 1; tensor_d >= 0; --tensor_d) {
    tensor_numel = checked_mul(tensor_numel, shape[static_cast<std::size_t>(tensor_d)], "a view's size");
    bool chunk_ends = tensor_d == 0 || (shape[static_cast<std::size_t>(tensor_d - 1)] != 1 &&
                                        strides[static_cast<std::size_t>(tensor_d - 1)] != tensor_numel * chunk_base_stride);
    if (!chunk_ends) continue;
    while (view_d >= 0 && (view_numel < tensor_numel || new_shape[static_cast<std::size_t>(view_d)] == 1)) {
      out[static_cast<std::size_t>(view_d)] = view_numel * chunk_base_stride;
      view_numel = checked_mul(view_numel, new_shape[static_cast<std::size_t>(view_d)], "a view's size");
      --view_d;
    }
    if (view_numel != tensor_numel) return false;
    if (tensor_d > 0) {
      chunk_base_stride = strides[static_cast<std::size_t>(tensor_d - 1)];
      tensor_numel = 1;
      view_numel = 1;
    }
  }
  return view_d == -1;
}
i64 ParamSpec::numel() const {
  i64 n = 1;
  for (i64 d : shape) n = checked_mul(n, d, "a parameter's element count");
  return n;
}

void fail(const Layer& l, const std::string& problem, const std::string& fix) {
  throw Error(l.pos, l.name, problem, fix);
}

const Value& attr(const Layer& l, const char* key) {
  auto it = l.attrs.find(key);
  if (it == l.attrs.end()) fail(l, std::string("missing attribute '") + key + "'", std::string("add ") + key + "=...");
  return it->second;
}
i64 attr_int(const Layer& l, const char* key) { return attr(l, key).a; }
std::pair<i64, i64> attr_pair(const Layer& l, const char* key) {
  const Value& v = attr(l, key);
  return {v.a, v.type == Value::Type::pair ? v.b : v.a};
}
bool attr_bool(const Layer& l, const char* key) { return attr(l, key).flag; }
double attr_real(const Layer& l, const char* key) { return attr(l, key).real; }

// ---------------------------------------------------------------------------------------------
// Registry

namespace {

struct Registry {
  std::vector<std::unique_ptr<OpRule>> rules;
  std::map<std::string, const OpRule*, std::less<>> by_name;
  std::vector<const OpRule*> list;
};

Registry& registry_storage() {
  static Registry r;
  return r;
}

void add_rule(Registry& r, OpRule rule) {
  auto owned = std::make_unique<OpRule>(std::move(rule));
  std::vector<std::string> names{owned->kind};
  for (const char* a : owned->aliases) names.emplace_back(a);
  for (const auto& n : names)
    if (r.by_name.count(n)) throw std::logic_error("op kind or alias registered twice: " + n);
  // Everything that lists kinds (docs, web help, tools) reads these fields: a rule without them is
  // a programming error, caught when the registry is built.
  if (!owned->shape || !owned->memory || !owned->summary[0] || !owned->pytorch[0] || !owned->source[0])
    throw std::logic_error(std::string("op rule '") + owned->kind + "' lacks shape/memory/summary/pytorch/source");
  for (const auto& n : names) r.by_name.emplace(n, owned.get());
  r.list.push_back(owned.get());
  r.rules.push_back(std::move(owned));
}

void register_builtins(Registry& r) {
  std::vector<OpRule> rules;
  rules::shape_rules(rules);
  rules::tensor_rules(rules);
  rules::conv_pool_rules(rules);
  rules::norm_rules(rules);
  rules::activation_rules(rules);
  rules::loss_rules(rules);
  rules::transformer_rules(rules);
  rules::peft_rules(rules);
  for (auto& rule : rules) add_rule(r, std::move(rule));
}

Registry& registry() {
  static bool initialised = [] {
    register_builtins(registry_storage());
    return true;
  }();
  (void)initialised;
  return registry_storage();
}

}  // namespace

void register_op(OpRule rule) { add_rule(registry(), std::move(rule)); }

const OpRule* find_op(std::string_view name) {
  auto& r = registry();
  auto it = r.by_name.find(name);
  return it == r.by_name.end() ? nullptr : it->second;
}

const std::vector<const OpRule*>& all_ops() { return registry().list; }

const char* op_family_name(OpFamily f) {
  switch (f) {
    case OpFamily::shape: return "shape";
    case OpFamily::conv_pool: return "conv_pool";
    case OpFamily::norm: return "norm";
    case OpFamily::activation: return "activation";
    case OpFamily::loss: return "loss";
    case OpFamily::transformer: return "transformer";
  }
  return "?";
}

const char* workspace_name(Workspace w) {
  switch (w) {
    case Workspace::cublas: return "cublas";
    case Workspace::cublaslt: return "cublaslt";
    case Workspace::cudnn_conv: return "cudnn_conv";
  }
  return "?";
}

namespace {
const char* value_type_name(Value::Type t) {
  switch (t) {
    case Value::Type::integer: return "integer";
    case Value::Type::pair: return "pair";
    case Value::Type::boolean: return "boolean";
    case Value::Type::real: return "real";
    case Value::Type::text: return "text";
  }
  return "?";
}
const char* autocast_name(Autocast a) {
  switch (a) {
    case Autocast::keep: return "keep";
    case Autocast::lower: return "lower";
    case Autocast::fp32: return "fp32";
    case Autocast::promote: return "promote";
    case Autocast::fp32_set_opt_dtype: return "fp32_set_opt_dtype";
  }
  return "?";
}
}  // namespace

// Only what is static about a rule: its memory behaviour depends on shapes and settings, so it is
// documented by `summary` and `source`, and computed by the estimate.
std::string ops_json() {
  nlohmann::ordered_json ops = nlohmann::ordered_json::array();
  for (const OpRule* r : all_ops()) {
    nlohmann::ordered_json attrs = nlohmann::ordered_json::array();
    for (const auto& a : r->attrs)
      attrs.push_back({{"key", a.key},
                       {"type", value_type_name(a.type)},
                       {"default", a.default_text ? nlohmann::ordered_json(a.default_text) : nlohmann::ordered_json(nullptr)}});
    nlohmann::ordered_json j;
    j["kind"] = r->kind;
    j["aliases"] = r->aliases;
    j["family"] = op_family_name(r->family);
    j["pytorch"] = r->pytorch;
    j["summary"] = r->summary;
    j["attrs"] = std::move(attrs);
    j["positional"] = r->positional;
    j["min_inputs"] = r->min_inputs;
    j["max_inputs"] = r->max_inputs;
    j["autocast"] = autocast_name(r->autocast);
    j["is_loss"] = r->is_loss;
    j["source"] = r->source;
    ops.push_back(std::move(j));
  }
  nlohmann::ordered_json out;
  out["format"] = "memfit-ops/1";
  out["ops"] = std::move(ops);
  return out.dump(2) + "\n";
}

// The docs' layer table (docs/model-format.md between the ops-table markers), from the registry.
std::string ops_markdown_table() {
  std::string o = "| kind (aliases) | family | by position | options and defaults | inputs | PyTorch | memory |\n"
                  "|---|---|---|---|---|---|---|\n";
  auto code = [](const std::string& t) { return "`" + t + "`"; };
  for (const OpRule* r : all_ops()) {
    std::string kind = code(r->kind);
    if (!r->aliases.empty()) {
      kind += " (";
      for (std::size_t i = 0; i < r->aliases.size(); ++i) kind += (i ? ", " : "") + code(r->aliases[i]);
      kind += ")";
    }
    std::string pos;
    for (std::size_t i = 0; i < r->positional.size(); ++i) pos += (i ? ", " : "") + std::string(r->positional[i]);
    std::string opts;
    for (std::size_t i = 0; i < r->attrs.size(); ++i) {
      const AttrSpec& a = r->attrs[i];
      opts += (i ? ", " : "") + (a.default_text ? code(std::string(a.key) + "=" + a.default_text)
                                                : std::string(a.key) + " *required*");
    }
    std::string inputs = r->max_inputs < 0 ? std::to_string(r->min_inputs) + " or more"
                         : r->min_inputs == r->max_inputs ? std::to_string(r->min_inputs)
                                                          : std::to_string(r->min_inputs) + "-" + std::to_string(r->max_inputs);
    o += "| " + kind + " | " + op_family_name(r->family) + " | " + (pos.empty() ? "—" : pos) + " | " +
         (opts.empty() ? "—" : opts) + " | " + inputs + " | " + code(r->pytorch) + " | " + r->summary + " |\n";
  }
  return o;
}

std::string known_kinds() {
  std::string kinds;
  for (const OpRule* r : all_ops()) kinds += (kinds.empty() ? "" : ", ") + std::string(r->kind);
  return kinds;
}


}  // namespace memfit

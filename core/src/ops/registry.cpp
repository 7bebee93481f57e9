// The op registry and the attribute readers rules use. The rules themselves live by family in
// this folder (conv_pool, norm, activation, shape, loss). Every layer kind memfit knows, one rule each. Shapes follow PyTorch's formulas exactly; the memory
// behaviour follows tools/autograd/derivatives.yaml (what is saved) and the ATen kernels (what is
// allocated). Citations are to pytorch/pytorch; docs/pytorch-behaviour.md collects the evidence, and
// tests/reference/ holds what torch really saved on the CPU.
#include "memfit/ops.hpp"
#include "rules.hpp"

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
  for (const auto& n : names) r.by_name.emplace(n, owned.get());
  r.list.push_back(owned.get());
  r.rules.push_back(std::move(owned));
}

void register_builtins(Registry& r) {
  std::vector<OpRule> rules;
  rules::shape_rules(rules);
  rules::conv_pool_rules(rules);
  rules::norm_rules(rules);
  rules::activation_rules(rules);
  rules::loss_rules(rules);
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

std::string known_kinds() {
  std::string kinds;
  for (const OpRule* r : all_ops()) kinds += (kinds.empty() ? "" : ", ") + std::string(r->kind);
  return kinds;
}


}  // namespace memfit

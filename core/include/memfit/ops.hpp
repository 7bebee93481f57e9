// The op registry: the only place that knows a layer kind. Each rule is a pure function of shapes:
// its attributes, output shape and parameters, and what its forward and backward do to memory
// (what autograd saves, what is allocated). Adding a layer kind = one rule in ops.cpp + one test.
// Registering a kind or alias twice is an error (as in torch/utils/flop_counter.py's registry).
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "memfit/common.hpp"
#include "memfit/model.hpp"

namespace memfit {

struct TensorType {
  std::vector<i64> shape;  // batch first, PyTorch order (N, C, H, W)
  DType dtype = DType::f32;
  i64 numel() const;  // checked
  i64 bytes() const;  // checked
};

struct ParamSpec {
  std::string name;  // PyTorch's attribute name: weight, bias, running_mean, ...
  std::vector<i64> shape;
  DType dtype = DType::f32;
  bool trainable = true;  // false: a buffer (no gradient, no optimizer state)
  i64 numel() const;
};

// How torch.autocast treats the op (aten/src/ATen/autocast_mode.cpp lists).
enum class Autocast : std::uint8_t {
  keep,     // not in any list: runs in its input dtype (max_pool2d, relu, batch_norm, dropout)
  lower,    // cast floating inputs and weights to the autocast dtype (conv2d, linear)
  fp32,     // cast inputs to float32 (softmax, log_softmax, cross_entropy)
  promote,  // cast inputs to the widest input dtype (add, cat)
};

struct TensorRef {
  enum Kind : std::uint8_t { input, output, extra, param, target } kind = input;
  int index = 0;
};

struct SavedSpec {
  TensorRef ref;
  const char* role;  // derivatives.yaml name: "self", "result", "indices", "mask", ...
};

struct ExtraSpec {
  const char* name;  // e.g. "indices": allocated with the output, kept only if saved
  TensorType type;
};

struct OpMemory {
  // fresh: a new storage; in_place: writes into input 0 (relu_); view: shares input 0 (flatten).
  enum class Output : std::uint8_t { fresh, in_place, view } output = Output::fresh;
  std::vector<ExtraSpec> extras;
  std::vector<TensorType> fwd_temps;
  std::vector<SavedSpec> saved;  // only recorded when the output requires grad
  // Per input: fresh = backward allocates a gradient of the input's size; pass = hands the incoming
  // gradient on unchanged (add); view = hands on a view of it (flatten, cat's narrow).
  enum class GradIn : std::uint8_t { fresh, pass, view };
  std::vector<GradIn> grad_in;
  std::vector<TensorType> bwd_temps;  // live while the node's backward runs
};

struct OpShape {
  TensorType out;
  std::vector<ParamSpec> params;       // trainable ones and buffers, in registration order
  std::map<std::string, Value> attrs;  // attributes resolved (e.g. padding "same" -> (1, 1))
};

struct OpCall {
  const Layer& layer;
  std::vector<TensorType> in;  // after autocast casts
  std::vector<bool> in_requires_grad;
  i64 batch;
  TorchRules rules = TorchRules::v2;
};

struct AttrSpec {
  const char* key;
  Value::Type type;
  const char* default_text;  // nullptr: required
};

struct OpRule {
  const char* kind;
  std::vector<const char*> aliases;
  std::vector<AttrSpec> attrs;
  std::vector<const char*> positional;  // attribute keys that may be given by position, in order
  int min_inputs = 1, max_inputs = 1;   // max -1: any number
  Autocast autocast = Autocast::keep;
  bool is_loss = false;
  const char* source;  // citation for the memory behaviour
  OpShape (*shape)(const OpCall&);
  OpMemory (*memory)(const OpCall&, const OpShape&);
};

void register_op(OpRule rule);  // throws std::logic_error on a duplicate kind or alias
const OpRule* find_op(std::string_view kind_or_alias);  // nullptr if unknown
const std::vector<const OpRule*>& all_ops();
std::string known_kinds();  // "input, conv2d, ..." for error messages

// Attribute readers for rules; errors name the layer's file, line and column.
i64 attr_int(const Layer& l, const char* key);
std::pair<i64, i64> attr_pair(const Layer& l, const char* key);
bool attr_bool(const Layer& l, const char* key);
double attr_real(const Layer& l, const char* key);
const Value& attr(const Layer& l, const char* key);
[[noreturn]] void fail(const Layer& l, const std::string& problem, const std::string& fix);

}  // namespace memfit

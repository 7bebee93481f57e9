// The model with every tensor's shape and dtype inferred for one batch size and precision, each
// node's memory behaviour fetched from its op rule and resolved against what requires grad, and the
// regions (the block/repeat nesting) over the flat list. Built once per estimate; read-only after.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "memfit/model.hpp"
#include "memfit/ops.hpp"

namespace memfit {

// What the graph depends on besides the model. freeze / train are globs over layer and region
// names (`*` any characters, `?` one; a region name stands for everything inside it; `layer.param`
// names one parameter): frozen parameters get requires_grad=False, as `p.requires_grad_(False)`.
struct GraphSettings {
  i64 batch = 64;
  DType compute = DType::f32;  // f32, or the autocast dtype (f16 / bf16)
  TorchRules rules = TorchRules::v2;
  std::vector<std::string> freeze;  // these parameters are frozen
  std::vector<std::string> train;   // only these parameters train (the rest are frozen)
  // model.to(param_dtype): float32 parameters and buffers, and a float32 input batch, take this dtype
  // (f32: unchanged). Layers listed in layer_param_dtype keep theirs at that dtype instead (LoRA
  // adapters stay float32 in a bfloat16 model).
  DType param_dtype = DType::f32;
  std::map<std::string, DType, std::less<>> layer_param_dtype;
  // Layers whose output requires grad even when nothing before them trains: transformers'
  // enable_input_require_grads() (modeling_utils.py: a forward hook `output.requires_grad_(True)` on
  // get_input_embeddings()), which PEFT calls so that reentrant checkpoints of a frozen model get gradients.
  std::vector<std::string> output_requires_grad;
};

struct Node {
  const Layer* layer = nullptr;
  const OpRule* rule = nullptr;
  std::vector<int> in;               // producer node indices
  std::vector<int> in_out;           // which output of each producer (0 unless `from=layer:K`)
  std::vector<TensorType> in_types;  // as the op consumes them (after autocast casts)
  OpShape shape;                     // output type, parameters (trainable flags resolved), attributes
  OpMemory mem;                      // what forward/backward allocate, as the rule says
  std::vector<SavedSpec> saved;      // mem.saved whose condition holds (empty if !requires_grad)
  // Per parameter: autocast runs the op on a low-precision copy (a lower-list op under autocast,
  // floating parameter); cached: the copy lives in autocast's weight cache until autocast exits,
  // which it does only for leaves that require grad (autocast_mode.cpp cached_cast), else it is
  // made per call.
  std::vector<bool> param_cast, param_cached;
  bool requires_grad = false;  // does the output require grad (so autograd records the op)
  // Per input: the `view` gradient the rule hands on cannot be a view of the incoming gradient
  // (its layout allows none: graph.cpp gradient-layout pass), so backward allocates it.
  std::vector<bool> grad_copies;
  // A `parameter` node (OpMemory::Output::parameter): the gradient it receives is a view whose strides
  // break AccumulateGrad's layout contract (a narrow() of cat's gradient along a dim after one of size
  // > 1), so .grad is a clone rather than the stolen tensor (graph.cpp gradient-layout pass).
  bool param_grad_strided = false;
  int n_consumers = 0;             // over all outputs
  std::vector<int> out_consumers;  // per output
  int first_value = 0;             // the value id of output 0; output k is first_value + k
  int n_outputs() const { return 1 + static_cast<int>(shape.extra_outs.size()); }
  const TensorType& out_type(int k) const { return k == 0 ? shape.out : shape.extra_outs[static_cast<std::size_t>(k) - 1]; }
  int region = -1;  // innermost region holding this layer; -1 at the top level
};

// A block or repeat instance, known by the dotted prefix its layers share ("layer1", "layer1.0").
struct Region {
  std::string name;
  int parent = -1;
  int depth = 0;
  int first_node = 0, last_node = 0;  // in graph order
  int n_nodes = 0;
};

struct Graph {
  std::string model_name;
  i64 batch = 0;
  DType compute = DType::f32;
  std::vector<Node> nodes;     // nodes[0] is the input; the last node is the loss
  std::vector<Region> regions;  // parents before children
  bool loss_appended = false;  // the model did not end in a loss: nn.CrossEntropyLoss was added
  TensorType target;           // int64 [N] class indices
  std::unique_ptr<Layer> appended_loss;
  // The model the nodes point into when the pipeline built it (LoRA / QLoRA insert layers into a
  // copy of the user's model: core/src/pipeline/finetune.cpp); null when nodes point into the caller's.
  std::shared_ptr<const Model> owned_model;
  int model_output = -1;      // node whose output the training loop holds as `out`
  int model_output_out = 0;   // which of its outputs
  int n_values = 0;           // outputs over all nodes (the planner's value ids)
  i64 n_frozen_params = 0;  // parameter elements with requires_grad=False
};

// Throws Error naming the layer for any shape problem.
Graph build_graph(const Model& model, const GraphSettings& settings);

// `*` and `?` glob over names (exposed for tests).
bool glob_match(std::string_view pattern, std::string_view name);

}  // namespace memfit

// The model with every tensor's shape and dtype inferred for one batch size and precision, and each
// node's memory behaviour fetched from its op rule. Built once per estimate; read-only afterwards.
#pragma once

#include <memory>
#include <vector>

#include "memfit/model.hpp"
#include "memfit/ops.hpp"

namespace memfit {

struct Node {
  const Layer* layer = nullptr;
  const OpRule* rule = nullptr;
  std::vector<int> in;          // producer node indices
  std::vector<TensorType> in_types;  // as the op consumes them (after autocast casts)
  OpShape shape;                // output type, parameters, resolved attributes
  OpMemory mem;                 // what forward/backward allocate and save
  std::vector<bool> param_cast;  // per param: autocast makes a low-precision copy (lower-list ops)
  bool requires_grad = false;   // does the output require grad (so autograd records the op)
  int n_consumers = 0;
};

struct Graph {
  std::string model_name;
  i64 batch = 0;
  DType compute = DType::f32;  // f32, or the autocast dtype (f16 / bf16)
  std::vector<Node> nodes;     // nodes[0] is the input; the last node is the loss
  bool loss_appended = false;  // the model did not end in a loss: nn.CrossEntropyLoss was added
  TensorType target;           // int64 [N] class indices
  std::unique_ptr<Layer> appended_loss;
  int model_output = -1;       // node whose output the training loop holds as `out`
};

// Throws Error naming the layer for any shape problem.
Graph build_graph(const Model& model, i64 batch, DType compute, TorchRules rules = TorchRules::v2);

}  // namespace memfit

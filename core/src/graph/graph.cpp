#include "memfit/graph.hpp"

#include <map>

namespace memfit {

namespace {

bool is_float(DType t) { return t == DType::f32 || t == DType::f16 || t == DType::bf16; }

// The dtype autocast makes an op consume (aten/src/ATen/autocast_mode.h lists, see ops.hpp Autocast).
DType autocast_dtype(Autocast policy, DType compute, DType in, DType widest) {
  if (compute == DType::f32 || !is_float(in)) return in;
  switch (policy) {
    case Autocast::lower: return compute;
    case Autocast::fp32: return DType::f32;
    case Autocast::promote: return widest;
    case Autocast::keep: return in;
  }
  return in;
}

}  // namespace

Graph build_graph(const Model& model, i64 batch, DType compute, TorchRules rules) {
  if (model.layers.empty()) throw Error({model.file, 0, 0}, "", "the model has no layers", "add an input layer");
  if (batch < 1) throw Error({}, "", "batch size must be at least 1", "give --batch N with N >= 1");
  Graph g;
  g.model_name = model.name;
  g.batch = batch;
  g.compute = compute;
  g.target = {{batch}, DType::i64};
  std::map<std::string, int, std::less<>> by_name;
  auto add_node = [&](const Layer& layer) {
    const OpRule* rule = find_op(layer.kind);
    if (!rule) throw Error(layer.pos, layer.name, "unknown layer kind '" + layer.kind + "'", "see docs/model-format.md");
    Node n;
    n.layer = &layer;
    n.rule = rule;
    for (const auto& name : layer.inputs) {
      auto it = by_name.find(name);
      if (it == by_name.end())
        throw Error(layer.pos, layer.name, "no earlier layer is named '" + name + "'", "inputs must be defined above");
      n.in.push_back(it->second);
    }
    DType widest = DType::f16;
    for (int p : n.in) {
      DType t = g.nodes[p].shape.out.dtype;
      if (t == DType::f32 || (t == DType::bf16 && widest == DType::f16)) widest = t;
    }
    bool any_rg = false;
    for (int p : n.in) {
      TensorType t = g.nodes[p].shape.out;
      t.dtype = autocast_dtype(rule->autocast, compute, t.dtype, widest);
      n.in_types.push_back(std::move(t));
      any_rg = any_rg || g.nodes[p].requires_grad;
      g.nodes[p].n_consumers++;
    }
    std::vector<bool> in_rg;
    for (int p : n.in) in_rg.push_back(g.nodes[p].requires_grad);
    OpCall call{layer, n.in_types, in_rg, batch, rules};
    n.shape = rule->shape(call);
    n.shape.out.numel();  // checks the element count fits 64 bits
    n.shape.out.bytes();
    bool has_trainable = false;
    for (const auto& p : n.shape.params) {
      has_trainable = has_trainable || p.trainable;
      checked_mul(p.numel(), dtype_size(p.dtype), "parameter bytes");
      n.param_cast.push_back(p.trainable && rule->autocast == Autocast::lower && compute != DType::f32);
    }
    n.requires_grad = any_rg || has_trainable;
    n.mem = rule->memory(call, n.shape);
    by_name[layer.name] = static_cast<int>(g.nodes.size());
    g.nodes.push_back(std::move(n));
  };
  for (const auto& layer : model.layers) {
    if (!g.nodes.empty() && g.nodes.back().rule->is_loss)
      throw Error(layer.pos, layer.name, "a layer after the loss", "the loss must be the last layer");
    add_node(layer);
  }
  if (g.nodes.size() < 2) throw Error(model.layers[0].pos, model.layers[0].name, "the model has only an input", "add layers");
  if (!g.nodes.back().rule->is_loss) {
    // Training needs a loss: nn.CrossEntropyLoss on the last output (docs/model-format.md).
    const Layer& last = *g.nodes.back().layer;
    g.appended_loss = std::make_unique<Layer>();
    Layer& l = *g.appended_loss;
    l.name = "loss";
    l.kind = "cross_entropy";
    l.inputs = {last.name};
    l.pos = last.pos;
    if (by_name.count("loss")) l.name = "loss (appended)";
    g.loss_appended = true;
    add_node(l);
  }
  // The loop holds the loss's input as `out` until the step ends, whether memfit appended the loss
  // or the model has its own (tools/memfit_torch.py training_step: out = model(x); loss_fn(out, y)).
  g.model_output = g.nodes.back().in.empty() ? -1 : g.nodes.back().in[0];
  return g;
}

}  // namespace memfit

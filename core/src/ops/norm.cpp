// Normalisation layers.
// Citations are to pytorch/pytorch; docs/pytorch-behaviour.md collects the evidence.
#include "rules.hpp"

namespace memfit::rules {

namespace {

// ---- batchnorm2d (training): cudnn_batch_norm / native_batch_norm save input, weight, running
// stats and the per-channel save_mean / save_invstd (float32 [C]); not the output.
OpShape batchnorm_shape(const OpCall& c) {
  need_rank(c, 4, "N,C,H,W", "batchnorm2d normalises image-shaped tensors");
  i64 ch = c.in[0].shape[1];
  OpShape s{c.in[0], {}, c.layer.attrs};
  if (attr_bool(c.layer, "affine")) {
    s.params.push_back({"weight", {ch}});
    s.params.push_back({"bias", {ch}});
  }
  if (attr_bool(c.layer, "track_running_stats")) {
    s.params.push_back({.name = "running_mean", .shape = {ch}, .is_buffer = true, .trainable = false});
    s.params.push_back({.name = "running_var", .shape = {ch}, .is_buffer = true, .trainable = false});
    s.params.push_back({.name = "num_batches_tracked", .shape = {}, .dtype = DType::i64, .is_buffer = true, .trainable = false});
  }
  return s;
}
OpMemory batchnorm_memory(const OpCall& c, const OpShape&) {
  i64 ch = c.in[0].shape[1];
  OpMemory m;
  m.extras = {{"save_mean", {{ch}, DType::f32}}, {"save_invstd", {{ch}, DType::f32}}};
  m.saved = {{.ref = {TensorRef::input, 0}, .role = "input"},
             {.ref = {TensorRef::extra, 0}, .role = "save_mean"},
             {.ref = {TensorRef::extra, 1}, .role = "save_invstd"}};
  m.grad_in = {GradIn::fresh};
  return m;
}

// ---- layer_norm over the last dim (nn.LayerNorm(D)). native_layer_norm saves input, weight, bias
// and its mean and rstd (result1, result2: [*, 1], float32 for float and half inputs: acc type)
// (derivatives.yaml native_layer_norm; measured, tests/reference). Autocast: fp32 list.
OpShape layer_norm_shape(const OpCall& c) {
  const i64 d = attr_int(c.layer, "normalized_shape");
  if (c.in[0].shape.size() < 2 || c.in[0].shape.back() != d)
    fail(c.layer, "normalized_shape=" + std::to_string(d) + " must equal the input's last dim (" +
                      std::to_string(c.in[0].shape.back()) + ")",
         "give normalized_shape=" + std::to_string(c.in[0].shape.back()));
  OpShape s{with_shape(c.in[0], c.in[0].shape), {}, c.layer.attrs};
  if (attr_bool(c.layer, "elementwise_affine")) {
    s.params.push_back({"weight", {d}});
    if (attr_bool(c.layer, "bias")) s.params.push_back({"bias", {d}});
  }
  return s;
}
OpMemory layer_norm_memory(const OpCall& c, const OpShape&) {
  std::vector<i64> stat = c.in[0].shape;
  stat.back() = 1;
  OpMemory m;
  m.extras = {{"mean (result1)", {stat, DType::f32}}, {"rstd (result2)", {stat, DType::f32}}};
  m.saved = {{.ref = {TensorRef::input, 0}, .role = "input"},
             {.ref = {TensorRef::extra, 0}, .role = "result1 (mean)"},
             {.ref = {TensorRef::extra, 1}, .role = "result2 (rstd)"}};
  m.grad_in = {GradIn::fresh};
  return m;
}

}  // namespace

void norm_rules(std::vector<OpRule>& out) {
  out.push_back({.kind = "batchnorm2d",
                 .aliases = {"bn", "batchnorm"},
                 .attrs = {A("eps", VT::real, "1e-05"), A("momentum", VT::real, "0.1"), A("affine", VT::boolean, "true"),
                           A("track_running_stats", VT::boolean, "true")},
                 .family = OpFamily::norm,
                 .pytorch = "nn.BatchNorm2d",
                 .summary = "batch norm in train mode; saves its input and per-channel mean/invstd; running stats are buffers",
                 .source = "tools/autograd/derivatives.yaml",
                 .shape = batchnorm_shape,
                 .memory = batchnorm_memory});
  out.push_back({.kind = "layer_norm",
                 .aliases = {"layernorm"},
                 .attrs = {A("normalized_shape", VT::integer, nullptr), A("eps", VT::real, "1e-05"),
                           A("elementwise_affine", VT::boolean, "true"), A("bias", VT::boolean, "true")},
                 .positional = {"normalized_shape"},
                 .autocast = Autocast::fp32,
                 .family = OpFamily::norm,
                 .pytorch = "nn.LayerNorm(D)",
                 .summary = "layer norm over the last dim; saves its input and float32 mean/rstd per row; float32 under autocast",
                 .source = "tools/autograd/derivatives.yaml native_layer_norm",
                 .shape = layer_norm_shape,
                 .memory = layer_norm_memory});
}

}  // namespace memfit::rules

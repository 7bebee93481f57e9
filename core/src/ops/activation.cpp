// Element-wise activations, dropout and softmax.
// Citations are to pytorch/pytorch; docs/pytorch-behaviour.md collects the evidence.
#include "rules.hpp"

namespace memfit::rules {

namespace {

// ---- elementwise activations
// Saves `result` (relu/threshold, sigmoid, tanh; and in-place variants whose formula uses result).
OpMemory save_result_memory(const OpCall& c, const OpShape&) {
  OpMemory m;
  if (inplace_of(c.layer)) m.output = OpMemory::Output::in_place;
  m.saved = {{{TensorRef::output, 0}, "result"}};
  m.grad_in = {GradIn::fresh};
  return m;
}
// relu6 = hardtanh(0, 6) and silu save `self`. In place (hardtanh_, silu_) autograd still saves the
// original self: codegen clones the input before the write (measured with torch 1.13:
// tests/reference/cpu_saved_models.json mobilenet_v2, HardtanhBackward0 holds a storage that is not
// the output's; cpu_saved_fixtures.json tiny_residual for silu_).
OpMemory clone_self_when_inplace_memory(const OpCall& c, const OpShape&) {
  OpMemory m;
  if (inplace_of(c.layer) && !c.in_requires_grad[0]) {
    m.output = OpMemory::Output::in_place;  // not recorded by autograd: no copy is taken
  } else if (inplace_of(c.layer)) {
    m.output = OpMemory::Output::in_place;
    m.extras = {{"self (copy before the in-place write)", c.in[0]}};
    m.saved = {{{TensorRef::extra, 0}, "self"}};
  } else {
    m.saved = {{{TensorRef::input, 0}, "self"}};
  }
  m.grad_in = {GradIn::fresh};
  return m;
}

// leaky_relu saves `self` out of place and `result` in place (derivatives.yaml leaky_relu /
// leaky_relu_; LeakyReluBackward1 in torch 1.13 holds the output's storage).
OpMemory self_or_result_memory(const OpCall& c, const OpShape&) {
  OpMemory m;
  if (inplace_of(c.layer)) {
    m.output = OpMemory::Output::in_place;
    m.saved = {{{TensorRef::output, 0}, "result"}};
  } else {
    m.saved = {{{TensorRef::input, 0}, "self"}};
  }
  m.grad_in = {GradIn::fresh};
  return m;
}

// ---- dropout: on CUDA, native_dropout returns (output, mask) with a bool mask that is saved. The
// in-place form multiplies by a float noise tensor of the input's dtype that MulBackward saves
// (aten/src/ATen/native/Dropout.cpp _dropout_impl).
// F.dropout: "dropout probability has to be between 0 and 1, but got {p}" (torch/nn/functional.py).
OpShape dropout_shape(const OpCall& c) {
  double p = attr_real(c.layer, "p");
  if (!(p >= 0.0 && p <= 1.0))
    fail(c.layer, "dropout probability p=" + attr(c.layer, "p").text + " is not between 0 and 1 (PyTorch refuses it)",
         "give p from 0 to 1, e.g. dropout 0.5");
  return same_shape(c);
}
OpMemory dropout_memory(const OpCall& c, const OpShape&) {
  OpMemory m;
  // p=0 (Llama's attention_dropout, HF configs' *_pdrop=0): the input itself, nothing recorded
  // (Dropout.cpp: native_dropout only for 0 < p < 1 (is_fused_kernel_acceptable); _dropout_impl
  // returns the input when p == 0).
  if (attr_real(c.layer, "p") == 0.0) {
    m.output = OpMemory::Output::view;
    m.grad_in = {GradIn::pass};
    return m;
  }
  if (inplace_of(c.layer)) {
    m.output = OpMemory::Output::in_place;
    m.extras = {{"noise", c.in[0]}};
    m.saved = {{{TensorRef::extra, 0}, "other (noise)"}};
  } else {
    m.extras = {{"mask", {c.in[0].shape, DType::b8}}};
    m.saved = {{{TensorRef::extra, 0}, "mask"}};
  }
  m.grad_in = {GradIn::fresh};
  return m;
}

// ---- gelu: approximate none (erf) or tanh; both save self.
OpShape gelu_shape(const OpCall& c) {
  const std::string& a = attr(c.layer, "approximate").text;
  if (a != "none" && a != "tanh")
    fail(c.layer, "approximate must be none or tanh, not '" + a + "'", "write approximate=tanh (nn.GELU(approximate='tanh'))");
  return same_shape(c);
}

// ---- stochastic_depth: torchvision.ops.stochastic_depth in training: a noise tensor of shape
// [N, 1, ...] ("row") or [1, ...] ("batch"), bernoulli_ then div_ in place, and `input * noise`,
// which saves only the noise (the input's gradient needs it; the noise needs none). p=0 returns
// the input itself (torchvision/ops/stochastic_depth.py).
OpShape stochastic_depth_shape(const OpCall& c) {
  double p = attr_real(c.layer, "p");
  if (!(p >= 0.0 && p <= 1.0))
    fail(c.layer, "drop probability p=" + attr(c.layer, "p").text + " is not between 0 and 1 (torchvision refuses it)",
         "give p from 0 to 1, e.g. stochastic_depth 0.2");
  const std::string& mode = attr(c.layer, "mode").text;
  if (mode != "row" && mode != "batch") fail(c.layer, "mode must be row or batch, not '" + mode + "'", "write mode=row");
  if (p == 0.0) return same_shape(c);
  return {with_shape(c.in[0], c.in[0].shape), {}, c.layer.attrs};
}
OpMemory stochastic_depth_memory(const OpCall& c, const OpShape&) {
  OpMemory m;
  if (attr_real(c.layer, "p") == 0.0) {
    m.output = OpMemory::Output::view;
    m.grad_in = {GradIn::pass};
    return m;
  }
  std::vector<i64> noise(c.in[0].shape.size(), 1);
  if (attr(c.layer, "mode").text == "row") noise[0] = c.in[0].shape[0];
  m.extras = {{"noise", with_shape(c.in[0], noise)}};
  m.saved = {{{TensorRef::extra, 0}, "other (noise)"}};
  m.grad_in = {GradIn::fresh};
  return m;
}

// ---- softmax / log_softmax: save result. Under autocast (AT_FORALL_FP32_SET_OPT_DTYPE) and with
// dtype=float32 as written (F.softmax(x, -1, dtype=torch.float32): LlamaAttention) the result is
// float32; the graph applies SoftMax.cpp's conversion (see Autocast::fp32_set_opt_dtype).
OpShape softmax_shape(const OpCall& c) {
  i64 dim = attr_int(c.layer, "dim");
  i64 rank = static_cast<i64>(c.in[0].shape.size());
  if (dim < -rank || dim >= rank)
    fail(c.layer, "dim=" + std::to_string(dim) + " is out of range for a " + std::to_string(rank) + "-d input",
         "use dim=1 for class scores");
  TensorType out = c.in[0];
  out.dtype = softmax_result_dtype(c);
  return {out, {}, c.layer.attrs};
}


}  // namespace

void activation_rules(std::vector<OpRule>& out) {
  const char* derivs = "tools/autograd/derivatives.yaml";
  out.push_back({.kind = "relu",
                 .attrs = {A("inplace", VT::boolean, "false")},
                 .family = OpFamily::activation,
                 .pytorch = "nn.ReLU",
                 .summary = "saves its result (in place too)",
                 .source = derivs,
                 .shape = same_shape,
                 .memory = save_result_memory});
  out.push_back({.kind = "relu6",
                 .attrs = {A("inplace", VT::boolean, "false")},
                 .family = OpFamily::activation,
                 .pytorch = "nn.ReLU6",
                 .summary = "hardtanh(0, 6); saves its input (in place: a copy of it)",
                 .source = derivs,
                 .shape = same_shape,
                 .memory = clone_self_when_inplace_memory});
  out.push_back({.kind = "leaky_relu",
                 .aliases = {"leakyrelu"},
                 .attrs = {A("negative_slope", VT::real, "0.01"), A("inplace", VT::boolean, "false")},
                 .positional = {"negative_slope"},
                 .family = OpFamily::activation,
                 .pytorch = "nn.LeakyReLU",
                 .summary = "saves its input (in place: its result)",
                 .source = derivs,
                 .shape = same_shape,
                 .memory = self_or_result_memory});
  out.push_back({.kind = "sigmoid",
                 .family = OpFamily::activation,
                 .pytorch = "nn.Sigmoid",
                 .summary = "saves its result",
                 .source = derivs,
                 .shape = same_shape,
                 .memory = save_result_memory});
  out.push_back({.kind = "tanh",
                 .family = OpFamily::activation,
                 .pytorch = "nn.Tanh",
                 .summary = "saves its result",
                 .source = derivs,
                 .shape = same_shape,
                 .memory = save_result_memory});
  out.push_back({.kind = "gelu",
                 .attrs = {A("approximate", VT::text, "none")},
                 .family = OpFamily::activation,
                 .pytorch = "nn.GELU",
                 .summary = "saves its input",
                 .source = derivs,
                 .shape = gelu_shape,
                 .memory = save_self_memory});
  out.push_back({.kind = "silu",
                 .aliases = {"swish"},
                 .attrs = {A("inplace", VT::boolean, "false")},
                 .family = OpFamily::activation,
                 .pytorch = "nn.SiLU",
                 .summary = "saves its input (in place: a copy of it)",
                 .source = derivs,
                 .shape = same_shape,
                 .memory = clone_self_when_inplace_memory});
  out.push_back({.kind = "hardswish",
                 .attrs = {A("inplace", VT::boolean, "false")},
                 .family = OpFamily::activation,
                 .pytorch = "nn.Hardswish",
                 .summary = "saves its input (in place: a copy of it)",
                 .source = derivs,
                 .shape = same_shape,
                 .memory = clone_self_when_inplace_memory});
  out.push_back({.kind = "hardsigmoid",
                 .attrs = {A("inplace", VT::boolean, "false")},
                 .family = OpFamily::activation,
                 .pytorch = "nn.Hardsigmoid",
                 .summary = "saves its input (in place: a copy of it)",
                 .source = derivs,
                 .shape = same_shape,
                 .memory = clone_self_when_inplace_memory});
  out.push_back({.kind = "stochastic_depth",
                 .attrs = {A("p", VT::real, nullptr), A("mode", VT::text, "row")},
                 .positional = {"p"},
                 .family = OpFamily::activation,
                 .pytorch = "torchvision.ops.StochasticDepth",
                 .summary = "train mode; saves a noise tensor [N, 1, ...] (row) or [1, ...] (batch)",
                 .source = "torchvision/ops/stochastic_depth.py; derivatives.yaml mul.Tensor",
                 .shape = stochastic_depth_shape,
                 .memory = stochastic_depth_memory});
  out.push_back({.kind = "dropout",
                 .attrs = {A("p", VT::real, "0.5"), A("inplace", VT::boolean, "false")},
                 .positional = {"p"},
                 .family = OpFamily::activation,
                 .pytorch = "nn.Dropout",
                 .summary = "train mode; saves a bool mask (in place: a float noise tensor)",
                 .source = "aten/src/ATen/native/Dropout.cpp",
                 .shape = dropout_shape,
                 .memory = dropout_memory});
  out.push_back({.kind = "softmax",
                 .attrs = {A("dim", VT::integer, "1"), A("dtype", VT::text, "")},
                 .positional = {"dim"},
                 .autocast = Autocast::fp32_set_opt_dtype,
                 .family = OpFamily::activation,
                 .pytorch = "nn.Softmax",
                 .summary = "saves its result; float32 under autocast or with dtype=float32 (a bfloat16 input is "
                            "converted first; float16 is read as is)",
                 .source = "tools/autograd/derivatives.yaml _softmax; aten/src/ATen/native/SoftMax.cpp softmax(input, dim, dtype)",
                 .shape = softmax_shape,
                 .memory = save_result_memory,
                 .before_loss_note = "nn.CrossEntropyLoss applies log_softmax itself, so softmax before it trains on "
                                     "softmax applied twice (a common bug; gradients shrink). Modelled as written"});
  out.push_back({.kind = "log_softmax",
                 .aliases = {"logsoftmax"},
                 .attrs = {A("dim", VT::integer, "1"), A("dtype", VT::text, "")},
                 .positional = {"dim"},
                 .autocast = Autocast::fp32_set_opt_dtype,
                 .family = OpFamily::activation,
                 .pytorch = "nn.LogSoftmax",
                 .summary = "saves its result; float32 under autocast",
                 .source = derivs,
                 .shape = softmax_shape,
                 .memory = save_result_memory});
}

}  // namespace memfit::rules

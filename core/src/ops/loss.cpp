// Losses: the last node of the training step.
// Citations are to pytorch/pytorch; docs/pytorch-behaviour.md collects the evidence.
#include "rules.hpp"

namespace memfit::rules {

namespace {

// ---- cross_entropy = log_softmax + nll_loss (LossNLL.cpp cross_entropy_loss_symint:
// `nll_loss_nd(at::log_softmax(self, class_dim, self.scalar_type()), target, ...)`). Saved:
// log_softmax's result, nll_loss's self (the same tensor), target (int64 [N], held by the loop anyway)
// and total_weight (a 0-d tensor of self's dtype). Backward: nll_loss_backward allocates a [N,C]
// gradient, _log_softmax_backward_data another.
// Under CUDA autocast cross_entropy_loss has no entry of its own (KERNEL_CPU/XLA/XPU list it as fp32,
// CUDA does not), so the composite runs: its log_softmax passes the logits' own dtype explicitly, which
// set_opt_dtype keeps (a half result, saved by LogSoftmaxBackward), and nll_loss is in AT_FORALL_FP32:
// it casts those log-probabilities to a float32 copy and saves that copy. Backward: nll_loss_backward's
// float32 gradient, ToCopyBackward's half one, then the half input gradient.
OpShape cross_entropy_shape(const OpCall& c) {
  need_rank(c, 2, "N,classes", "cross_entropy takes class scores [N, classes]; add flatten/linear before it");
  if (c.in[0].shape[1] < 1) fail(c.layer, "needs at least one class", "check the layer before it");
  return {TensorType{{}, cross_entropy_loss_dtype(c)}, {}, c.layer.attrs};
}
OpMemory cross_entropy_memory(const OpCall& c, const OpShape&) { return cross_entropy_rows_memory(c, c.in[0].shape); }

}  // namespace

DType cross_entropy_loss_dtype(const OpCall& c) { return autocast_half_input(c) ? DType::f32 : c.in[0].dtype; }

OpMemory cross_entropy_rows_memory(const OpCall& c, const std::vector<i64>& rows) {
  OpMemory m;
  const TensorType logp{rows, c.in[0].dtype};
  m.grad_in = {GradIn::fresh};
  if (!autocast_half_input(c)) {
    m.extras = {{"log_softmax result", logp}, {"total_weight", {{}, logp.dtype}}};
    m.saved = {{{TensorRef::extra, 0}, "result / self"}, {{TensorRef::target, 0}, "target"},
               {{TensorRef::extra, 1}, "total_weight"}};
    m.bwd_temps = {logp};  // nll_loss_backward's grad, consumed by _log_softmax_backward_data
    return m;
  }
  const TensorType wide{rows, DType::f32};
  m.extras = {{"log_softmax result", logp}, {"log-probabilities as float32 (nll_loss, autocast fp32 list)", wide},
              {"total_weight", {{}, DType::f32}}};
  m.saved = {{{TensorRef::extra, 0}, "result (log_softmax)"}, {{TensorRef::extra, 1}, "self (nll_loss)"},
             {{TensorRef::target, 0}, "target"}, {{TensorRef::extra, 2}, "total_weight"}};
  m.bwd_temps = {wide, logp};  // nll_loss_backward's float32 grad, then ToCopyBackward's
  return m;
}

void loss_rules(std::vector<OpRule>& out) {
  out.push_back({.kind = "cross_entropy",
                 .aliases = {"crossentropy", "cross_entropy_loss"},
                 // no CUDA autocast entry: the composite's casts are the rule's own (cross_entropy_rows_memory)
                 .autocast = Autocast::keep,
                 .is_loss = true,
                 .family = OpFamily::loss,
                 .pytorch = "nn.CrossEntropyLoss",
                 .summary = "log_softmax + nll_loss; saves the log-probabilities and the targets",
                 .source = "aten/src/ATen/native/LossNLL.cpp cross_entropy_loss_symint; derivatives.yaml; autocast_mode.h",
                 .shape = cross_entropy_shape,
                 .memory = cross_entropy_memory});
}

}  // namespace memfit::rules

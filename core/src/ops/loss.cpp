// Losses: the last node of the training step.
// Citations are to pytorch/pytorch; docs/pytorch-behaviour.md collects the evidence.
#include "rules.hpp"

namespace memfit::rules {

namespace {

// ---- cross_entropy = log_softmax + nll_loss. Saved: log_softmax's result, nll_loss's self (the
// same tensor), target (int64 [N], held by the loop anyway) and total_weight (a float32 scalar).
// Backward: nll_loss_backward allocates a [N,C] gradient, _log_softmax_backward_data another.
OpShape cross_entropy_shape(const OpCall& c) {
  need_rank(c, 2, "N,classes", "cross_entropy takes class scores [N, classes]; add flatten/linear before it");
  if (c.in[0].shape[1] < 1) fail(c.layer, "needs at least one class", "check the layer before it");
  return {TensorType{{}, softmax_result_dtype(c)}, {}, c.layer.attrs};
}
OpMemory cross_entropy_memory(const OpCall& c, const OpShape&) {
  OpMemory m;
  const TensorType logp{c.in[0].shape, softmax_result_dtype(c)};
  m.extras = {{"log_softmax result", logp}, {"total_weight", {{}, logp.dtype}}};
  m.saved = {{{TensorRef::extra, 0}, "result / self"}, {{TensorRef::target, 0}, "target"},
             {{TensorRef::extra, 1}, "total_weight"}};
  m.grad_in = {GradIn::fresh};
  m.bwd_temps = {logp};  // nll_loss_backward's grad, consumed by _log_softmax_backward_data
  return m;
}


}  // namespace

void loss_rules(std::vector<OpRule>& out) {
  out.push_back({.kind = "cross_entropy",
                 .aliases = {"crossentropy", "cross_entropy_loss"},
                 // cross_entropy_loss is in no autocast list (CompositeImplicitAutograd): its log_softmax is
                 // fp32_set_opt_dtype and nll_loss then runs on the float32 log-probabilities
                 .autocast = Autocast::fp32_set_opt_dtype,
                 .is_loss = true,
                 .family = OpFamily::loss,
                 .pytorch = "nn.CrossEntropyLoss",
                 .summary = "log_softmax + nll_loss; saves the log-probabilities and the targets",
                 .source = "tools/autograd/derivatives.yaml",
                 .shape = cross_entropy_shape,
                 .memory = cross_entropy_memory});
}

}  // namespace memfit::rules

// The input, views and element-wise combination of several inputs (add, concat).
// Citations are to pytorch/pytorch; docs/pytorch-behaviour.md collects the evidence.
#include "rules.hpp"

namespace memfit::rules {

namespace {

// ---- input: handled by the planner (the batch tensor); the rule gives its shape.
OpShape input_shape(const OpCall& c) {
  const Value& v = attr(c.layer, "shape");
  std::vector<i64> shape{c.batch};
  // The parser stores the per-sample shape in PyTorch order (C,H,W) as text "3x50x50".
  std::string t = v.text;
  std::size_t start = 0;
  while (start <= t.size()) {
    std::size_t x = t.find('x', start);
    std::string part = t.substr(start, x == std::string::npos ? std::string::npos : x - start);
    shape.push_back(std::stoll(part));
    if (x == std::string::npos) break;
    start = x + 1;
  }
  return {TensorType{shape, DType::f32}, {}, c.layer.attrs};
}
OpMemory no_memory(const OpCall&, const OpShape&) { return {}; }

// ---- flatten: torch.flatten(x, 1) of a contiguous tensor is a view; its backward is a view too.
OpShape flatten_shape(const OpCall& c) {
  const auto& in = c.in[0].shape;
  i64 f = 1;
  for (std::size_t i = 1; i < in.size(); ++i) f = checked_mul(f, in[i], "flatten's features");
  return {with_shape(c.in[0], {in[0], f}), {}, c.layer.attrs};
}
OpMemory view_memory(const OpCall&, const OpShape&) {
  OpMemory m;
  m.output = OpMemory::Output::view;
  m.grad_in = {GradIn::view};
  return m;
}

// ---- add / concat
OpShape add_shape(const OpCall& c) {
  for (std::size_t i = 1; i < c.in.size(); ++i)
    if (c.in[i].shape != c.in[0].shape) {
      auto str = [](const std::vector<i64>& s) {
        std::string o;
        for (std::size_t k = 1; k < s.size(); ++k) o += (k > 1 ? "x" : "") + std::to_string(s[k]);
        return o;
      };
      fail(c.layer,
           "add needs inputs of the same shape, but '" + c.layer.inputs[0] + "' is " + str(c.in[0].shape) +
               " and '" + c.layer.inputs[i] + "' is " + str(c.in[i].shape) + " (per sample, C x H x W)",
           "make the channel counts and sizes match, e.g. add a 1x1 conv with the right stride on the shortcut");
    }
  return {c.in[0], {}, c.layer.attrs};
}
// `out += identity` (torchvision's residual blocks) writes into input 0; `a + b` allocates.
OpMemory add_memory(const OpCall& c, const OpShape&) {
  OpMemory m;
  if (inplace_of(c.layer)) m.output = OpMemory::Output::in_place;
  m.grad_in.assign(c.in.size(), GradIn::pass);  // add saves nothing; both inputs get the same grad
  return m;
}
OpShape concat_shape(const OpCall& c) {
  i64 rank = static_cast<i64>(c.in[0].shape.size());
  i64 dim = attr_int(c.layer, "dim");
  if (dim < 0) dim += rank;
  if (dim <= 0 || dim >= rank) fail(c.layer, "concat dim must be a non-batch dimension", "use dim=1 for channels");
  auto out = c.in[0].shape;
  for (std::size_t i = 1; i < c.in.size(); ++i) {
    const auto& s = c.in[i].shape;
    bool ok = static_cast<i64>(s.size()) == rank;
    for (i64 k = 0; ok && k < rank; ++k)
      if (k != dim && s[k] != out[k]) ok = false;
    if (!ok)
      fail(c.layer, "concat inputs must match except along dim " + std::to_string(dim) + "; '" + c.layer.inputs[i] +
                        "' does not",
           "make the spatial sizes match (same pooling/stride on every branch)");
    out[dim] = checked_add(out[dim], s[dim], "concat size");
  }
  return {with_shape(c.in[0], out), {}, c.layer.attrs};
}
OpMemory concat_memory(const OpCall& c, const OpShape&) {
  OpMemory m;
  m.grad_in.assign(c.in.size(), GradIn::view);  // cat backward: narrow() views of the gradient
  return m;
}


}  // namespace

void shape_rules(std::vector<OpRule>& out) {
  const char* derivs = "tools/autograd/derivatives.yaml";
  (void)derivs;
  out.push_back({"input", {}, {A("shape", VT::text, nullptr)}, {"shape"}, 0, 0, Autocast::keep, false,
               "the batch held by the training loop", input_shape, no_memory});
  out.push_back({"flatten", {}, {}, {}, 1, 1, Autocast::keep, false, "torch.flatten: a view", flatten_shape,
               view_memory});
  out.push_back({"add", {}, {A("inplace", VT::boolean, "false")}, {}, 2, -1, Autocast::promote, false, derivs, add_shape, add_memory});
  out.push_back({"concat", {"cat"}, {A("dim", VT::integer, "1")}, {"dim"}, 2, -1, Autocast::promote, false, derivs,
               concat_shape, concat_memory});
}

}  // namespace memfit::rules

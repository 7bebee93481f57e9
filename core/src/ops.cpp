// Every layer kind memfit knows, one rule each. Shapes follow PyTorch's formulas exactly; the memory
// behaviour follows tools/autograd/derivatives.yaml (what is saved) and the ATen kernels (what is
// allocated). Citations are to pytorch/pytorch; docs/pytorch-behaviour.md collects the evidence, and
// tests/reference/ holds what torch really saved on the CPU.
#include "memfit/ops.hpp"

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

void register_builtins(Registry& r);

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

// ---------------------------------------------------------------------------------------------
// Rules

namespace {

using VT = Value::Type;
using GradIn = OpMemory::GradIn;

TensorType with_shape(const TensorType& like, std::vector<i64> shape) { return {std::move(shape), like.dtype}; }

void need_rank(const OpCall& c, std::size_t rank, const char* layout, const char* fix) {
  const auto& s = c.in[0].shape;
  if (s.size() != rank) {
    std::string got;
    for (std::size_t i = 0; i < s.size(); ++i) got += (i ? "x" : "") + std::to_string(s[i]);
    fail(c.layer, "expects a " + std::to_string(rank) + "-d input (" + layout + ") but gets " + got, fix);
  }
}

// Output size of a sliding window, exactly as aten/src/ATen/native/Pool.h pooling_output_shape
// (pooling) and ConvUtils.h conv_output_size (conv, ceil_mode false).
i64 window_out(const Layer& l, const char* what, i64 in, i64 k, i64 s, i64 p, i64 d, bool ceil_mode) {
  if (k <= 0 || s <= 0 || d <= 0 || p < 0)
    fail(l, std::string(what) + ": kernel, stride and dilation must be positive and padding not negative",
         "correct the numbers");
  i64 span = d * (k - 1) + 1;
  i64 num = in + 2 * p - span + (ceil_mode ? s - 1 : 0);
  if (in + 2 * p < span)
    fail(l,
         std::string(what) + ": kernel (" + std::to_string(span) + " with dilation) is larger than its padded input (" +
             std::to_string(in + 2 * p) + ")",
         "use a smaller kernel, add padding, or remove a downsampling layer before it");
  i64 out = num / s + 1;
  // PyTorch: "ensure that the last pooling starts inside the image"
  if (ceil_mode && (out - 1) * s >= in + p) --out;
  return out;
}

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

// ---- conv2d: saves input and weight unconditionally (derivatives.yaml `convolution`: one formula
// for input, weight, bias). Backward allocates grad_input and grad_weight/grad_bias.
OpShape conv2d_shape(const OpCall& c) {
  need_rank(c, 4, "N,C,H,W", "put the conv after an image-shaped layer, or use linear for flat inputs");
  const auto& in = c.in[0].shape;
  i64 out_c = attr_int(c.layer, "out_channels");
  auto [kh, kw] = attr_pair(c.layer, "kernel");
  auto [sh, sw] = attr_pair(c.layer, "stride");
  auto [dh, dw] = attr_pair(c.layer, "dilation");
  i64 groups = attr_int(c.layer, "groups");
  if (out_c <= 0) fail(c.layer, "out_channels must be positive", "give the number of output channels, e.g. conv 32 3x3");
  if (groups <= 0 || in[1] % groups != 0 || out_c % groups != 0)
    fail(c.layer,
         "groups=" + std::to_string(groups) + " must divide both input channels (" + std::to_string(in[1]) +
             ") and output channels (" + std::to_string(out_c) + ")",
         "choose groups that divide both channel counts");
  OpShape s;
  s.attrs = c.layer.attrs;
  const Value& pad = attr(c.layer, "padding");
  i64 ph = pad.a, pw = pad.type == VT::pair ? pad.b : pad.a;
  if (pad.type == VT::text) {
    if (pad.text == "valid") {
      ph = pw = 0;
    } else {  // "same": PyTorch accepts it only for stride 1 (F.conv2d: "padding='same' is not supported for strided convolutions")
      if (sh != 1 || sw != 1)
        fail(c.layer, "pad=same needs stride 1 in PyTorch", "give explicit padding, e.g. pad=1 for a 3x3 kernel");
      i64 th = dh * (kh - 1), tw = dw * (kw - 1);
      if (th % 2 || tw % 2)
        fail(c.layer, "pad=same with an even kernel pads asymmetrically, which memfit does not model",
             "use an odd kernel or explicit padding");
      ph = th / 2;
      pw = tw / 2;
    }
    Value resolved;
    resolved.type = VT::pair;
    resolved.a = ph;
    resolved.b = pw;
    resolved.pos = pad.pos;
    s.attrs["padding"] = resolved;
  }
  i64 oh = window_out(c.layer, "conv", in[2], kh, sh, ph, dh, false);
  i64 ow = window_out(c.layer, "conv", in[3], kw, sw, pw, dw, false);
  s.out = with_shape(c.in[0], {in[0], out_c, oh, ow});
  s.params.push_back({"weight", {out_c, in[1] / groups, kh, kw}});
  if (attr_bool(c.layer, "bias")) s.params.push_back({"bias", {out_c}});
  return s;
}
OpMemory conv2d_memory(const OpCall& c, const OpShape&) {
  OpMemory m;
  m.saved = {{{TensorRef::input, 0}, "input"}, {{TensorRef::param, 0}, "weight"}};
  m.grad_in = {GradIn::fresh};
  (void)c;
  return m;
}

// ---- pooling
std::pair<i64, i64> pool_stride(const Layer& l) {
  const Value& s = attr(l, "stride");
  if (s.type == VT::text) return attr_pair(l, "kernel");  // PyTorch: stride defaults to kernel_size
  return {s.a, s.type == VT::pair ? s.b : s.a};
}
OpShape pool_shape_common(const OpCall& c, bool with_dilation) {
  need_rank(c, 4, "N,C,H,W", "put the pooling layer after a conv or another image-shaped layer");
  const auto& in = c.in[0].shape;
  auto [kh, kw] = attr_pair(c.layer, "kernel");
  auto [sh, sw] = pool_stride(c.layer);
  auto [ph, pw] = attr_pair(c.layer, "padding");
  auto [dh, dw] = with_dilation ? attr_pair(c.layer, "dilation") : std::pair<i64, i64>{1, 1};
  bool ceil_mode = attr_bool(c.layer, "ceil_mode");
  // Pool.h pool2d_shape_check: "pad should be at most half of effective kernel size"
  if (ph * 2 > kh || pw * 2 > kw)
    fail(c.layer, "padding must be at most half the kernel size (PyTorch refuses it)", "use smaller padding");
  OpShape s;
  s.attrs = c.layer.attrs;
  Value st;
  st.type = VT::pair;
  st.a = sh;
  st.b = sw;
  s.attrs["stride"] = st;
  s.out = with_shape(c.in[0], {in[0], in[1], window_out(c.layer, "pool", in[2], kh, sh, ph, dh, ceil_mode),
                               window_out(c.layer, "pool", in[3], kw, sw, pw, dw, ceil_mode)});
  return s;
}
OpShape maxpool_shape(const OpCall& c) { return pool_shape_common(c, true); }
OpShape avgpool_shape(const OpCall& c) { return pool_shape_common(c, false); }
// max_pool2d_with_indices: self and result1 (int64 indices of the output's shape) are saved.
// F.max_pool2d goes through max_pool2d_with_indices when the input requires grad.
OpMemory maxpool_memory(const OpCall&, const OpShape& s) {
  OpMemory m;
  m.extras = {{"indices", {s.out.shape, DType::i64}}};
  m.saved = {{{TensorRef::input, 0}, "self"}, {{TensorRef::extra, 0}, "indices"}};
  m.grad_in = {GradIn::fresh};
  return m;
}
// avg_pool2d / _adaptive_avg_pool2d save self (for its shape and the backward kernel).
OpMemory save_self_memory(const OpCall&, const OpShape&) {
  OpMemory m;
  m.saved = {{{TensorRef::input, 0}, "self"}};
  m.grad_in = {GradIn::fresh};
  return m;
}
// adaptive_avg_pool2d to 1x1 is input.mean({-1, -2}, keepdim=true) (AdaptiveAveragePooling.cpp).
// PyTorch 2.x's mean.dim formula uses only self.sym_sizes() and self.sym_numel(), so autograd keeps
// the sizes, not the input (derivatives.yaml); torch 1.13's MeanBackward1 still saved self
// (measured: tests/reference/cpu_saved_models.json). Other output sizes save self.
OpMemory adaptive_memory(const OpCall& c, const OpShape& s) {
  const auto& out = s.out.shape;
  bool global = out.size() == 4 && out[2] == 1 && out[3] == 1;
  if (!global || c.rules == TorchRules::v1_13) return save_self_memory(c, s);
  OpMemory m;
  m.grad_in = {GradIn::fresh};
  return m;
}
OpShape adaptive_shape(const OpCall& c) {
  need_rank(c, 4, "N,C,H,W", "put the pooling layer after a conv or another image-shaped layer");
  auto [oh, ow] = attr_pair(c.layer, "output_size");
  if (oh <= 0 || ow <= 0) fail(c.layer, "output_size must be positive", "e.g. adaptive_avgpool 1");
  const auto& in = c.in[0].shape;
  return {with_shape(c.in[0], {in[0], in[1], oh, ow}), {}, c.layer.attrs};
}

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

// ---- linear: F.linear lowers to addmm(bias, input, weight.t()) for 2-d input. derivatives.yaml
// addmm saves mat1 only if mat2 needs grad and mat2 only if mat1 needs grad.
OpShape linear_shape(const OpCall& c) {
  need_rank(c, 2, "N,features", "add a flatten layer before it");
  i64 out = attr_int(c.layer, "out_features");
  if (out <= 0) fail(c.layer, "out_features must be positive", "e.g. fc 500");
  OpShape s{with_shape(c.in[0], {c.in[0].shape[0], out}), {}, c.layer.attrs};
  s.params.push_back({"weight", {out, c.in[0].shape[1]}});
  if (attr_bool(c.layer, "bias")) s.params.push_back({"bias", {out}});
  return s;
}
OpMemory linear_memory(const OpCall& c, const OpShape&) {
  OpMemory m;
  m.saved = {{{TensorRef::input, 0}, "mat1 (input)"}};
  if (c.in_requires_grad[0]) m.saved.push_back({{TensorRef::param, 0}, "mat2 (weight.t())"});
  m.grad_in = {GradIn::fresh};
  return m;
}

// ---- elementwise activations
OpShape same_shape(const OpCall& c) { return {c.in[0], {}, c.layer.attrs}; }
bool inplace_of(const Layer& l) {
  auto it = l.attrs.find("inplace");
  return it != l.attrs.end() && it->second.flag;
}
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
  if (inplace_of(c.layer)) {
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
    s.params.push_back({"running_mean", {ch}, DType::f32, false});
    s.params.push_back({"running_var", {ch}, DType::f32, false});
    s.params.push_back({"num_batches_tracked", {}, DType::i64, false});
  }
  return s;
}
OpMemory batchnorm_memory(const OpCall& c, const OpShape&) {
  i64 ch = c.in[0].shape[1];
  OpMemory m;
  m.extras = {{"save_mean", {{ch}, DType::f32}}, {"save_invstd", {{ch}, DType::f32}}};
  m.saved = {{{TensorRef::input, 0}, "input"},
             {{TensorRef::extra, 0}, "save_mean"},
             {{TensorRef::extra, 1}, "save_invstd"}};
  m.grad_in = {GradIn::fresh};
  return m;
}

// ---- dropout: on CUDA, native_dropout returns (output, mask) with a bool mask that is saved. The
// in-place form multiplies by a float noise tensor of the input's dtype that MulBackward saves
// (aten/src/ATen/native/Dropout.cpp _dropout_impl).
OpMemory dropout_memory(const OpCall& c, const OpShape&) {
  OpMemory m;
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

// ---- softmax / log_softmax: save result. Output dtype float32 under autocast (fp32 list).
OpShape softmax_shape(const OpCall& c) {
  i64 dim = attr_int(c.layer, "dim");
  i64 rank = static_cast<i64>(c.in[0].shape.size());
  if (dim < -rank || dim >= rank)
    fail(c.layer, "dim=" + std::to_string(dim) + " is out of range for a " + std::to_string(rank) + "-d input",
         "use dim=1 for class scores");
  return {c.in[0], {}, c.layer.attrs};
}

// ---- cross_entropy = log_softmax + nll_loss. Saved: log_softmax's result, nll_loss's self (the
// same tensor), target (int64 [N], held by the loop anyway) and total_weight (a float32 scalar).
// Backward: nll_loss_backward allocates a [N,C] gradient, _log_softmax_backward_data another.
OpShape cross_entropy_shape(const OpCall& c) {
  need_rank(c, 2, "N,classes", "cross_entropy takes class scores [N, classes]; add flatten/linear before it");
  if (c.in[0].shape[1] < 1) fail(c.layer, "needs at least one class", "check the layer before it");
  return {TensorType{{}, c.in[0].dtype}, {}, c.layer.attrs};
}
OpMemory cross_entropy_memory(const OpCall& c, const OpShape&) {
  OpMemory m;
  m.extras = {{"log_softmax result", c.in[0]}, {"total_weight", {{}, c.in[0].dtype}}};
  m.saved = {{{TensorRef::extra, 0}, "result / self"}, {{TensorRef::target, 0}, "target"},
             {{TensorRef::extra, 1}, "total_weight"}};
  m.grad_in = {GradIn::fresh};
  m.bwd_temps = {c.in[0]};  // nll_loss_backward's grad, consumed by _log_softmax_backward_data
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

AttrSpec A(const char* k, VT t, const char* d) { return {k, t, d}; }

void register_builtins(Registry& r) {
  const char* derivs = "tools/autograd/derivatives.yaml";
  add_rule(r, {"input", {}, {A("shape", VT::text, nullptr)}, {"shape"}, 0, 0, Autocast::keep, false,
               "the batch held by the training loop", input_shape, no_memory});
  add_rule(r, {"conv2d", {"conv"},
               {A("out_channels", VT::integer, nullptr), A("kernel", VT::pair, nullptr), A("stride", VT::pair, "1"),
                A("padding", VT::pair, "0"), A("dilation", VT::pair, "1"), A("groups", VT::integer, "1"),
                A("bias", VT::boolean, "true")},
               {"out_channels", "kernel"}, 1, 1, Autocast::lower, false, derivs, conv2d_shape, conv2d_memory});
  add_rule(r, {"maxpool2d", {"maxpool", "max_pool2d"},
               {A("kernel", VT::pair, nullptr), A("stride", VT::pair, "kernel"), A("padding", VT::pair, "0"),
                A("dilation", VT::pair, "1"), A("ceil_mode", VT::boolean, "false")},
               {"kernel"}, 1, 1, Autocast::keep, false, derivs, maxpool_shape, maxpool_memory});
  add_rule(r, {"avgpool2d", {"avgpool", "avg_pool2d"},
               {A("kernel", VT::pair, nullptr), A("stride", VT::pair, "kernel"), A("padding", VT::pair, "0"),
                A("ceil_mode", VT::boolean, "false"), A("count_include_pad", VT::boolean, "true")},
               {"kernel"}, 1, 1, Autocast::keep, false, derivs, avgpool_shape, save_self_memory});
  add_rule(r, {"adaptive_avgpool2d", {"adaptive_avgpool", "gap", "global_avgpool"},
               {A("output_size", VT::pair, "1")}, {"output_size"}, 1, 1, Autocast::keep, false, derivs,
               adaptive_shape, adaptive_memory});
  add_rule(r, {"flatten", {}, {}, {}, 1, 1, Autocast::keep, false, "torch.flatten: a view", flatten_shape,
               view_memory});
  add_rule(r, {"linear", {"fc", "dense"}, {A("out_features", VT::integer, nullptr), A("bias", VT::boolean, "true")},
               {"out_features"}, 1, 1, Autocast::lower, false, derivs, linear_shape, linear_memory});
  add_rule(r, {"relu", {}, {A("inplace", VT::boolean, "false")}, {}, 1, 1, Autocast::keep, false, derivs, same_shape,
               save_result_memory});
  add_rule(r, {"relu6", {}, {A("inplace", VT::boolean, "false")}, {}, 1, 1, Autocast::keep, false, derivs,
               same_shape, clone_self_when_inplace_memory});
  add_rule(r, {"leaky_relu", {"leakyrelu"},
               {A("negative_slope", VT::real, "0.01"), A("inplace", VT::boolean, "false")}, {"negative_slope"}, 1, 1,
               Autocast::keep, false, derivs, same_shape, self_or_result_memory});
  add_rule(r, {"sigmoid", {}, {}, {}, 1, 1, Autocast::keep, false, derivs, same_shape, save_result_memory});
  add_rule(r, {"tanh", {}, {}, {}, 1, 1, Autocast::keep, false, derivs, same_shape, save_result_memory});
  add_rule(r, {"gelu", {}, {}, {}, 1, 1, Autocast::keep, false, derivs, same_shape, save_self_memory});
  add_rule(r, {"silu", {"swish"}, {A("inplace", VT::boolean, "false")}, {}, 1, 1, Autocast::keep, false, derivs,
               same_shape, clone_self_when_inplace_memory});
  add_rule(r, {"batchnorm2d", {"bn", "batchnorm"},
               {A("eps", VT::real, "1e-05"), A("momentum", VT::real, "0.1"), A("affine", VT::boolean, "true"),
                A("track_running_stats", VT::boolean, "true")},
               {}, 1, 1, Autocast::keep, false, derivs, batchnorm_shape, batchnorm_memory});
  add_rule(r, {"dropout", {}, {A("p", VT::real, "0.5"), A("inplace", VT::boolean, "false")}, {"p"}, 1, 1,
               Autocast::keep, false, "aten/src/ATen/native/Dropout.cpp", same_shape, dropout_memory});
  add_rule(r, {"softmax", {}, {A("dim", VT::integer, "1")}, {"dim"}, 1, 1, Autocast::fp32, false, derivs,
               softmax_shape, save_result_memory});
  add_rule(r, {"log_softmax", {"logsoftmax"}, {A("dim", VT::integer, "1")}, {"dim"}, 1, 1, Autocast::fp32, false,
               derivs, softmax_shape, save_result_memory});
  add_rule(r, {"cross_entropy", {"crossentropy", "cross_entropy_loss"}, {}, {}, 1, 1, Autocast::fp32, true, derivs,
               cross_entropy_shape, cross_entropy_memory});
  add_rule(r, {"add", {}, {A("inplace", VT::boolean, "false")}, {}, 2, -1, Autocast::promote, false, derivs, add_shape, add_memory});
  add_rule(r, {"concat", {"cat"}, {A("dim", VT::integer, "1")}, {"dim"}, 2, -1, Autocast::promote, false, derivs,
               concat_shape, concat_memory});
}

}  // namespace

}  // namespace memfit

// Convolution, pooling and linear layers (the matmul-shaped ops).
// Citations are to pytorch/pytorch; docs/pytorch-behaviour.md collects the evidence.
#include "rules.hpp"

namespace memfit::rules {

namespace {


// Sliding-window arithmetic in checked int64: kernels and dilations near 2^40 made
// d * (k - 1) + 1 and in + 2 * p wrap (UBSan), and a wrapped span passed the size check.
i64 win_mul(const Layer& l, const char* what, i64 a, i64 b) {
  i64 r;
  if (__builtin_mul_overflow(a, b, &r))
    fail(l, std::string(what) + ": kernel, dilation or padding is so large that the window size overflows 64 bits",
         "use the kernel, dilation and padding the real layer has (they are at most the input size)");
  return r;
}
i64 win_add(const Layer& l, const char* what, i64 a, i64 b) {
  i64 r;
  if (__builtin_add_overflow(a, b, &r))
    fail(l, std::string(what) + ": kernel, dilation or padding is so large that the window size overflows 64 bits",
         "use the kernel, dilation and padding the real layer has (they are at most the input size)");
  return r;
}

// Output size of a sliding window, exactly as aten/src/ATen/native/Pool.h pooling_output_shape
// (pooling) and ConvUtils.h conv_output_size (conv, ceil_mode false).
i64 window_out(const Layer& l, const char* what, i64 in, i64 k, i64 s, i64 p, i64 d, bool ceil_mode) {
  // Name the value that is wrong: one message for all four once said "must be positive" for positive ones.
  auto refuse = [&](const char* name, i64 v, const char* rule) {
    fail(l, std::string(what) + ": " + name + " is " + std::to_string(v) + " but must be " + rule,
         "correct the " + std::string(name));
  };
  if (k <= 0) refuse("kernel", k, "at least 1");
  if (s <= 0) refuse("stride", s, "at least 1");
  if (d <= 0) refuse("dilation", d, "at least 1");
  if (p < 0) refuse("padding", p, "0 or more");
  i64 span = win_add(l, what, win_mul(l, what, d, k - 1), 1);
  i64 padded = win_add(l, what, in, win_mul(l, what, 2, p));
  if (padded < span)
    fail(l,
         std::string(what) + ": kernel (" + std::to_string(span) + " with dilation) is larger than its padded input (" +
             std::to_string(padded) + ")",
         "use a smaller kernel, add padding, or remove a downsampling layer before it");
  // padded - span >= 0 here and s - 1 < 2^63, so only their sum can overflow.
  i64 num = win_add(l, what, padded - span, ceil_mode ? s - 1 : 0);
  i64 out = num / s + 1;
  // PyTorch: "ensure that the last pooling starts inside the image". No overflow: (out - 1) * s <= num.
  if (ceil_mode && (out - 1) * s >= in + p) --out;
  return out;
}

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
      if (kh <= 0 || kw <= 0 || dh <= 0 || dw <= 0)
        fail(c.layer,
             "conv: kernel " + std::to_string(kh) + "x" + std::to_string(kw) + " and dilation " + std::to_string(dh) +
                 "x" + std::to_string(dw) + " must all be at least 1",
             "correct the kernel or dilation");
      i64 th = win_mul(c.layer, "conv", dh, kh - 1), tw = win_mul(c.layer, "conv", dw, kw - 1);
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
OpMemory conv2d_memory(const OpCall&, const OpShape&) {
  OpMemory m;
  m.saved = {{.ref = {TensorRef::input, 0}, .role = "input"}, {.ref = {TensorRef::param, 0}, .role = "weight"}};
  m.grad_in = {GradIn::fresh};
  // cudnn_convolution_forward / _backward_input / _backward_weight take a workspace per call
  // (aten/src/ATen/native/cudnn/Conv_v8.cpp); its size is elastic (docs/pytorch-behaviour.md).
  m.fwd_workspaces = {Workspace::cudnn_conv};
  m.bwd_workspaces = {Workspace::cudnn_conv};
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
  m.saved = {{.ref = {TensorRef::input, 0}, .role = "self"}, {.ref = {TensorRef::extra, 0}, .role = "indices"}};
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

}  // namespace

// ---- linear: F.linear lowers to addmm(bias, input, weight.t()) for 2-d input. derivatives.yaml
// addmm saves mat1 only if mat2 needs grad and mat2 only if mat1 needs grad.
// On N-d input (Linear.cpp linear) the leading dims are folded: addmm on input.view(-1, D) (3-d
// contiguous with bias) or matmul, which reshapes: either way a view of the input when its strides
// allow (measured, torch 1.13: the saved mat1 is the input's storage), else a contiguous copy.
static bool linear_folds(const TensorType& t) {
  if (t.shape.size() <= 2) return true;
  i64 rows = 1;
  for (std::size_t k = 0; k + 1 < t.shape.size(); ++k) rows = checked_mul(rows, t.shape[k], "linear's rows");
  std::vector<i64> st;
  return view_strides(t.shape, t.layout(), {rows, t.shape.back()}, st);
}
OpShape linear_shape(const OpCall& c) {
  if (c.in[0].shape.size() < 2) need_rank(c, 2, "N,features", "add a flatten layer before it");
  i64 out = attr_int(c.layer, "out_features");
  if (out <= 0) fail(c.layer, "out_features must be positive", "e.g. fc 500");
  std::vector<i64> shape = c.in[0].shape;
  const i64 in_features = shape.back();
  shape.back() = out;
  OpShape s{with_shape(c.in[0], shape), {}, c.layer.attrs};
  s.params.push_back({"weight", {out, in_features}});
  // tied_to: the weight is that layer's (GPT2LMHeadModel.lm_head.weight is transformer.wte.weight,
  // PreTrainedModel.tie_weights); the graph checks the shapes and links the two.
  auto tied = c.layer.attrs.find("tied_to");
  if (tied != c.layer.attrs.end() && !tied->second.text.empty()) s.params.back().tied_to = tied->second.text;
  if (attr_bool(c.layer, "bias")) s.params.push_back({"bias", {out}});
  return s;
}
// The workspaces: the first matmul on a thread creates its cuBLAS handle's workspace; addmm with a
// bias goes through cublasLt in forward (aten/src/ATen/cuda/CublasHandlePool.cpp, Blas.cpp
// addmm_out_cuda_impl's useLtInterface); backward's mm calls are plain cuBLAS on autograd's thread.
OpMemory linear_memory(const OpCall& c, const OpShape& s) {
  OpMemory m;
  if (!linear_folds(c.in[0])) {
    m.extras = {{"input (contiguous copy)", with_shape(c.in[0], c.in[0].shape)}};
    m.saved = {{.ref = {TensorRef::extra, 0}, .role = "mat1 (input copy)", .when = {SaveIf::param_needs_grad, 0}},
               {.ref = {TensorRef::param, 0}, .role = "mat2 (weight.t())", .when = {SaveIf::input_needs_grad, 0}}};
    m.grad_in = {GradIn::fresh};
    m.fwd_workspaces = {Workspace::cublas};
    m.bwd_workspaces = {Workspace::cublas};
    return m;
  }
  m.saved = {{.ref = {TensorRef::input, 0}, .role = "mat1 (input)", .when = {SaveIf::param_needs_grad, 0}},
             {.ref = {TensorRef::param, 0}, .role = "mat2 (weight.t())", .when = {SaveIf::input_needs_grad, 0}}};
  m.grad_in = {GradIn::fresh};
  m.fwd_workspaces = {Workspace::cublas};
  if (s.params.size() > 1) m.fwd_workspaces.push_back(Workspace::cublaslt);
  m.bwd_workspaces = {Workspace::cublas};
  (void)c;
  return m;
}

namespace {


}  // namespace

void conv_pool_rules(std::vector<OpRule>& out) {
  const char* derivs = "tools/autograd/derivatives.yaml";
  out.push_back({.kind = "conv2d",
                 .aliases = {"conv"},
                 .attrs = {A("out_channels", VT::integer, nullptr), A("kernel", VT::pair, nullptr),
                           A("stride", VT::pair, "1"), A("padding", VT::pair, "0"), A("dilation", VT::pair, "1"),
                           A("groups", VT::integer, "1"), A("bias", VT::boolean, "true")},
                 .positional = {"out_channels", "kernel"},
                 .autocast = Autocast::lower,
                 .family = OpFamily::conv_pool,
                 .pytorch = "nn.Conv2d",
                 .summary = "2-d convolution; saves its input and weight",
                 .source = derivs,
                 .shape = conv2d_shape,
                 .memory = conv2d_memory});
  out.push_back({.kind = "maxpool2d",
                 .aliases = {"maxpool", "max_pool2d"},
                 .attrs = {A("kernel", VT::pair, nullptr), A("stride", VT::pair, "kernel"), A("padding", VT::pair, "0"),
                           A("dilation", VT::pair, "1"), A("ceil_mode", VT::boolean, "false")},
                 .positional = {"kernel"},
                 .family = OpFamily::conv_pool,
                 .pytorch = "nn.MaxPool2d",
                 .summary = "max pooling; saves its input and int64 indices of the output's shape",
                 .source = derivs,
                 .shape = maxpool_shape,
                 .memory = maxpool_memory});
  out.push_back({.kind = "avgpool2d",
                 .aliases = {"avgpool", "avg_pool2d"},
                 .attrs = {A("kernel", VT::pair, nullptr), A("stride", VT::pair, "kernel"), A("padding", VT::pair, "0"),
                           A("ceil_mode", VT::boolean, "false"), A("count_include_pad", VT::boolean, "true")},
                 .positional = {"kernel"},
                 .family = OpFamily::conv_pool,
                 .pytorch = "nn.AvgPool2d",
                 .summary = "average pooling; saves its input",
                 .source = derivs,
                 .shape = avgpool_shape,
                 .memory = save_self_memory});
  out.push_back({.kind = "adaptive_avgpool2d",
                 .aliases = {"adaptive_avgpool", "gap", "global_avgpool"},
                 .attrs = {A("output_size", VT::pair, "1")},
                 .positional = {"output_size"},
                 .family = OpFamily::conv_pool,
                 .pytorch = "nn.AdaptiveAvgPool2d",
                 .summary = "adaptive average pooling; to 1x1 it is a mean that saves no input in PyTorch 2",
                 .source = derivs,
                 .shape = adaptive_shape,
                 .memory = adaptive_memory});
  out.push_back({.kind = "linear",
                 .aliases = {"fc", "dense"},
                 .attrs = {A("out_features", VT::integer, nullptr), A("bias", VT::boolean, "true"), A("tied_to", VT::text, "")},
                 .positional = {"out_features"},
                 .autocast = Autocast::lower,
                 .family = OpFamily::conv_pool,
                 .pytorch = "nn.Linear",
                 .summary = "fully connected (addmm); saves its input if the weight trains, the weight if the input needs grad",
                 .source = derivs,
                 .shape = linear_shape,
                 .memory = linear_memory});
}

}  // namespace memfit::rules

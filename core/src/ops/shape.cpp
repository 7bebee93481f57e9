// The input, views and element-wise combination of several inputs (add, concat).
// Citations are to pytorch/pytorch; docs/pytorch-behaviour.md collects the evidence.
#include <charconv>

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
  // dtype=int64: token ids (`input 128 dtype=int64` is [N, 128]), what HF's input_ids are.
  DType dtype = DType::f32;
  auto d = c.layer.attrs.find("dtype");
  if (d != c.layer.attrs.end()) {
    if (d->second.text == "int64") dtype = DType::i64;
    else if (d->second.text != "float32")
      fail(c.layer, "input dtype '" + d->second.text + "' is not float32 or int64",
           "write dtype=int64 for token ids, or leave it out for float32 data");
  }
  return {TensorType{shape, dtype}, {}, c.layer.attrs};
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
// add with broadcasting (a bias, a position embedding). add is in none of autocast's lists: mixed
// floating inputs are promoted inside the kernel (no copies), and `a.add_(b)` keeps a's dtype.
OpShape add_shape(const OpCall& c) {
  TensorType out{broadcast_shape(c, "make the channel counts and sizes match, e.g. add a 1x1 conv with the right stride on the shortcut"),
                 promoted_dtype(c)};
  if (inplace_of(c.layer)) {
    if (out.shape != c.in[0].shape)
      fail(c.layer,
           "in-place add into '" + c.layer.inputs[0] + "' (" + shape_text(c.in[0].shape) +
               ") would have to grow it to " + shape_text(out.shape) + " (per sample, C x H x W)",
           "make the shapes match, e.g. add a 1x1 conv with the right stride on the shortcut, or drop inplace");
    out = c.in[0];
  } else if (out.shape == c.in[0].shape) {
    out.strides = c.in[0].strides;  // TensorIterator keeps input 0's layout
  }
  return {out, {}, c.layer.attrs};
}
// `out += identity` (torchvision's residual blocks) writes into input 0; `a + b` allocates. add saves
// nothing and hands its gradient to every input; the engine sums it down to a broadcast input's
// shape (validate_outputs: at::sum_to), a new tensor.
OpMemory add_memory(const OpCall& c, const OpShape& s) {
  OpMemory m;
  if (inplace_of(c.layer)) m.output = OpMemory::Output::in_place;
  for (const auto& t : c.in) m.grad_in.push_back(t.shape == s.out.shape ? GradIn::pass : GradIn::fresh);
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
  // cat computes in the inputs' promoted dtype (TensorIterator-style result_type over the list);
  // under torch 1.13's autocast the inputs were already cast to the widest (promote list)
  return {TensorType{out, promoted_dtype(c)}, {}, c.layer.attrs};
}
// cat always copies into a new tensor (one input too: DenseNet's torch.cat([x], 1)). Its backward
// hands each input a narrow() of the gradient: a slice that is not dense, except with one input,
// where the narrow spans the whole gradient.
OpMemory concat_memory(const OpCall& c, const OpShape&) {
  OpMemory m;
  m.grad_in.assign(c.in.size(), c.in.size() == 1 ? GradIn::view : GradIn::slice);
  return m;
}

// ---- chunk: torch.chunk(x, n, dim) returns views of x, ceil(size / n) along dim each (the last may
// be smaller; fewer than n when size / n rounds up that far). Its backward (SplitBackward:
// split_backward, derivatives.yaml `split.Tensor` / `unsafe_chunk`) concatenates the outputs'
// gradients into one new tensor of the input's size; nothing is saved.
constexpr i64 kMaxChunks = 4096;  // outputs of one node: each is a value the planner tracks
OpShape chunk_shape(const OpCall& c) {
  i64 n = attr_int(c.layer, "chunks");
  i64 rank = static_cast<i64>(c.in[0].shape.size());
  i64 dim = attr_int(c.layer, "dim");
  if (dim < 0) dim += rank;
  if (dim <= 0 || dim >= rank) fail(c.layer, "chunk dim must be a non-batch dimension", "use dim=1 for channels");
  if (n < 1 || n > kMaxChunks)
    fail(c.layer, "chunks=" + std::to_string(n) + " must be from 1 to " + std::to_string(kMaxChunks), "e.g. chunk 2");
  const i64 size = c.in[0].shape[static_cast<std::size_t>(dim)];
  const i64 each = size / n + (size % n != 0);  // ceil without overflow
  if (each < 1) fail(c.layer, "chunk of an empty dimension", "chunk a dimension of at least one element");
  OpShape s{c.in[0], {}, c.layer.attrs, {}};
  i64 left = size;
  bool first = true;
  while (left > 0) {
    std::vector<i64> shape = c.in[0].shape;
    shape[static_cast<std::size_t>(dim)] = std::min(each, left);
    left -= shape[static_cast<std::size_t>(dim)];
    if (first) s.out = with_shape(c.in[0], shape);
    else s.extra_outs.push_back(with_shape(c.in[0], shape));
    first = false;
  }
  return s;
}
OpMemory chunk_memory(const OpCall&, const OpShape&) {
  OpMemory m;
  m.output = OpMemory::Output::view;
  m.grad_in = {GradIn::fresh};
  return m;
}

// ---- mean over dims (x.mean([2, 3]), MNASNet's head). PyTorch 2's mean.dim backward uses only the
// input's sizes and numel (derivatives.yaml `mean.dim`: `mean_backward(grad, self.sym_sizes(), dim,
// self.sym_numel(), keepdim)`), so nothing is saved; torch 1.13's MeanBackward1 kept self (measured:
// tests/reference/cpu_saved_models.json, the global average pool). Backward divides an expanded
// gradient: a new tensor of the input's size.
std::vector<i64> mean_dims(const OpCall& c) {
  const Value& v = attr(c.layer, "dims");
  i64 rank = static_cast<i64>(c.in[0].shape.size());
  std::vector<i64> dims;
  std::size_t start = 0;
  const std::string& t = v.text;
  while (start <= t.size()) {
    std::size_t comma = t.find(',', start);
    std::string part = t.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    i64 d = 0;
    auto r = std::from_chars(part.data(), part.data() + part.size(), d);
    if (part.empty() || r.ec != std::errc() || r.ptr != part.data() + part.size())
      fail(c.layer, "dims='" + t + "' is not a list of dimensions", "write e.g. dims=2,3 (x.mean([2, 3]))");
    if (d < 0) d += rank;
    if (d <= 0 || d >= rank)
      fail(c.layer, "dims: " + part + " is not a non-batch dimension of a " + std::to_string(rank) + "-d input",
           "use dimensions 1.." + std::to_string(rank - 1) + " (or negative ones)");
    if (std::find(dims.begin(), dims.end(), d) != dims.end())
      fail(c.layer, "dims names dimension " + std::to_string(d) + " twice", "list each dimension once");
    dims.push_back(d);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return dims;
}
OpShape mean_shape(const OpCall& c) {
  std::vector<i64> dims = mean_dims(c);
  bool keepdim = attr_bool(c.layer, "keepdim");
  std::vector<i64> out;
  const auto& in = c.in[0].shape;
  for (std::size_t k = 0; k < in.size(); ++k) {
    bool reduced = std::find(dims.begin(), dims.end(), static_cast<i64>(k)) != dims.end();
    if (!reduced) out.push_back(in[k]);
    else if (keepdim) out.push_back(1);
  }
  return {with_shape(c.in[0], out), {}, c.layer.attrs};
}
OpMemory mean_memory(const OpCall& c, const OpShape& s) {
  if (c.rules == TorchRules::v1_13) return save_self_memory(c, s);
  OpMemory m;
  m.grad_in = {GradIn::fresh};
  return m;
}


// ---- parameter: an nn.Parameter used as an operand (ViTEmbeddings' cls_token [1, 1, D] and
// position_embeddings [1, T, D]), not through a module's weight. The layer reads nothing; its output
// IS the parameter's storage, so the forward allocates nothing (OpMemory::Output::parameter) and its
// bytes are parameter bytes: counted, graded, stepped and frozen (--freeze LAYER) as any weight.
// Its gradient is the one its consumers hand back: AccumulateGrad steals it as .grad when it is the
// only reference, else clones it (torch/csrc/autograd/functions/accumulate_grad.h; plan.cpp).
//
// The batch dimension: memfit's tensors carry their full shape, N first for activations (TensorType),
// and nothing marks dim 0 as "the batch". A parameter is given its own full shape (1x1x768: dim 0 is
// its leading 1, not N). That is all a batch-less operand needs: the rules that combine it with
// activations (add, mul, expand) broadcast full shapes aligned from the right, as PyTorch does
// (ExpandUtils.cpp infer_size), so [1, 197, 768] + [N, 197, 768] is [N, 197, 768] and its gradient is
// summed back to [1, 197, 768]. A "has no batch" flag on TensorType would have touched every rule for
// the same result; rules that treat dim 0 as N (reshape, flatten, concat's dim 0 refusal) see the
// parameter's dim 0, which is what torch does with x.reshape(x.shape[0], ...) too.
std::vector<i64> full_shape_attr(const OpCall& c) {
  std::vector<i64> shape = int_list(c.layer, "shape", 'x', "shape=1x1x768 (the parameter's full shape, no batch)");
  if (shape.empty() || shape.size() > static_cast<std::size_t>(kMaxInputRank))
    fail(c.layer, "a parameter of " + std::to_string(shape.size()) + " dimensions",
         "give 1 to " + std::to_string(kMaxInputRank) + " sizes, e.g. shape=1x1x768");
  for (i64 d : shape)
    if (d < 1) fail(c.layer, "parameter size " + std::to_string(d) + " is not positive", "give positive sizes, e.g. shape=1x197x768");
  return shape;
}
OpShape parameter_shape(const OpCall& c) {
  std::vector<i64> shape = full_shape_attr(c);
  OpShape s{TensorType{shape, DType::f32}, {}, c.layer.attrs};
  // "data": the tensor itself; the parameter's PyTorch name is the layer's name (module path + attribute)
  s.params.push_back({.name = "data", .shape = std::move(shape)});
  return s;
}
OpMemory parameter_memory(const OpCall&, const OpShape&) {
  OpMemory m;
  m.output = OpMemory::Output::parameter;
  return m;
}

// ---- expand: x.expand(N, *sizes), a view that broadcasts size-1 dims (ViT's
// `self.cls_token.expand(batch_size, -1, -1)`: [1, 1, D] -> [N, 1, D]) with stride 0 where it
// broadcasts; `shape` is per sample (N first is --batch), -1 keeps the input's size, and leading
// dims may be new (TensorShape.cpp expand, inferExpandGeometry). Saves nothing; backward is
// derivatives.yaml `expand: self: at::sum_to(grad, self.sym_sizes())`: a new tensor of the input's
// shape, or the gradient itself when nothing was broadcast (sum_to returns its argument).
OpShape expand_shape(const OpCall& c) {
  std::vector<i64> per = int_list(c.layer, "shape", 'x', "shape=1x768 (per sample, without N; -1 keeps a size)");
  const auto& in = c.in[0].shape;
  std::vector<i64> target{c.batch};
  target.insert(target.end(), per.begin(), per.end());
  if (target.size() < in.size())
    fail(c.layer,
         "expands a " + std::to_string(in.size()) + "-d input (" + shape_text(in, 0) + ") to " + std::to_string(target.size()) +
             " dims",
         "give one size per input dim after the batch (-1 keeps one), e.g. shape=1x768 for 1x1x768");
  const std::size_t lead = target.size() - in.size();
  const std::vector<i64> in_st = c.in[0].layout();
  TensorType out{target, c.in[0].dtype};
  out.strides.assign(target.size(), 0);
  for (std::size_t k = 0; k < target.size(); ++k) {
    if (k < lead) {
      if (target[k] < 1)
        fail(c.layer, "a new leading dim of size " + std::to_string(target[k]), "give new leading dims a positive size");
      continue;  // a new dim: stride 0
    }
    const i64 d = in[k - lead];
    if (target[k] == -1) target[k] = out.shape[k] = d;
    if (target[k] == d) {
      out.strides[k] = in_st[k - lead];
    } else if (d != 1 || target[k] < 1) {
      fail(c.layer,
           "cannot expand " + shape_text(in, 0) + " to " + shape_text(target, 0) + ": dim " + std::to_string(k) + " is " +
               std::to_string(d) + ", and only size-1 dims broadcast",
           "give the input's size (or -1) where it is not 1");
    }
  }
  if (out.is_contiguous()) out.strides.clear();
  return {out, {}, c.layer.attrs};
}
OpMemory expand_memory(const OpCall& c, const OpShape& s) {
  OpMemory m;
  m.output = OpMemory::Output::view;
  m.grad_in = {c.in[0].shape == s.out.shape ? GradIn::pass : GradIn::fresh};
  return m;
}

}  // namespace

void shape_rules(std::vector<OpRule>& out) {
  const char* derivs = "tools/autograd/derivatives.yaml";
  out.push_back({.kind = "input",
                 .attrs = {A("shape", VT::text, nullptr), A("dtype", VT::text, "float32")},
                 .positional = {"shape"},
                 .min_inputs = 0,
                 .max_inputs = 0,
                 .family = OpFamily::shape,
                 .pytorch = "the batch",
                 .summary = "the batch the training loop holds (per-sample shape; N is --batch; dtype=int64 for token ids)",
                 .source = "the batch held by the training loop",
                 .shape = input_shape,
                 .memory = no_memory});
  out.push_back({.kind = "flatten",
                 .family = OpFamily::shape,
                 .pytorch = "torch.flatten(x, 1)",
                 .summary = "a view: no memory",
                 .source = "torch.flatten of a contiguous tensor: a view",
                 .shape = flatten_shape,
                 .memory = view_memory});
  out.push_back({.kind = "add",
                 .attrs = {A("inplace", VT::boolean, "false")},
                 .min_inputs = 2,
                 .max_inputs = -1,
                 .family = OpFamily::shape,
                 .pytorch = "a + b (out += b in place)",
                 .summary = "element-wise sum; saves nothing, passes its gradient on to every input",
                 .source = derivs,
                 .shape = add_shape,
                 .memory = add_memory});
  out.push_back({.kind = "concat",
                 .aliases = {"cat"},
                 .attrs = {A("dim", VT::integer, "1")},
                 .positional = {"dim"},
                 .min_inputs = 1,
                 .max_inputs = -1,
                 // PyTorch 2's autocast lists (aten/src/ATen/autocast_mode.h AT_FORALL_PROMOTE: addcdiv, addcmul,
                 // atan2, bilinear, cross, dot, vdot, grid_sampler, index_put, tensordot, scatter_add) have no
                 // cat: it promotes inside the kernel, no input copies. torch 1.13's autocast_mode.cpp listed
                 // `KERNEL(ADD_NS(cat), "cat", Tensor (TensorList, int64_t), promote)`: copies of the narrower inputs.
                 .autocast = Autocast::keep,
                 .autocast_1_13 = Autocast::promote,
                 .family = OpFamily::shape,
                 .pytorch = "torch.cat",
                 .summary = "concatenation; saves nothing, each input gets a slice of its gradient",
                 .source = derivs,
                 .shape = concat_shape,
                 .memory = concat_memory});
  out.push_back({.kind = "chunk",
                 .attrs = {A("chunks", VT::integer, nullptr), A("dim", VT::integer, "1")},
                 .positional = {"chunks", "dim"},
                 .family = OpFamily::shape,
                 .pytorch = "torch.chunk(x, n, dim)",
                 .summary = "n views of its input (outputs layer:0 .. layer:n-1); backward concatenates their gradients",
                 .source = derivs,
                 .shape = chunk_shape,
                 .memory = chunk_memory});
  out.push_back({.kind = "parameter",
                 .attrs = {A("shape", VT::text, nullptr)},
                 .positional = {"shape"},
                 .min_inputs = 0,
                 .max_inputs = 0,
                 .family = OpFamily::shape,
                 .pytorch = "nn.Parameter used as an operand (ViT's cls_token)",
                 .summary = "a parameter as a tensor (full shape, no batch: shape=1x1x768); reads no layer, allocates nothing; "
                            "its bytes are parameter bytes, its gradient is .grad",
                 .source = "torch/nn/parameter.py Parameter (a leaf that requires grad); "
                           "torch/csrc/autograd/functions/accumulate_grad.h (.grad steals or clones the incoming gradient)",
                 .shape = parameter_shape,
                 .memory = parameter_memory});
  out.push_back({.kind = "expand",
                 .attrs = {A("shape", VT::text, nullptr)},
                 .positional = {"shape"},
                 .family = OpFamily::shape,
                 .pytorch = "x.expand(N, *shape)",
                 .summary = "a view broadcasting size-1 dims (per-sample shape, -1 keeps a size); saves nothing, "
                            "backward sums the gradient to the input's shape (a new tensor)",
                 .source = "tools/autograd/derivatives.yaml expand: `self: at::sum_to(grad, self.sym_sizes())`; "
                           "aten/src/ATen/native/TensorShape.cpp expand",
                 .shape = expand_shape,
                 .memory = expand_memory});
  out.push_back({.kind = "mean",
                 .attrs = {A("dims", VT::text, nullptr), A("keepdim", VT::boolean, "false")},
                 .positional = {"dims"},
                 .family = OpFamily::shape,
                 .pytorch = "x.mean([2, 3])",
                 .summary = "mean over the given dims; saves nothing in PyTorch 2 (its input in 1.13)",
                 .source = derivs,
                 .shape = mean_shape,
                 .memory = mean_memory});
}

}  // namespace memfit::rules

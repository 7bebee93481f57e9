// Views and element-wise products of N-d tensors: reshape, permute, transpose, contiguous,
// identity, slice, mul, matmul. What they allocate depends on layout: a reshape is a view only when
// the strides allow one (computeStride), which is why TensorType carries a view's strides.
// Citations are to pytorch/pytorch; docs/pytorch-behaviour.md collects the evidence.
#include <charconv>
#include <numeric>

#include "rules.hpp"

namespace memfit::rules {

std::vector<i64> int_list(const Layer& l, const char* key, char sep, const char* example) {
  const std::string& t = attr(l, key).text;
  std::vector<i64> out;
  std::size_t start = 0;
  while (start <= t.size()) {
    std::size_t end = t.find(sep, start);
    std::string_view part(t.data() + start, (end == std::string::npos ? t.size() : end) - start);
    i64 v = 0;
    auto r = std::from_chars(part.data(), part.data() + part.size(), v);
    if (part.empty() || r.ec != std::errc() || r.ptr != part.data() + part.size())
      fail(l, std::string(key) + "='" + t + "' is not a list of integers", std::string("write e.g. ") + example);
    out.push_back(v);
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

std::string shape_text(const std::vector<i64>& s, std::size_t from) {
  std::string o;
  for (std::size_t k = from; k < s.size(); ++k) o += (k > from ? "x" : "") + std::to_string(s[k]);
  return o.empty() ? "(scalar)" : o;
}

std::vector<i64> broadcast_shape(const OpCall& c, const char* fix) {
  std::size_t rank = 0;
  for (const auto& t : c.in) rank = std::max(rank, t.shape.size());
  std::vector<i64> out(rank, 1);
  for (std::size_t j = 0; j < c.in.size(); ++j) {
    const auto& s = c.in[j].shape;
    for (std::size_t k = 0; k < s.size(); ++k) {
      i64& o = out[rank - s.size() + k];
      i64 d = s[k];
      if (d == o || d == 1) continue;
      if (o != 1)
        fail(c.layer,
             "inputs do not broadcast: '" + c.layer.inputs[0] + "' is " + shape_text(c.in[0].shape, 0) + " and '" +
                 c.layer.inputs[j] + "' is " + shape_text(s, 0) + " (N first; each dim must match or be 1)",
             fix);
      o = d;
    }
  }
  return out;
}

DType promoted_dtype(const OpCall& c) {
  DType out = c.in[0].dtype;
  for (std::size_t i = 1; i < c.in.size(); ++i)
    if (c.in[i].dtype != out) {
      bool both_half = (out == DType::f16 || out == DType::bf16) && (c.in[i].dtype == DType::f16 || c.in[i].dtype == DType::bf16);
      out = both_half || c.in[i].dtype == DType::f32 || out == DType::f32 ? DType::f32 : out;
    }
  return out;
}

namespace {

OpMemory view_memory_of(OpMemory::GradView gv, std::vector<int> perm = {}) {
  OpMemory m;
  m.output = OpMemory::Output::view;
  m.grad_in = {GradIn::view};
  m.grad_view = gv;
  m.permutation = std::move(perm);
  return m;
}

// ---- reshape: x.reshape(N, *shape) / x.view(...). The batch dimension is kept; one entry may be
// -1. A view when computeStride finds strides (TensorShape.cpp reshape_symint -> _reshape_alias),
// else `_unsafe_view(clone(x))`: a new contiguous storage. Backward: grad.reshape(input sizes).
std::vector<i64> reshape_target(const OpCall& c) {
  std::vector<i64> per = int_list(c.layer, "shape", 'x', "shape=4x16x7x7 (per sample, without N; one -1 allowed)");
  const auto& in = c.in[0].shape;
  i64 per_numel = 1;
  for (std::size_t k = 1; k < in.size(); ++k) per_numel = checked_mul(per_numel, in[k], "reshape's size");
  i64 known = 1;
  int infer = -1;
  for (std::size_t k = 0; k < per.size(); ++k) {
    if (per[k] == -1 && infer < 0) {
      infer = static_cast<int>(k);
      continue;
    }
    if (per[k] < 1)
      fail(c.layer, "reshape size " + std::to_string(per[k]) + " is not a positive size (one -1 may be inferred)",
           "give positive sizes, e.g. shape=2x58x28x28 or shape=-1x28x28");
    known = checked_mul(known, per[k], "reshape's size");
  }
  if (infer >= 0) {
    if (per_numel % known != 0)
      fail(c.layer, "cannot infer -1: " + std::to_string(per_numel) + " elements per sample do not divide by " + std::to_string(known),
           "check the shape against the input " + shape_text(in));
    per[static_cast<std::size_t>(infer)] = per_numel / known;
  } else if (known != per_numel) {
    fail(c.layer,
         "shape " + attr(c.layer, "shape").text + " has " + std::to_string(known) + " elements per sample, the input " +
             shape_text(in) + " has " + std::to_string(per_numel),
         "give a shape with the same number of elements (sizes per sample, without the batch)");
  }
  std::vector<i64> out{in[0]};
  out.insert(out.end(), per.begin(), per.end());
  return out;
}
OpShape reshape_shape(const OpCall& c) {
  std::vector<i64> target = reshape_target(c);
  TensorType out{target, c.in[0].dtype};
  std::vector<i64> st;
  if (view_strides(c.in[0].shape, c.in[0].layout(), target, st) && !c.in[0].is_contiguous()) out.strides = st;
  return {out, {}, c.layer.attrs};
}
OpMemory reshape_memory(const OpCall& c, const OpShape& s) {
  std::vector<i64> st;
  if (view_strides(c.in[0].shape, c.in[0].layout(), s.out.shape, st)) return view_memory_of(OpMemory::GradView::reshape);
  // the copy (CloneBackward hands the gradient on) then _unsafe_view of it (a view)
  OpMemory m;
  m.grad_in = {GradIn::view};
  return m;
}

// ---- permute / transpose: views with permuted strides. Backward permutes the gradient back
// (derivatives.yaml permute: `permute_backwards`; transpose.int: `grad.transpose(dim0, dim1)`).
std::vector<int> permute_dims(const OpCall& c) {
  std::vector<i64> dims = int_list(c.layer, "dims", ',', "dims=0,2,1,3 (every dimension, the batch is 0)");
  const i64 rank = static_cast<i64>(c.in[0].shape.size());
  if (static_cast<i64>(dims.size()) != rank)
    fail(c.layer, "dims lists " + std::to_string(dims.size()) + " dimensions, the input has " + std::to_string(rank),
         "list every dimension once, e.g. dims=0,2,1,3");
  std::vector<int> perm;
  std::vector<bool> seen(static_cast<std::size_t>(rank), false);
  for (i64 d : dims) {
    if (d < 0) d += rank;
    if (d < 0 || d >= rank || seen[static_cast<std::size_t>(d)])
      fail(c.layer, "dims='" + attr(c.layer, "dims").text + "' is not a permutation of 0.." + std::to_string(rank - 1),
           "list every dimension once");
    seen[static_cast<std::size_t>(d)] = true;
    perm.push_back(static_cast<int>(d));
  }
  return perm;
}
std::vector<int> transpose_dims(const OpCall& c) {
  const i64 rank = static_cast<i64>(c.in[0].shape.size());
  i64 a = attr_int(c.layer, "dim0"), b = attr_int(c.layer, "dim1");
  if (a < 0) a += rank;
  if (b < 0) b += rank;
  if (a < 0 || a >= rank || b < 0 || b >= rank)
    fail(c.layer, "dim0/dim1 out of range for a " + std::to_string(rank) + "-d input", "e.g. transpose 1 2");
  std::vector<int> perm(static_cast<std::size_t>(rank));
  std::iota(perm.begin(), perm.end(), 0);
  std::swap(perm[static_cast<std::size_t>(a)], perm[static_cast<std::size_t>(b)]);
  return perm;
}
OpShape permuted(const OpCall& c, const std::vector<int>& perm) {
  TensorType out{{}, c.in[0].dtype};
  std::vector<i64> st = c.in[0].layout();
  for (int d : perm) {
    out.shape.push_back(c.in[0].shape[static_cast<std::size_t>(d)]);
    out.strides.push_back(st[static_cast<std::size_t>(d)]);
  }
  if (out.is_contiguous()) out.strides.clear();
  return {out, {}, c.layer.attrs};
}
OpShape permute_shape(const OpCall& c) { return permuted(c, permute_dims(c)); }
OpMemory permute_memory(const OpCall& c, const OpShape&) { return view_memory_of(OpMemory::GradView::permute, permute_dims(c)); }
OpShape transpose_shape(const OpCall& c) { return permuted(c, transpose_dims(c)); }
OpMemory transpose_memory(const OpCall& c, const OpShape&) {
  return view_memory_of(OpMemory::GradView::permute, transpose_dims(c));
}

// ---- contiguous: the tensor itself when already contiguous, else clone() into a new storage;
// CloneBackward hands the gradient on (derivatives.yaml clone: `self: grad`).
OpShape contiguous_shape(const OpCall& c) { return {with_shape(c.in[0], c.in[0].shape), {}, c.layer.attrs}; }
OpMemory contiguous_memory(const OpCall& c, const OpShape&) {
  OpMemory m;
  if (c.in[0].is_contiguous()) m.output = OpMemory::Output::view;
  m.grad_in = {GradIn::pass};
  return m;
}

// ---- identity: nn.Identity returns its input (the same tensor).
OpMemory identity_memory(const OpCall&, const OpShape&) {
  OpMemory m;
  m.output = OpMemory::Output::view;
  m.grad_in = {GradIn::pass};
  return m;
}

// ---- slice: x[..., start:end:step] along dim, a view (strides times step). Backward:
// slice_backward makes zeros of the input's size and copies the gradient in (derivatives.yaml
// slice.Tensor): a new tensor.
OpShape slice_shape(const OpCall& c) {
  const auto& in = c.in[0].shape;
  const i64 rank = static_cast<i64>(in.size());
  i64 dim = attr_int(c.layer, "dim");
  if (dim < 0) dim += rank;
  if (dim <= 0 || dim >= rank) fail(c.layer, "slice dim must be a non-batch dimension", "e.g. slice dim=1 start=0 end=2");
  const i64 size = in[static_cast<std::size_t>(dim)];
  i64 step = attr_int(c.layer, "step");
  if (step < 1) fail(c.layer, "slice step must be positive (PyTorch refuses others)", "e.g. step=1");
  // Python slice clamping (TensorShape.cpp slice): negative from the end, then into [0, size].
  auto clamp = [&](i64 v) {
    if (v < 0) v = v < -size ? 0 : v + size;
    return std::min(v, size);
  };
  i64 start = clamp(attr_int(c.layer, "start")), end = clamp(attr_int(c.layer, "end"));
  i64 len = end > start ? (end - start + step - 1) / step : 0;
  if (len < 1) fail(c.layer, "the slice is empty", "give start < end within the dimension's " + std::to_string(size));
  TensorType out{in, c.in[0].dtype};
  out.shape[static_cast<std::size_t>(dim)] = len;
  std::vector<i64> st = c.in[0].layout();
  st[static_cast<std::size_t>(dim)] = checked_mul(st[static_cast<std::size_t>(dim)], step, "a slice's stride");
  out.strides = st;
  if (out.is_contiguous()) out.strides.clear();
  return {out, {}, c.layer.attrs};
}
OpMemory slice_memory(const OpCall&, const OpShape&) {
  OpMemory m;
  m.output = OpMemory::Output::view;
  m.grad_in = {GradIn::fresh};
  return m;
}

// ---- mul: a * b with broadcasting. derivatives.yaml mul.Tensor: self's gradient needs `other`,
// other's needs `self`, so each is saved only when the other input needs grad. Each gradient is
// grad * other of the output's size; the engine sums it to a broadcast input's shape
// (validate_outputs: at::sum_to), a second, smaller tensor.
OpShape mul_shape(const OpCall& c) {
  // (No in-place form: mul_ would have to save a copy of self for other's gradient.)
  TensorType out{broadcast_shape(c, "make the shapes match, or give the scale size-1 dims (e.g. N x C x 1 x 1)"), promoted_dtype(c)};
  if (out.shape == c.in[0].shape) {
    out.strides = c.in[0].strides;  // TensorIterator keeps input 0's layout
  }
  return {out, {}, c.layer.attrs};
}
OpMemory mul_memory(const OpCall& c, const OpShape& s) {
  OpMemory m;
  m.saved = {{.ref = {TensorRef::input, 1}, .role = "other", .when = {SaveIf::input_needs_grad, 0}},
             {.ref = {TensorRef::input, 0}, .role = "self", .when = {SaveIf::input_needs_grad, 1}}};
  m.grad_in.assign(c.in.size(), GradIn::fresh);
  for (std::size_t j = 0; j < c.in.size(); ++j)
    if (c.in[j].shape != s.out.shape && c.in_requires_grad[j]) m.bwd_temps.push_back(with_shape(s.out, s.out.shape));
  return m;
}

// ---- matmul of two activations (attention's q @ k^T, probs @ v). torch.matmul folds the batch
// dims with reshape and calls bmm (LinearAlgebra.cpp _matmul_impl); bmm saves the folded inputs
// (self if mat2 needs grad, mat2 if self needs grad): views of the inputs when their strides allow
// (a contiguous tensor, k.transpose(-2, -1)), copies otherwise. Backward: one new gradient per input.
bool foldable(const TensorType& t) {
  if (t.shape.size() <= 3) return true;
  std::vector<i64> folded{1};
  for (std::size_t k = 0; k + 2 < t.shape.size(); ++k) folded[0] = checked_mul(folded[0], t.shape[k], "matmul batch");
  folded.push_back(t.shape[t.shape.size() - 2]);
  folded.push_back(t.shape.back());
  std::vector<i64> st;
  return view_strides(t.shape, t.layout(), folded, st);
}
OpShape matmul_shape(const OpCall& c) {
  const auto& a = c.in[0].shape;
  const auto& b = c.in[1].shape;
  if (a.size() < 2 || b.size() < 2)
    fail(c.layer, "matmul needs two inputs of at least 2 dims", "for a weight, use linear");
  if (a.back() != b[b.size() - 2])
    fail(c.layer, "matmul sizes do not match: '" + c.layer.inputs[0] + "' is " + shape_text(a, 0) + ", '" + c.layer.inputs[1] +
                      "' is " + shape_text(b, 0),
         "the last dim of the first input must equal the second-to-last of the second");
  std::vector<i64> batch_a(a.begin(), a.end() - 2), batch_b(b.begin(), b.end() - 2);
  if (batch_a != batch_b)
    fail(c.layer, "matmul with broadcast batch dims (" + shape_text(a, 0) + " @ " + shape_text(b, 0) + ") is not modelled",
         "expand both inputs to the same batch dims first");
  std::vector<i64> out = batch_a;
  out.push_back(a[a.size() - 2]);
  out.push_back(b.back());
  return {TensorType{out, promoted_dtype(c)}, {}, c.layer.attrs};
}
OpMemory matmul_memory(const OpCall& c, const OpShape&) {
  OpMemory m;
  for (int j = 0; j < 2; ++j) {
    const int other = 1 - j;
    const char* role = j == 0 ? "self (folded)" : "mat2 (folded)";
    if (foldable(c.in[static_cast<std::size_t>(j)])) {
      m.saved.push_back({.ref = {TensorRef::input, j}, .role = role, .when = {SaveIf::input_needs_grad, other}});
    } else if (c.in_requires_grad[static_cast<std::size_t>(other)]) {
      m.extras.push_back({j == 0 ? "self (contiguous copy)" : "mat2 (contiguous copy)",
                          with_shape(c.in[static_cast<std::size_t>(j)], c.in[static_cast<std::size_t>(j)].shape)});
      m.saved.push_back({.ref = {TensorRef::extra, static_cast<int>(m.extras.size()) - 1}, .role = role});
    }
  }
  m.grad_in = {GradIn::fresh, GradIn::fresh};
  m.fwd_workspaces = {Workspace::cublas};
  m.bwd_workspaces = {Workspace::cublas};
  return m;
}

}  // namespace

void tensor_rules(std::vector<OpRule>& out) {
  const char* derivs = "tools/autograd/derivatives.yaml";
  out.push_back({.kind = "reshape",
                 .aliases = {"view"},
                 .attrs = {A("shape", VT::text, nullptr)},
                 .positional = {"shape"},
                 .family = OpFamily::shape,
                 .pytorch = "x.reshape(N, *shape) / x.view",
                 .summary = "per-sample shape (N kept, one -1); a view when the strides allow, else a copy",
                 .source = "aten/src/ATen/native/TensorShape.cpp reshape, aten/src/ATen/TensorUtils.cpp computeStride",
                 .shape = reshape_shape,
                 .memory = reshape_memory});
  out.push_back({.kind = "permute",
                 .attrs = {A("dims", VT::text, nullptr)},
                 .positional = {"dims"},
                 .family = OpFamily::shape,
                 .pytorch = "x.permute(*dims)",
                 .summary = "a view with permuted strides (dims: every dimension, the batch is 0)",
                 .source = derivs,
                 .shape = permute_shape,
                 .memory = permute_memory});
  out.push_back({.kind = "transpose",
                 .attrs = {A("dim0", VT::integer, nullptr), A("dim1", VT::integer, nullptr)},
                 .positional = {"dim0", "dim1"},
                 .family = OpFamily::shape,
                 .pytorch = "torch.transpose(x, dim0, dim1)",
                 .summary = "a view with two dimensions swapped",
                 .source = derivs,
                 .shape = transpose_shape,
                 .memory = transpose_memory});
  out.push_back({.kind = "contiguous",
                 .family = OpFamily::shape,
                 .pytorch = "x.contiguous()",
                 .summary = "a copy when the input is not contiguous (after transpose/permute), else the input itself",
                 .source = derivs,
                 .shape = contiguous_shape,
                 .memory = contiguous_memory});
  out.push_back({.kind = "identity",
                 .family = OpFamily::shape,
                 .pytorch = "nn.Identity",
                 .summary = "its input itself: no memory",
                 .source = "torch/nn/modules/linear.py Identity.forward",
                 .shape = same_shape,
                 .memory = identity_memory});
  out.push_back({.kind = "slice",
                 .attrs = {A("dim", VT::integer, "1"), A("start", VT::integer, "0"), A("end", VT::integer, nullptr),
                           A("step", VT::integer, "1")},
                 .family = OpFamily::shape,
                 .pytorch = "x[:, start:end:step] (along dim)",
                 .summary = "a view; backward makes a zero gradient of the input's size",
                 .source = derivs,
                 .shape = slice_shape,
                 .memory = slice_memory});
  out.push_back({.kind = "mul",
                 .min_inputs = 2,
                 .max_inputs = 2,
                 .family = OpFamily::shape,
                 .pytorch = "a * b (broadcasting; squeeze-excitation's x * scale)",
                 .summary = "element-wise product; saves each input when the other needs grad",
                 .source = derivs,
                 .shape = mul_shape,
                 .memory = mul_memory});
  out.push_back({.kind = "matmul",
                 .attrs = {},
                 .min_inputs = 2,
                 .max_inputs = 2,
                 .autocast = Autocast::lower,
                 .family = OpFamily::conv_pool,
                 .pytorch = "torch.matmul(a, b) of two activations",
                 .summary = "batched matmul (bmm); saves both inputs (copies of those whose strides do not fold)",
                 .source = "aten/src/ATen/native/LinearAlgebra.cpp _matmul_impl; derivatives.yaml bmm",
                 .shape = matmul_shape,
                 .memory = matmul_memory});
}

}  // namespace memfit::rules

// The kinds LoRA and QLoRA fine-tuning add to a model (core/src/pipeline/finetune.cpp inserts them,
// with transformer.cpp's `scale` for the adapter's `* scaling`; docs/fine-tuning.md): `to` (PEFT's
// input and result dtype casts) and `linear4bit` (bitsandbytes' Linear4bit: a frozen NF4 weight
// dequantized per call).
// Citations: pytorch/pytorch tools/autograd/derivatives.yaml; huggingface/peft src/peft/tuners/lora/
// layer.py; bitsandbytes-foundation/bitsandbytes bitsandbytes/{functional.py, nn/modules.py,
// autograd/_functions.py} (commit 012c660).
#include "rules.hpp"

namespace memfit::rules {

namespace {

// ---- to: x.to(dtype). Tensor.to returns self when the dtype already matches (aten/src/ATen/native/
// TensorConversions.cpp to_impl: `if (to_will_alias(...)) return self`), else _to_copy, whose backward
// (derivatives.yaml _to_copy: `_to_copy_backward(grad, self.options())`) casts the gradient back: a
// new tensor. Nothing is saved. PEFT casts a LoRA layer's input to the adapter's dtype and the sum
// back to the base result's dtype this way (tuners_utils.py _cast_input_dtype, lora/layer.py
// Linear.forward `result.to(torch_result_dtype)`).
DType to_dtype(const OpCall& c, const char* key) {
  const Layer& l = c.layer;
  DType d = DType::f32;
  // `compute`: .to(query.dtype) in HF's eager attention, the dtype linear layers produce in this run
  if (attr(l, key).text == "compute") return c.compute_dtype;
  if (!parse_dtype_name(attr(l, key).text, d))
    fail(l, std::string(key) + "='" + attr(l, key).text + "' is not a floating dtype memfit knows",
         std::string("write ") + key + "=float32, float16, bfloat16 or compute");
  return d;
}
OpShape to_shape(const OpCall& c) {
  OpShape s = same_shape(c);
  s.out.dtype = to_dtype(c, "dtype");
  s.out.strides = c.in[0].strides;  // preserve_format keeps a dense layout
  return s;
}
OpMemory to_memory(const OpCall& c, const OpShape& s) {
  OpMemory m;
  if (c.in[0].dtype == s.out.dtype) {
    m.output = OpMemory::Output::view;  // the input itself
    m.grad_in = {GradIn::pass};
  } else {
    m.grad_in = {GradIn::fresh};
  }
  return m;
}

// ---- linear4bit: bitsandbytes nn/modules.py Linear4bit.forward:
//   x = x.to(self.compute_dtype); bias = self.bias.to(self.compute_dtype)
//   return bnb.matmul_4bit(x, self.weight.t(), bias=bias, quant_state=...).to(inp_dtype)
// MatMul4Bit.forward (autograd/_functions.py): F.linear(A, F.dequantize_4bit(B, quant_state).to(A.dtype).t(), bias)
// saves `ctx.tensors = (None, B)`: only the packed weight (a parameter), never the input. Its backward
// dequantizes again: grad_A = grad_output @ dequantize_4bit(B).t(). The weight is stored as
// functional.py quantize_4bit lays it out (see kNf4BlockSize ...): packed uint8 [(n + 1) / 2, 1]
// (two 4-bit codes per byte), one absmax per 64 weights, and with compress_statistics (double
// quantization) that absmax quantized to uint8 by quantize_blockwise(absmax, blocksize=256), which
// keeps a float32 absmax per 256 of them, plus the mean subtracted first (`offset`, a 0-dim float32).
// The NF4/FP4 code book (get_4bit_type) is 16 float32 values per weight.
constexpr i64 kNf4BlockSize = 64;         // Params4bit blocksize=64 (nn/modules.py), quantize_4bit default
constexpr i64 kNestedBlockSize = 256;     // quantize_4bit: quantize_blockwise(absmax, blocksize=256)
constexpr i64 kNibblesPerByte = 2;        // quantize_4bit: mod = dtype2bytes[uint8] * 2
constexpr i64 kFourBitCodeEntries = 16;   // get_4bit_type: 2^4 values of the NF4 (or FP4) data type

i64 ceil_div(i64 a, i64 b) { return a / b + (a % b != 0 ? 1 : 0); }

OpShape linear4bit_shape(const OpCall& c) {
  if (c.in[0].shape.size() < 2) need_rank(c, 2, "N,features", "add a flatten layer before it");
  const i64 out = attr_int(c.layer, "out_features");
  if (out <= 0) fail(c.layer, "out_features must be positive", "e.g. linear4bit out_features=4096");
  (void)to_dtype(c, "compute");
  const std::string& qt = attr(c.layer, "quant_type").text;
  if (qt != "nf4" && qt != "fp4") fail(c.layer, "quant_type must be nf4 or fp4, not '" + qt + "'", "write quant_type=nf4");
  std::vector<i64> shape = c.in[0].shape;
  const i64 in_features = shape.back();
  shape.back() = out;
  OpShape s{with_shape(c.in[0], shape), {}, c.layer.attrs};  // `.to(inp_dtype)`: the input's dtype
  const i64 n = checked_mul(out, in_features, "linear4bit's weight elements");
  const i64 blocks = ceil_div(n, kNf4BlockSize);
  // Params4bit is a Parameter with requires_grad=False (uint8 cannot require grad).
  s.params.push_back({"weight (packed 4-bit)", {(n + 1) / kNibblesPerByte, 1}, DType::u8});
  s.params.back().logical_numel = n;  // counted as the out x in weights it holds, not the packed bytes
  // Linear4bit.forward: `self.bias.data = self.bias.data.to(x.dtype)` on the first call.
  if (attr_bool(c.layer, "bias")) s.params.push_back({"bias", {out}, c.in[0].dtype});
  const bool nested = attr_bool(c.layer, "double_quant");
  s.params.push_back({"quant_state.absmax", {blocks}, nested ? DType::u8 : DType::f32, true});
  if (nested) {
    s.params.push_back({"quant_state.state2.absmax", {ceil_div(blocks, kNestedBlockSize)}, DType::f32, true});
    s.params.push_back({"quant_state.offset", {}, DType::f32, true});
  }
  s.params.push_back({"quant_state.code", {kFourBitCodeEntries}, DType::f32, true});
  return s;
}

OpMemory linear4bit_memory(const OpCall& c, const OpShape& s) {
  OpMemory m;
  const DType compute = to_dtype(c, "compute");
  const TensorType& in = c.in[0];
  const i64 out_features = s.out.shape.back();
  const TensorType weight{{out_features, in.shape.back()}, compute};
  const bool nested = attr_bool(c.layer, "double_quant");
  // forward: x.to(compute) (held by the local until return), the dequantized absmax (nested:
  // dequantize_blockwise(absmax, state2) + offset, float32), the dequantized weight; the result in the
  // compute dtype before `.to(inp_dtype)` when they differ. The planner holds them all for the call,
  // so the weight's copy is counted alive through the final cast (an over-count of at most one
  // [out, in] weight while the output is cast; docs/fine-tuning.md).
  if (in.dtype != compute) m.fwd_temps.push_back({in.shape, compute});
  if (nested) m.fwd_temps.push_back({{ceil_div(weight.numel(), kNf4BlockSize)}, DType::f32});
  m.fwd_temps.push_back(weight);
  if (in.dtype != compute) m.fwd_temps.push_back({s.out.shape, compute});
  // ctx.tensors = (None, B) when any input needs grad: the packed weight, a parameter (listed, not counted)
  m.saved = {{.ref = {TensorRef::param, 0}, .role = "B (packed 4-bit weight)", .when = {SaveIf::input_needs_grad, 0}}};
  m.grad_in = {GradIn::fresh};  // grad_A, cast back to the input's dtype by _to_copy's backward
  if (in.dtype != compute) m.bwd_temps.push_back({s.out.shape, compute});  // the incoming gradient, cast
  if (nested) m.bwd_temps.push_back({{ceil_div(weight.numel(), kNf4BlockSize)}, DType::f32});
  m.bwd_temps.push_back(weight);
  if (in.dtype != compute) m.bwd_temps.push_back({in.shape, compute});  // grad_A before the cast back
  m.fwd_workspaces = {Workspace::cublas};
  if (attr_bool(c.layer, "bias")) m.fwd_workspaces.push_back(Workspace::cublaslt);
  m.bwd_workspaces = {Workspace::cublas};
  return m;
}

}  // namespace

void peft_rules(std::vector<OpRule>& out) {
  const char* derivs = "tools/autograd/derivatives.yaml";
  out.push_back({.kind = "to",
                 .attrs = {A("dtype", VT::text, nullptr)},
                 .positional = {"dtype"},
                 .family = OpFamily::shape,
                 .pytorch = "x.to(dtype)",
                 .summary = "a dtype cast: the input itself when the dtype matches, else a copy (the gradient is cast back)",
                 .source = derivs,
                 .shape = to_shape,
                 .memory = to_memory});
  out.push_back({.kind = "linear4bit",
                 .attrs = {A("out_features", VT::integer, nullptr), A("bias", VT::boolean, "true"),
                           A("compute", VT::text, "bfloat16"), A("double_quant", VT::boolean, "true"),
                           A("quant_type", VT::text, "nf4")},
                 .positional = {"out_features"},
                 .family = OpFamily::conv_pool,
                 .pytorch = "bitsandbytes nn.Linear4bit (QLoRA's frozen NF4 base weight)",
                 .summary = "4-bit linear: packed uint8 weight + block absmax; dequantizes the weight to the compute "
                            "dtype in forward and again in backward; saves no activation",
                 .source = "bitsandbytes nn/modules.py Linear4bit, autograd/_functions.py MatMul4Bit, functional.py quantize_4bit",
                 .shape = linear4bit_shape,
                 .memory = linear4bit_memory});
}

}  // namespace memfit::rules

// Transformer layer kinds: token and position embeddings, RMSNorm as Hugging Face writes it, rotary
// position embeddings, grouped-query attention's repeat_kv, scaled_dot_product_attention with the
// backend PyTorch picks, GPT-2's Conv1D and gelu_new, attention masks, and the language-model
// losses. Citations are to pytorch/pytorch unless a file names huggingface/transformers;
// docs/pytorch-behaviour.md section 8 collects the evidence and what was measured.
#include "rules.hpp"

namespace memfit::rules {

namespace {

const char* derivs = "tools/autograd/derivatives.yaml";


std::vector<i64> with_last(std::vector<i64> s, i64 last) {
  s.back() = last;
  return s;
}

void need_rank_of(const OpCall& c, std::size_t j, std::size_t rank, const char* layout, const char* fix) {
  const auto& s = c.in[j].shape;
  if (s.size() != rank)
    fail(c.layer,
         "'" + c.layer.inputs[j] + "' is " + shape_text(s, 0) + " but " + std::to_string(rank) + "-d (" + layout +
             ") is expected",
         fix);
}

void need_float(const OpCall& c, std::size_t j) {
  if (c.in[j].dtype == DType::i64 || c.in[j].dtype == DType::b8)
    fail(c.layer, "'" + c.layer.inputs[j] + "' is " + dtype_name(c.in[j].dtype) + ", a floating tensor is expected",
         "feed it hidden states, e.g. an embedding's output");
}

// ---- embedding: F.embedding = weight.index_select(0, indices.reshape(-1)).view(..., D)
// (aten/src/ATen/native/Embedding.cpp embedding). derivatives.yaml `embedding`: only the weight's
// gradient, embedding_backward(grad, indices, num_weights, padding_idx, ...), so autograd keeps the
// indices (the loop's token ids: no new storage) when the weight trains. Backward allocates the
// dense [V, D] weight gradient (embedding_dense_backward). positions=true: GPT-2's wpe / BERT's
// position embeddings, whose indices are torch.arange(T) made in the forward
// (transformers models/gpt2/modeling_gpt2.py GPT2Model.forward: position_ids = arange(...).unsqueeze(0)).
OpShape embedding_shape(const OpCall& c) {
  if (c.in[0].dtype != DType::i64)
    fail(c.layer, "embedding takes int64 token ids, but '" + c.layer.inputs[0] + "' is " + dtype_name(c.in[0].dtype),
         "give the model 'input T dtype=int64' (the token ids) and feed it to the embedding");
  if (c.in[0].shape.size() != 2)
    fail(c.layer, "embedding takes token ids [N, T], but '" + c.layer.inputs[0] + "' is " + shape_text(c.in[0].shape, 0),
         "write the input as 'input T dtype=int64'");
  const i64 v = attr_int(c.layer, "num_embeddings"), d = attr_int(c.layer, "embedding_dim");
  if (v < 1 || d < 1) fail(c.layer, "num_embeddings and embedding_dim must be positive", "e.g. num_embeddings=32000 embedding_dim=4096");
  const i64 pad = attr_int(c.layer, "padding_idx");
  if (pad != -1 && (pad < 0 || pad >= v))
    fail(c.layer, "padding_idx=" + std::to_string(pad) + " is not a row of the " + std::to_string(v) + "-row table",
         "give a token id from 0 to num_embeddings-1, or -1 for none");
  const i64 t = c.in[0].shape[1];
  std::vector<i64> out = attr_bool(c.layer, "positions") ? std::vector<i64>{1, t, d} : std::vector<i64>{c.in[0].shape[0], t, d};
  OpShape s{TensorType{out, DType::f32}, {}, c.layer.attrs};
  s.params.push_back({"weight", {v, d}});
  return s;
}
// aten/src/ATen/native/cuda/Embedding.cu embedding_dense_backward_cuda: up to 3,072 indices (and no
// scale_grad_by_freq) one kernel writes the [V, D] gradient directly; above, the indices are radix
// sorted first: sorted_indices, orig_indices and the arange they are sorted with, int64 [N*T] each
// (cub's own temporary storage and the segment buffers of embedding_backward_cuda_kernel are
// smaller and not modelled).
constexpr i64 kEmbeddingDirectMaxIndices = 3072;
constexpr i64 kEmbeddingSortTemps = 3;
OpMemory embedding_memory(const OpCall& c, const OpShape&) {
  OpMemory m;
  const i64 n_idx = attr_bool(c.layer, "positions") ? c.in[0].shape[1] : checked_mul(c.in[0].shape[0], c.in[0].shape[1], "indices");
  if (n_idx > kEmbeddingDirectMaxIndices)
    for (i64 k = 0; k < kEmbeddingSortTemps; ++k) m.bwd_temps.push_back({{n_idx}, DType::i64});
  if (attr_bool(c.layer, "positions")) {
    m.extras = {{"position_ids (arange(T))", {{1, c.in[0].shape[1]}, DType::i64}}};
    m.saved = {{.ref = {TensorRef::extra, 0}, .role = "indices (position ids)", .when = {SaveIf::param_needs_grad, 0}}};
  } else {
    m.saved = {{.ref = {TensorRef::input, 0}, .role = "indices", .when = {SaveIf::param_needs_grad, 0}}};
  }
  m.grad_in = {GradIn::fresh};
  return m;
}

// ---- rms_norm. impl=hf: transformers' LlamaRMSNorm.forward (models/llama/modeling_llama.py):
//   x = hidden_states.to(float32); variance = x.pow(2).mean(-1, keepdim=True)
//   x = x * torch.rsqrt(variance + eps); return weight * x.to(input_dtype)
// What autograd keeps (derivatives.yaml): pow.Tensor_Scalar saves self (x); mean.dim saves nothing
// in 2.x but its self (x^2) in torch 1.13 (measured, tests/reference/cpu_saved_transformers.json);
// rsqrt saves its result [*, 1]; x * r saves both (each needs the other); weight * h saves h when
// the weight trains and the weight when h needs grad. A half input adds the float32 copy of x (what
// pow saves) and the half copy of h (what the weight's mul saves).
// impl=fused: aten::_fused_rms_norm (native_functions.yaml; returns (output, rstd), its backward
// _fused_rms_norm_backward(grad, input, normalized_shape, rstd, weight, mask): input, rstd float32
// [*, 1] and the weight kept; torch 2.9+ by the reports read): not measured, docs section 8b.
// Inside the composite's backward at most one [*, D] float32 tensor is alive besides the incoming
// gradient and the result (weight * h's grad_h while grad * h is summed to the weight's shape;
// measured per autograd node, cpu_live_transformers.json llama_tiny).
constexpr i64 kRmsNormBackwardTemps = 1;
OpShape rms_norm_shape(const OpCall& c) {
  need_float(c, 0);
  const i64 d = attr_int(c.layer, "normalized_shape");
  if (c.in[0].shape.size() < 2 || c.in[0].shape.back() != d)
    fail(c.layer, "normalized_shape=" + std::to_string(d) + " must equal the input's last dim (" +
                      std::to_string(c.in[0].shape.back()) + ")",
         "give normalized_shape=" + std::to_string(c.in[0].shape.back()));
  const std::string& impl = attr(c.layer, "impl").text;
  if (impl != "hf" && impl != "fused") fail(c.layer, "impl must be hf or fused, not '" + impl + "'", "write impl=hf (LlamaRMSNorm)");
  // weight (float32) * h.to(input dtype): float32 unless the input is float32 already
  OpShape s{TensorType{c.in[0].shape, DType::f32}, {}, c.layer.attrs};
  s.params.push_back({"weight", {d}});
  return s;
}
OpMemory rms_norm_memory(const OpCall& c, const OpShape& s) {
  const TensorType& x = c.in[0];
  std::vector<i64> stat = with_last(x.shape, 1);
  OpMemory m;
  m.grad_in = {GradIn::fresh};
  if (attr(c.layer, "impl").text == "fused") {
    m.extras = {{"rstd", {stat, DType::f32}}};
    m.saved = {{.ref = {TensorRef::input, 0}, .role = "input"},
               {.ref = {TensorRef::extra, 0}, .role = "rstd"},
               {.ref = {TensorRef::param, 0}, .role = "weight"}};
    return m;
  }
  const bool half = is_half(x.dtype);
  const SaveIf x_grad{SaveIf::input_needs_grad, 0};
  TensorType full{x.shape, DType::f32};
  int xi = -1;
  if (half) {
    m.extras.push_back({"x.to(float32)", full});
    xi = 0;
  }
  m.extras.push_back({"x.pow(2)", full});
  const int sq = static_cast<int>(m.extras.size()) - 1;
  m.extras.push_back({"rsqrt(variance + eps)", {stat, DType::f32}});
  const int rs = sq + 1;
  if (half) {
    m.fwd_temps = {full};  // x * rsqrt in float32, before .to(input_dtype)
    m.extras.push_back({"h.to(input dtype)", x});
  } else {
    m.extras.push_back({"h = x * rsqrt", full});
  }
  const int h = rs + 1;
  SavedSpec self = xi >= 0 ? SavedSpec{.ref = {TensorRef::extra, xi}, .role = "self (pow; x * rsqrt)", .when = x_grad}
                           : SavedSpec{.ref = {TensorRef::input, 0}, .role = "self (pow; x * rsqrt)", .when = x_grad};
  m.saved.push_back(self);
  if (c.rules == TorchRules::v1_13)
    m.saved.push_back({.ref = {TensorRef::extra, sq}, .role = "self (mean.dim, torch 1.13)", .when = x_grad});
  m.saved.push_back({.ref = {TensorRef::extra, rs}, .role = "result (rsqrt) / other (x * rsqrt)", .when = x_grad});
  m.saved.push_back({.ref = {TensorRef::extra, h}, .role = "other (weight * h)", .when = {SaveIf::param_needs_grad, 0}});
  m.saved.push_back({.ref = {TensorRef::param, 0}, .role = "self (weight * h)", .when = x_grad});
  for (i64 k = 0; k < kRmsNormBackwardTemps; ++k) m.bwd_temps.push_back(full);
  (void)s;
  return m;
}

// ---- rotary_embedding: transformers' LlamaRotaryEmbedding.forward(x, position_ids), once per
// forward in LlamaModel: freqs = (inv_freq[None, :, None] @ position_ids[:, None, :].float())
// .transpose(1, 2); emb = cat(freqs, freqs); cos = emb.cos() * scaling; sin likewise; returned in
// x's dtype: two outputs [1, T, head_dim] (rope:0 cos, rope:1 sin) that need no grad. inv_freq is
// a buffer (register_buffer(..., persistent=False)) of head_dim / 2 float32.
OpShape rotary_embedding_shape(const OpCall& c) {
  if (c.in[0].shape.size() < 2) fail(c.layer, "rotary_embedding needs an input [N, T, ...] to read T from", "feed it the hidden states or the token ids");
  const i64 hd = attr_int(c.layer, "head_dim");
  if (hd < 2 || hd % 2 != 0) fail(c.layer, "head_dim=" + std::to_string(hd) + " must be even and positive", "give hidden_size / num_attention_heads, e.g. head_dim=128");
  if (!(attr_real(c.layer, "theta") > 0.0)) fail(c.layer, "theta must be positive", "give rope_theta, e.g. theta=10000");
  const i64 t = c.in[0].shape[1];
  const DType dt = c.in[0].dtype == DType::i64 ? DType::f32 : c.in[0].dtype;
  OpShape s{TensorType{{1, t, hd}, dt}, {}, c.layer.attrs, {TensorType{{1, t, hd}, dt}}};
  s.params.push_back({.name = "inv_freq", .shape = {hd / 2}, .is_buffer = true, .trainable = false});
  return s;
}
OpMemory rotary_embedding_memory(const OpCall& c, const OpShape& s) {
  const i64 t = c.in[0].shape[1], hd = s.out.shape.back();
  OpMemory m;
  // position ids (arange), their float copy, the matmul's freqs, emb = cat(freqs, freqs), emb.cos()
  // and emb.sin() before the scaling multiply: all freed within the call or tiny.
  m.fwd_temps = {{{1, t}, DType::i64}, {{1, 1, t}, DType::f32}, {{1, hd / 2, t}, DType::f32}, {{1, t, hd}, DType::f32}};
  m.grad_in = {GradIn::fresh};
  return m;
}

// ---- rotary: transformers' apply_rotary_pos_emb for one of q / k: (x * cos) + (rotate_half(x) * sin),
// rotate_half(x) = cat((-x[..., d/2:], x[..., :d/2]), -1). derivatives.yaml mul.Tensor saves `other`
// when self needs grad: cos and sin (which need none; x is not kept). The output keeps x's layout
// (TensorIterator follows its first input: a transposed q stays transposed). Forward holds x*cos and
// rotate_half(x)*sin with the output; backward: grad*sin, its negated half, the slice gradients
// (zeros of x's size, derivatives.yaml slice.Tensor) before they are summed into x's gradient.
// grad * sin and a slice gradient (zeros of x's size) alive with x's gradient (measured per node:
// 3 x-sized tensors above the incoming gradient, cpu_live_transformers.json llama_tiny).
constexpr i64 kRotaryBackwardTemps = 2;
OpShape rotary_shape(const OpCall& c) {
  need_float(c, 0);
  const auto& x = c.in[0].shape;
  if (x.size() != 4) fail(c.layer, "rotary takes q or k as [N, heads, T, head_dim], not " + shape_text(x, 0), "transpose the heads first: reshape TxHxd, transpose 1 2");
  for (std::size_t j = 1; j < 3; ++j) {
    const auto& t = c.in[j].shape;
    if (t.size() != 3 || t[1] != x[2] || t.back() != x.back())
      fail(c.layer, "'" + c.layer.inputs[j] + "' is " + shape_text(t, 0) + ", expected [1, " + std::to_string(x[2]) + ", " + std::to_string(x.back()) + "]",
           "give the rotary_embedding's outputs: from=x,rope:0,rope:1 with head_dim = the last dim of x");
  }
  TensorType out{x, promoted_dtype(c)};
  out.strides = c.in[0].strides;
  return {out, {}, c.layer.attrs};
}
OpMemory rotary_memory(const OpCall& c, const OpShape& s) {
  OpMemory m;
  TensorType full{s.out.shape, s.out.dtype};
  m.fwd_temps = {full, full};  // x * cos, rotate_half(x) * sin
  m.saved = {{.ref = {TensorRef::input, 1}, .role = "other (cos)", .when = {SaveIf::input_needs_grad, 0}},
             {.ref = {TensorRef::input, 2}, .role = "other (sin)", .when = {SaveIf::input_needs_grad, 0}}};
  m.grad_in = {GradIn::fresh, GradIn::fresh, GradIn::fresh};
  for (i64 k = 0; k < kRotaryBackwardTemps; ++k) m.bwd_temps.push_back(full);
  (void)c;
  return m;
}

// ---- repeat_kv: transformers' repeat_kv (models/llama/modeling_llama.py): n_rep == 1 returns the
// tensor; else x[:, :, None].expand(N, Hkv, n_rep, T, d).reshape(N, Hkv * n_rep, T, d), a copy
// (an expanded tensor has no view of that shape). Backward: ExpandBackward sums the gradient back
// to [N, Hkv, 1, T, d] (a new tensor of the input's size). Nothing is saved.
OpShape repeat_kv_shape(const OpCall& c) {
  need_float(c, 0);
  need_rank_of(c, 0, 4, "N, kv heads, T, head_dim", "transpose the heads first");
  const i64 n = attr_int(c.layer, "n_rep");
  if (n < 1) fail(c.layer, "n_rep must be at least 1", "give num_attention_heads / num_key_value_heads");
  if (n == 1) return same_shape(c);
  std::vector<i64> out = c.in[0].shape;
  out[1] = checked_mul(out[1], n, "repeat_kv heads");
  return {with_shape(c.in[0], out), {}, c.layer.attrs};
}
OpMemory repeat_kv_memory(const OpCall& c, const OpShape&) {
  OpMemory m;
  if (attr_int(c.layer, "n_rep") == 1) {
    m.output = OpMemory::Output::view;
    m.grad_in = {GradIn::pass};
    return m;
  }
  m.grad_in = {GradIn::fresh};
  return m;
}

// ---- sdpa: F.scaled_dot_product_attention. The backend PyTorch picks on CUDA
// (aten/src/ATen/native/transformers/cuda/sdp_utils.cpp select_sdp_backend, priority flash,
// efficient, math; cuDNN first only on sm90/sm100 with cuDNN > 9.15, check_prefer_cudnn_attention):
//   flash: q, k, v float16/bfloat16 (check_dtypes_flash_attention, sm80+), no attn_mask
//          (check_for_attn_mask), head dims equal and <= 256 (check_head_dim_size_flash);
//   efficient: float32 too; head dims divisible by the GEMM alignment (minimum_gemm_alignment: 8
//          for half, 4 for float32 on sm80+); masks allowed;
//   math: anything (the composite _scaled_dot_product_attention_math in attention.cpp).
// What each keeps for backward is in docs/pytorch-behaviour.md section 8.
enum class Sdpa { flash, efficient, cudnn, math };
constexpr i64 kFlashMaxHeadDim = 256;          // check_head_dim_size_flash
constexpr i64 kGemmAlignHalf = 8, kGemmAlignFloat = 4;  // minimum_gemm_alignment on sm80+ (128 bits / element bits)
constexpr i64 kMemEffLseAlign = 32;            // mem_eff_attention kernel_forward.h kAlignLSE: logsumexp rows padded
constexpr i64 kFlashBwdSeqRound = 128;         // flash_api.cpp mha_bwd: seqlen_q_rounded = round_multiple(seqlen_q, 128)
constexpr i64 kFlashBwdHeadRound = 32;         // flash_api.cpp mha_bwd: head_size_rounded = round_multiple(head_size, 32) (<= 192)

i64 round_up(i64 v, i64 m) { return checked_mul((v + m - 1) / m, m, "sdpa padding"); }

Sdpa sdpa_backend(const OpCall& c) {
  const std::string& b = attr(c.layer, "backend").text;
  const bool half = is_half(c.in[0].dtype);
  const bool mask = c.in.size() > 3;
  const i64 d = c.in[0].shape.back(), dv = c.in[2].shape.back();
  const i64 align = half ? kGemmAlignHalf : kGemmAlignFloat;
  const bool flash_ok = half && !mask && d == dv && d <= kFlashMaxHeadDim;
  const bool eff_ok = d % align == 0 && dv % align == 0;
  if (b == "auto") return flash_ok ? Sdpa::flash : eff_ok ? Sdpa::efficient : Sdpa::math;
  if (b == "math") return Sdpa::math;
  if (b == "flash" || b == "cudnn") {
    if (!half)
      fail(c.layer, std::string(b) + " attention needs float16/bfloat16 q, k, v; these are " + dtype_name(c.in[0].dtype),
           "train in half precision (--precision bf16 or --dtype bf16-true), or use backend=auto");
    if (b == "flash" && mask) fail(c.layer, "flash attention takes no attn_mask (check_for_attn_mask)", "use causal=true without a mask, or backend=auto");
    if (b == "flash" && (d != dv || d > kFlashMaxHeadDim))
      fail(c.layer, "flash attention needs equal head dims of at most 256, not " + std::to_string(d) + "/" + std::to_string(dv), "use backend=auto");
    return b == "flash" ? Sdpa::flash : Sdpa::cudnn;
  }
  if (b == "efficient") {
    if (!eff_ok)
      fail(c.layer, "memory-efficient attention needs head dims divisible by " + std::to_string(align) + ", not " + std::to_string(d),
           "use backend=auto (math)");
    return Sdpa::efficient;
  }
  fail(c.layer, "backend must be auto, flash, efficient, math or cudnn, not '" + b + "'", "write backend=auto");
}

OpShape sdpa_shape(const OpCall& c) {
  if (c.rules == TorchRules::v1_13)
    fail(c.layer, "torch 1.13 has no F.scaled_dot_product_attention (it came with 2.0)",
         "model the eager attention (matmul, softmax, matmul) for --pytorch 1.13, or use the PyTorch 2 rules");
  for (std::size_t j = 0; j < c.in.size(); ++j) {
    need_float(c, j);
    need_rank_of(c, j, 4, j < 3 ? "N, heads, T, head_dim" : "N or 1, heads or 1, T, S", "transpose the heads first: reshape TxHxd, transpose 1 2");
  }
  const auto &q = c.in[0].shape, &k = c.in[1].shape, &v = c.in[2].shape;
  if (k[0] != q[0] || v[0] != q[0] || k[1] != v[1] || k[2] != v[2] || k[3] != q[3])
    fail(c.layer, "q " + shape_text(q, 0) + ", k " + shape_text(k, 0) + ", v " + shape_text(v, 0) + " do not fit together",
         "k and v need the same heads and length, k the head_dim of q");
  if (k[1] != q[1]) {
    if (!attr_bool(c.layer, "enable_gqa"))
      fail(c.layer, "k and v have " + std::to_string(k[1]) + " heads, q has " + std::to_string(q[1]) + " (PyTorch refuses this without enable_gqa)",
           "give enable_gqa=true, or repeat_kv the keys and values first");
    if (q[1] % k[1] != 0) fail(c.layer, "q's heads are not a multiple of k's", "check num_key_value_heads");
  }
  if (c.in.size() > 3) {
    const auto& mk = c.in[3].shape;
    if (attr_bool(c.layer, "causal"))
      fail(c.layer, "causal=true with an attn_mask: PyTorch refuses both (\"Explicit attn_mask should not be set when is_causal=True\")",
           "give causal=false with the mask, or drop the mask");
    if ((mk[0] != 1 && mk[0] != q[0]) || (mk[1] != 1 && mk[1] != q[1]) || mk[2] != q[2] || mk[3] != k[2])
      fail(c.layer, "the mask " + shape_text(mk, 0) + " does not broadcast to [N, H, T, S]", "give a mask [N or 1, 1 or H, T, S]");
  }
  const double p = attr_real(c.layer, "dropout");
  if (!(p >= 0.0 && p < 1.0)) fail(c.layer, "dropout must be from 0 to below 1", "e.g. dropout=0 (Llama's attention_dropout)");
  (void)sdpa_backend(c);  // refuses a backend that cannot run these inputs
  return {TensorType{with_last(q, v[3]), c.in[0].dtype}, {}, c.layer.attrs};
}
OpMemory sdpa_memory(const OpCall& c, const OpShape& s) {
  const auto &q = c.in[0], &k = c.in[1], &v = c.in[2];
  const i64 n = q.shape[0], h = q.shape[1], t = q.shape[2], sl = k.shape[2], d = q.shape[3];
  const bool gqa = k.shape[1] != h;
  const bool mask = c.in.size() > 3;
  OpMemory m;
  m.grad_in.assign(c.in.size(), GradIn::fresh);
  const Sdpa b = sdpa_backend(c);
  static const char* names[] = {"flash attention", "memory-efficient attention", "cuDNN attention", "the math composite"};
  m.note = std::string("sdpa runs ") + names[static_cast<int>(b)] + " (" + dtype_name(q.dtype) + ", " +
           (mask ? "a mask" : "no mask") + ", head_dim " + std::to_string(d) + "; sdp_utils.cpp select_sdp_backend" +
           (attr(c.layer, "backend").text == "auto" ? "" : ", as backend= says") +
           "): what it keeps is modelled from the source, not measured on a GPU (docs/pytorch-behaviour.md 8a)";
  auto save_qkv = [&] {
    m.saved.push_back({.ref = {TensorRef::input, 0}, .role = "query"});
    m.saved.push_back({.ref = {TensorRef::input, 1}, .role = "key"});
    m.saved.push_back({.ref = {TensorRef::input, 2}, .role = "value"});
  };
  if (b == Sdpa::flash || b == Sdpa::cudnn || b == Sdpa::efficient) {
    // _scaled_dot_product_{flash,efficient,cudnn}_attention: out and logsumexp float32 per row (flash
    // softmax_lse [N, H, T]; efficient pads the rows to 32; cuDNN softmaxstats [N, H, T, 1]); the
    // philox seed/offset are 0-d tensors (CPU ones for flash). Saved: q, k, v, (mask), out, lse.
    const i64 rows = b == Sdpa::efficient ? round_up(t, kMemEffLseAlign) : t;
    m.extras = {{"logsumexp (float32)", {{n, h, rows}, DType::f32}}};
    save_qkv();
    if (mask) m.saved.push_back({.ref = {TensorRef::input, 3}, .role = "attn_bias"});
    m.saved.push_back({.ref = {TensorRef::output, 0}, .role = "output"});
    m.saved.push_back({.ref = {TensorRef::extra, 0}, .role = "logsumexp"});
    if (b == Sdpa::flash) {
      // mha_bwd: softmax_d float32 [N, H, T rounded to 128] and dq_accum float32 [N, T rounded, H,
      // head_dim rounded to 32]; with fewer kv heads, dk/dv of q's heads summed afterwards.
      const i64 tr = round_up(t, kFlashBwdSeqRound);
      m.bwd_temps = {{{n, h, tr}, DType::f32}, {{n, tr, h, round_up(d, kFlashBwdHeadRound)}, DType::f32}};
    } else if (b == Sdpa::efficient) {
      m.bwd_temps = {{{n, h, t}, DType::f32}};  // delta = (grad_out * out).sum(-1) in float32
    }
    if (gqa) {
      m.bwd_temps.push_back({{n, h, sl, d}, k.dtype});
      m.bwd_temps.push_back({{n, h, sl, v.shape[3]}, v.dtype});
    }
    m.fwd_workspaces = {};
    return m;
  }
  // math: the composite (attention.cpp _scaled_dot_product_attention_math). In 2.5+ half inputs
  // are computed in float32 unless torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True):
  // q, k, v copied to float32 (held by the call), the output cast back.
  const bool upcast = is_half(q.dtype);
  const DType cd = upcast ? DType::f32 : q.dtype;
  if (upcast) {
    m.fwd_temps.push_back({q.shape, cd});  // query_acc
    m.fwd_temps.push_back({k.shape, cd});  // key_acc
    m.fwd_temps.push_back({s.out.shape, cd});  // the float32 result before .to(q dtype)
  }
  if (attr_bool(c.layer, "causal")) m.fwd_temps.push_back({{t, sl}, cd});  // ones(L, S).tril() as an additive mask
  if (gqa) m.fwd_temps.push_back({{n, h, sl, d}, cd});  // key.repeat_interleave (value's is saved below)
  m.fwd_temps.push_back({{n, h, t, sl}, cd});           // attn = q @ k^T (softmax makes a new one)
  m.extras.push_back({"query * sqrt(scale)", {q.shape, cd}});
  m.extras.push_back({"key^T * sqrt(scale)", {{n, h, d, sl}, cd}});
  m.extras.push_back({"softmax(attn)", {{n, h, t, sl}, cd}});
  m.saved.push_back({.ref = {TensorRef::extra, 0}, .role = "self (matmul q, k^T)"});
  m.saved.push_back({.ref = {TensorRef::extra, 1}, .role = "mat2 (matmul q, k^T)"});
  m.saved.push_back({.ref = {TensorRef::extra, 2}, .role = "result (softmax) / self (matmul attn, v)"});
  if (upcast || gqa) {
    m.extras.push_back({gqa ? "value.repeat_interleave" : "value.to(float32)", {{n, h, sl, v.shape[3]}, cd}});
    m.saved.push_back({.ref = {TensorRef::extra, 3}, .role = "mat2 (matmul attn, v)"});
  } else {
    m.saved.push_back({.ref = {TensorRef::input, 2}, .role = "mat2 (matmul attn, v)"});
  }
  const double p = attr_real(c.layer, "dropout");
  if (p > 0.0) {  // at::dropout on CUDA: native_dropout's bool mask and the dropped probabilities
    m.extras.push_back({"dropout mask", {{n, h, t, sl}, DType::b8}});
    m.saved.push_back({.ref = {TensorRef::extra, static_cast<int>(m.extras.size()) - 1}, .role = "mask (dropout)"});
    m.extras.push_back({"dropout(attn)", {{n, h, t, sl}, cd}});
    m.saved.push_back({.ref = {TensorRef::extra, static_cast<int>(m.extras.size()) - 1}, .role = "self (matmul attn, v)"});
  }
  // backward: the gradients of softmax's output and input ([N, H, T, S] each, alive together in
  // _softmax_backward_data), then of q' and k' before the scale multiplies.
  m.bwd_temps = {{{n, h, t, sl}, cd}, {{n, h, t, sl}, cd}, {q.shape, cd}, {{n, h, d, sl}, cd}};
  m.fwd_workspaces = {Workspace::cublas};
  m.bwd_workspaces = {Workspace::cublas};
  return m;
}

// ---- gelu_new: transformers' NewGELUActivation (activations.py):
//   0.5 * x * (1.0 + tanh(sqrt(2 / pi) * (x + 0.044715 * pow(x, 3.0))))
// Autograd keeps (derivatives.yaml): pow's self (x), tanh's result, and for the last product both
// factors (0.5 * x and 1 + tanh(...)); the scalar multiplies and adds keep nothing. The other
// intermediates are freed as the expression goes on, below the four tensors alive at the end.
// The last product's backward holds grad * e and grad * a at once with the saved tensors (its
// peak; pow_backward's three temporaries come after the mul and tanh saves are released):
// one x-sized tensor besides the result (measured per node, cpu_live_transformers.json gpt2_tiny).
constexpr i64 kGeluNewBackwardTemps = 1;
// Under torch.autocast with a half input x (the c_fc addmm's result) the expression mixes dtypes
// (autocast_mode.h): pow.Tensor_Scalar is in AT_FORALL_FP32, so pow casts x to a float32 copy and
// saves that copy; the scalar mul and `x + ...` promote to float32 (add is in no list); tanh is in
// no list and stays float32; 0.5 * x stays half; the last mul (half * float32) gives a float32
// result. Saved: float32 x copy, tanh's float32 result, 0.5 * x in half, 1 + tanh in float32. From
// the source only: CPU autocast has other lists, so the CPU references cannot check it.
OpShape gelu_new_shape(const OpCall& c) {
  need_float(c, 0);
  TensorType out = with_shape(c.in[0], c.in[0].shape);
  if (autocast_half_input(c)) out.dtype = DType::f32;
  return {out, {}, c.layer.attrs};
}
OpMemory gelu_new_memory(const OpCall& c, const OpShape&) {
  OpMemory m;
  const TensorType full = with_shape(c.in[0], c.in[0].shape);
  if (autocast_half_input(c)) {
    const TensorType wide{c.in[0].shape, DType::f32};
    m.extras = {{"x.float() (pow, autocast fp32 list)", wide}, {"0.5 * x", full}, {"tanh(...) (float32)", wide},
                {"1.0 + tanh(...) (float32)", wide}};
    m.saved = {{.ref = {TensorRef::extra, 0}, .role = "self (pow, the float32 copy)"},
               {.ref = {TensorRef::extra, 2}, .role = "result (tanh)"},
               {.ref = {TensorRef::extra, 1}, .role = "self (mul)"},
               {.ref = {TensorRef::extra, 3}, .role = "other (mul)"}};
    m.grad_in = {GradIn::fresh};
    for (i64 k = 0; k < kGeluNewBackwardTemps; ++k) m.bwd_temps.push_back(wide);
    m.note = "gelu_new under torch.autocast: pow runs on a float32 copy of its input (AT_FORALL_FP32) and the "
             "expression after it in float32, so it saves three float32 tensors and gives a float32 result; from "
             "autocast_mode.h, not measured on a GPU";
    return m;
  }
  m.extras = {{"0.5 * x", full}, {"tanh(...)", full}, {"1.0 + tanh(...)", full}};
  m.saved = {{.ref = {TensorRef::input, 0}, .role = "self (pow)"},
             {.ref = {TensorRef::extra, 1}, .role = "result (tanh)"},
             {.ref = {TensorRef::extra, 0}, .role = "self (mul)"},
             {.ref = {TensorRef::extra, 2}, .role = "other (mul)"}};
  m.grad_in = {GradIn::fresh};
  for (i64 k = 0; k < kGeluNewBackwardTemps; ++k) m.bwd_temps.push_back(full);
  return m;
}

// ---- gpt2_conv1d: transformers' Conv1D (pytorch_utils.py): addmm(bias, x.view(-1, nx), weight)
// with weight [in, out]; the same addmm as nn.Linear (mat1 kept when the weight trains, the weight
// when x needs grad). x.view needs a layout that allows it (PyTorch raises otherwise).
OpShape gpt2_conv1d_shape(const OpCall& c) {
  need_float(c, 0);
  if (c.in[0].shape.size() < 2) fail(c.layer, "gpt2_conv1d needs [N, ..., features]", "feed it hidden states [N, T, D]");
  std::vector<i64> rows{1, c.in[0].shape.back()}, st;
  rows[0] = c.in[0].numel() / c.in[0].shape.back();
  if (!view_strides(c.in[0].shape, c.in[0].layout(), rows, st))
    fail(c.layer, "x.view(-1, " + std::to_string(c.in[0].shape.back()) + ") of a transposed input: PyTorch raises", "add contiguous before it");
  const i64 out = attr_int(c.layer, "out_features");
  if (out <= 0) fail(c.layer, "out_features must be positive", "e.g. out_features=2304 (3 x n_embd for c_attn)");
  OpShape s{with_shape(c.in[0], with_last(c.in[0].shape, out)), {}, c.layer.attrs};
  s.params.push_back({"weight", {c.in[0].shape.back(), out}});
  s.params.push_back({"bias", {out}});
  return s;
}

// ---- scale: x * factor (a Python number: mul.Scalar keeps nothing) or, tensor=true,
// x / torch.full([], ...) as GPT-2's eager attention divides (div.Tensor keeps the 0-d divisor).
OpShape scale_shape(const OpCall& c) {
  need_float(c, 0);
  return {with_shape(c.in[0], c.in[0].shape), {}, c.layer.attrs};
}
OpMemory scale_memory(const OpCall& c, const OpShape&) {
  OpMemory m;
  if (attr_bool(c.layer, "tensor")) {
    m.extras = {{"torch.full([], divisor)", {{}, c.in[0].dtype}}};
    m.saved = {{.ref = {TensorRef::extra, 0}, .role = "other (0-d divisor)"}};
  }
  m.grad_in = {GradIn::fresh};
  return m;
}

// ---- attn_mask: the additive float mask transformers builds once per forward for eager attention
// (masking_utils.py create_causal_mask / eager_mask: 0 where attended, dtype min elsewhere):
// [N, 1, T, T] causal; causal=false: BERT's extended padding mask [N, 1, 1, T] from an all-ones
// attention_mask (modeling_utils.py get_extended_attention_mask). Needs no grad.
OpShape attn_mask_shape(const OpCall& c) {
  if (c.in[0].shape.size() < 2) fail(c.layer, "attn_mask reads N and T from its input [N, T, ...]", "feed it the token ids");
  const i64 n = c.in[0].shape[0], t = c.in[0].shape[1];
  std::vector<i64> out = attr_bool(c.layer, "causal") ? std::vector<i64>{n, 1, t, t} : std::vector<i64>{n, 1, 1, t};
  return {TensorType{out, DType::f32}, {}, c.layer.attrs};
}
OpMemory attn_mask_memory(const OpCall& c, const OpShape& s) {
  OpMemory m;
  m.fwd_temps = {{s.out.shape, DType::b8}};  // the boolean mask before torch.where makes it additive
  if (!attr_bool(c.layer, "causal")) m.fwd_temps = {{{c.in[0].shape[0], c.in[0].shape[1]}, DType::f32}};  // torch.ones(N, T)
  m.grad_in = {GradIn::fresh};
  return m;
}

// ---- losses over a vocabulary. causal_lm_loss: transformers' ForCausalLMLoss (loss/loss_utils.py):
//   logits = logits.float(); labels = pad(labels, (0, 1), value=-100); shift_labels = labels[..., 1:].contiguous()
//   cross_entropy(logits.view(-1, V), shift_labels.view(-1), ignore_index=-100, reduction="mean")
// The loop holds labels int64 [N, T]; the loss keeps log_softmax's result [N*T, V] float32, the
// shifted labels (a new int64 [N, T]) and total_weight. masked_lm_loss: BertForMaskedLM's
// CrossEntropyLoss()(prediction_scores.view(-1, V), labels.view(-1)): the labels themselves.
// Backward (both): nll_loss_backward's [N*T, V] and _log_softmax_backward_data's (the logits' gradient).
OpShape lm_loss_shape(const OpCall& c) {
  need_float(c, 0);
  if (c.in[0].shape.size() != 3)
    fail(c.layer, "a language-model loss takes logits [N, T, vocab], not " + shape_text(c.in[0].shape, 0), "feed it the lm_head's output");
  std::vector<i64> rows{c.in[0].shape[0] * c.in[0].shape[1], c.in[0].shape[2]}, st;
  if (!view_strides(c.in[0].shape, c.in[0].layout(), rows, st))
    fail(c.layer, "logits.view(-1, V) of a non-contiguous tensor: PyTorch raises", "add contiguous before the loss");
  return {TensorType{{}, DType::f32}, {}, c.layer.attrs};
}
TensorType lm_target(const OpCall& c) { return {{c.in[0].shape[0], c.in[0].shape[1]}, DType::i64}; }
OpMemory causal_lm_loss_memory(const OpCall& c, const OpShape&) {
  const auto& in = c.in[0].shape;
  const std::vector<i64> rows{in[0] * in[1], in[2]};
  OpMemory m;
  m.extras = {{"log_softmax result", {rows, DType::f32}},
              {"total_weight", {{}, DType::f32}},
              {"shift_labels (contiguous)", {{in[0], in[1]}, DType::i64}}};
  // NllLossBackward0 runs first and releases the shifted labels and total_weight before
  // LogSoftmaxBackward0 allocates the logits' gradient (measured: 260 B lower at that peak).
  m.saved = {{{TensorRef::extra, 0}, "result / self"},
             {.ref = {TensorRef::extra, 2}, .role = "target (shift_labels)", .released_early = true},
             {.ref = {TensorRef::extra, 1}, .role = "total_weight", .released_early = true}};
  m.fwd_temps = {{{in[0], in[1] + 1}, DType::i64}};  // the padded labels
  if (is_half(c.in[0].dtype)) m.fwd_temps.push_back({in, DType::f32});  // logits.float(), held by the call
  m.grad_in = {GradIn::fresh};
  m.bwd_temps = {{rows, DType::f32}};
  if (is_half(c.in[0].dtype)) m.bwd_temps.push_back({rows, DType::f32});  // the float32 gradient before ToCopyBackward
  return m;
}
OpMemory masked_lm_loss_memory(const OpCall& c, const OpShape&) {
  const auto& in = c.in[0].shape;
  return cross_entropy_rows_memory(c, {in[0] * in[1], in[2]});  // CrossEntropyLoss over logits.view(-1, V)
}

}  // namespace

void transformer_rules(std::vector<OpRule>& out) {
  out.push_back({.kind = "embedding",
                 .attrs = {A("num_embeddings", VT::integer, nullptr), A("embedding_dim", VT::integer, nullptr),
                           A("padding_idx", VT::integer, "-1"), A("positions", VT::boolean, "false")},
                 .family = OpFamily::transformer,
                 .pytorch = "nn.Embedding (positions=true: indices arange(T), GPT-2 wpe)",
                 .summary = "int64 ids [N, T] -> [N, T, D] ([1, T, D] with positions); keeps the indices; weight grad [V, D]",
                 .source = "tools/autograd/derivatives.yaml embedding; aten/src/ATen/native/Embedding.cpp",
                 .shape = embedding_shape,
                 .memory = embedding_memory,
                 .takes_indices = true});
  out.push_back({.kind = "rms_norm",
                 .aliases = {"rmsnorm"},
                 .attrs = {A("normalized_shape", VT::integer, nullptr), A("eps", VT::real, "1e-06"), A("impl", VT::text, "hf")},
                 .positional = {"normalized_shape"},
                 .family = OpFamily::transformer,
                 .pytorch = "LlamaRMSNorm (impl=hf) / F.rms_norm (impl=fused)",
                 .summary = "RMSNorm; hf: the float32 composite (keeps x, rsqrt, the normalised x; x^2 too in torch 1.13)",
                 .source = "huggingface/transformers src/transformers/models/llama/modeling_llama.py LlamaRMSNorm; derivatives.yaml pow, mean.dim, rsqrt, mul",
                 .shape = rms_norm_shape,
                 .memory = rms_norm_memory});
  out.push_back({.kind = "rotary_embedding",
                 .attrs = {A("head_dim", VT::integer, nullptr), A("theta", VT::real, "10000")},
                 .family = OpFamily::transformer,
                 .pytorch = "LlamaRotaryEmbedding",
                 .summary = "cos, sin [1, T, head_dim] (outputs :0, :1) from its input's T; no grad; inv_freq buffer",
                 .source = "huggingface/transformers src/transformers/models/llama/modeling_llama.py LlamaRotaryEmbedding.forward",
                 .shape = rotary_embedding_shape,
                 .memory = rotary_embedding_memory,
                 .takes_indices = true,
                 .differentiable = false,
                 .held_by_forward = true});
  out.push_back({.kind = "rotary",
                 .min_inputs = 3,
                 .max_inputs = 3,
                 .family = OpFamily::transformer,
                 .pytorch = "apply_rotary_pos_emb (one of q, k)",
                 .summary = "x * cos + rotate_half(x) * sin; keeps cos and sin only",
                 .source = "huggingface/transformers src/transformers/models/llama/modeling_llama.py apply_rotary_pos_emb, rotate_half; derivatives.yaml mul.Tensor",
                 .shape = rotary_shape,
                 .memory = rotary_memory});
  out.push_back({.kind = "repeat_kv",
                 .attrs = {A("n_rep", VT::integer, nullptr)},
                 .positional = {"n_rep"},
                 .family = OpFamily::transformer,
                 .pytorch = "repeat_kv (eager grouped-query attention)",
                 .summary = "expand + reshape: a copy with n_rep times the heads (n_rep=1: the input itself)",
                 .source = "huggingface/transformers src/transformers/models/llama/modeling_llama.py repeat_kv",
                 .shape = repeat_kv_shape,
                 .memory = repeat_kv_memory});
  out.push_back({.kind = "sdpa",
                 .aliases = {"scaled_dot_product_attention"},
                 .attrs = {A("causal", VT::boolean, "true"), A("dropout", VT::real, "0"), A("backend", VT::text, "auto"),
                           A("enable_gqa", VT::boolean, "false")},
                 .min_inputs = 3,
                 .max_inputs = 4,
                 .autocast = Autocast::lower,
                 .family = OpFamily::transformer,
                 .pytorch = "F.scaled_dot_product_attention(q, k, v[, mask])",
                 .summary = "attention by the backend PyTorch picks (flash/efficient: q, k, v, out, float32 logsumexp; math: O(T^2))",
                 .source = "aten/src/ATen/native/transformers/cuda/sdp_utils.cpp select_sdp_backend; attention.cpp; derivatives.yaml _scaled_dot_product_flash_attention",
                 .shape = sdpa_shape,
                 .memory = sdpa_memory});
  out.push_back({.kind = "gelu_new",
                 .family = OpFamily::transformer,
                 .pytorch = "NewGELUActivation (GPT-2)",
                 .summary = "the tanh GELU written out; keeps x, tanh's result, 0.5x and 1+tanh (four tensors; under autocast x as a float32 copy, the rest float32 but 0.5x)",
                 .source = "huggingface/transformers src/transformers/activations.py NewGELUActivation; derivatives.yaml",
                 .shape = gelu_new_shape,
                 .memory = gelu_new_memory});
  out.push_back({.kind = "gpt2_conv1d",
                 .attrs = {A("out_features", VT::integer, nullptr)},
                 .positional = {"out_features"},
                 .autocast = Autocast::lower,
                 .family = OpFamily::transformer,
                 .pytorch = "transformers Conv1D (GPT-2 c_attn, c_proj, c_fc)",
                 .summary = "addmm with weight [in, out]; saves as linear does",
                 .source = "huggingface/transformers src/transformers/pytorch_utils.py Conv1D; derivatives.yaml addmm",
                 .shape = gpt2_conv1d_shape,
                 .memory = linear_memory});
  out.push_back({.kind = "scale",
                 .attrs = {A("factor", VT::real, nullptr), A("tensor", VT::boolean, "false")},
                 .positional = {"factor"},
                 .family = OpFamily::transformer,
                 .pytorch = "x * factor (tensor=true: x / torch.full([], d ** 0.5), GPT-2)",
                 .summary = "multiply by a number: keeps nothing (tensor=true: the 0-d divisor)",
                 .source = derivs,
                 .shape = scale_shape,
                 .memory = scale_memory});
  out.push_back({.kind = "attn_mask",
                 .attrs = {A("causal", VT::boolean, "true")},
                 .family = OpFamily::transformer,
                 .pytorch = "create_causal_mask (eager) / get_extended_attention_mask",
                 .summary = "additive float mask [N, 1, T, T] (causal=false: [N, 1, 1, T]) from the ids' N and T; no grad",
                 .source = "huggingface/transformers src/transformers/masking_utils.py create_causal_mask; modeling_utils.py get_extended_attention_mask",
                 .shape = attn_mask_shape,
                 .memory = attn_mask_memory,
                 .takes_indices = true,
                 .differentiable = false,
                 .held_by_forward = true});
  out.push_back({.kind = "causal_lm_loss",
                 .is_loss = true,
                 .family = OpFamily::loss,
                 .pytorch = "ForCausalLMLoss (LlamaForCausalLM, GPT2LMHeadModel labels=)",
                 .summary = "logits.float(), labels shifted, cross entropy over the vocabulary; labels int64 [N, T]",
                 .source = "huggingface/transformers src/transformers/loss/loss_utils.py ForCausalLMLoss; derivatives.yaml log_softmax, nll_loss",
                 .shape = lm_loss_shape,
                 .memory = causal_lm_loss_memory,
                 .target = lm_target});
  out.push_back({.kind = "masked_lm_loss",
                 .autocast = Autocast::keep,  // CrossEntropyLoss: the rule makes its casts (see cross_entropy)
                 .is_loss = true,
                 .family = OpFamily::loss,
                 .pytorch = "BertForMaskedLM's CrossEntropyLoss over logits.view(-1, V)",
                 .summary = "cross entropy over the vocabulary; labels int64 [N, T]",
                 .source = "huggingface/transformers src/transformers/models/bert/modeling_bert.py BertForMaskedLM.forward; derivatives.yaml",
                 .shape = lm_loss_shape,
                 .memory = masked_lm_loss_memory,
                 .target = lm_target});
}

}  // namespace memfit::rules

// Shared by the rule families in core/src/ops/: small helpers and the per-family registration
// functions that registry.cpp calls once.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "memfit/ops.hpp"

namespace memfit::rules {

using VT = Value::Type;
using GradIn = OpMemory::GradIn;

inline TensorType with_shape(const TensorType& like, std::vector<i64> shape) { return {std::move(shape), like.dtype}; }

inline void need_rank(const OpCall& c, std::size_t rank, const char* layout, const char* fix) {
  const auto& s = c.in[0].shape;
  if (s.size() != rank) {
    std::string got;
    for (std::size_t i = 0; i < s.size(); ++i) got += (i ? "x" : "") + std::to_string(s[i]);
    fail(c.layer, "expects a " + std::to_string(rank) + "-d input (" + layout + ") but gets " + got, fix);
  }
}

inline bool inplace_of(const Layer& l) {
  auto it = l.attrs.find("inplace");
  return it != l.attrs.end() && it->second.flag;
}
inline OpShape same_shape(const OpCall& c) { return {c.in[0], {}, c.layer.attrs}; }
// The dtype of a softmax-family result (Autocast::fp32_set_opt_dtype): float32 from a float16 input
// read by the half_to_float kernel, else the (already converted) input's.
inline DType softmax_result_dtype(const OpCall& c) { return c.half_to_float ? DType::f32 : c.in[0].dtype; }
inline bool is_half(DType t) { return t == DType::f16 || t == DType::bf16; }
// torch.autocast is on and the op's first input is half: composites whose aten ops sit in different
// autocast lists (gelu_new, cross_entropy) then mix dtypes inside.
inline bool autocast_half_input(const OpCall& c) { return c.autocast != DType::f32 && is_half(c.in[0].dtype); }
// F.cross_entropy over class scores [rows, classes] (loss.cpp): what cross_entropy and masked_lm_loss keep.
OpMemory cross_entropy_rows_memory(const OpCall& c, const std::vector<i64>& rows);
DType cross_entropy_loss_dtype(const OpCall& c);
// Saves self (avg_pool2d, _adaptive_avg_pool2d for its shape and the backward kernel; gelu).
inline OpMemory save_self_memory(const OpCall&, const OpShape&) {
  OpMemory m;
  m.saved = {{{TensorRef::input, 0}, "self"}};
  m.grad_in = {GradIn::fresh};
  return m;
}
inline AttrSpec A(const char* k, VT t, const char* d) { return {k, t, d}; }

// "2x3x4" (sep 'x') or "0,2,1" (sep ','): a list attribute; errors name the layer and show `example`.
std::vector<i64> int_list(const Layer& l, const char* key, char sep, const char* example);
// "2x58x28x28" for messages (per sample: from dim `from`).
std::string shape_text(const std::vector<i64>& s, std::size_t from = 1);
// numpy / torch broadcasting of all inputs' shapes (aten/src/ATen/ExpandUtils.cpp infer_size).
std::vector<i64> broadcast_shape(const OpCall& c, const char* fix);
// The dtype an element-wise op of mixed floating inputs computes in (c10 promoteTypes: float16 +
// bfloat16 -> float32); none of these ops is in an autocast list, so there are no input copies.
DType promoted_dtype(const OpCall& c);

void shape_rules(std::vector<OpRule>& out);
void conv_pool_rules(std::vector<OpRule>& out);
void norm_rules(std::vector<OpRule>& out);
void activation_rules(std::vector<OpRule>& out);
void loss_rules(std::vector<OpRule>& out);
void tensor_rules(std::vector<OpRule>& out);
void transformer_rules(std::vector<OpRule>& out);
// linear's shape and memory, shared with gpt2_conv1d (the same addmm)
OpShape linear_shape(const OpCall& c);
OpMemory linear_memory(const OpCall& c, const OpShape& s);
void peft_rules(std::vector<OpRule>& out);  // peft.cpp: to, linear4bit (fine-tuning)

}  // namespace memfit::rules

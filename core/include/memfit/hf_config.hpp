// Hugging Face config.json -> memfit::Model (core/src/model/hf_config.cpp, docs/hf-config.md): the
// layers transformers' modeling code runs for a training step, named by their module paths
// (model.layers.0.self_attn.q_proj), so regions, --freeze/--train globs and LoRA target patterns work.
#pragma once

#include <optional>
#include <string>

#include "memfit/common.hpp"
#include "memfit/model.hpp"

namespace memfit {

// transformers' attn_implementation: "sdpa" is what from_pretrained picks when torch has
// scaled_dot_product_attention (modeling_utils.py _check_and_adjust_attn_implementation), "eager"
// the explicit matmul/softmax/matmul of eager_attention_forward.
enum class HfAttention : std::uint8_t { sdpa, eager };
// BERT: which head class the config is trained with; by default its "architectures" decides.
enum class HfHead : std::uint8_t { mlm, cls };

// The settings a config.json needs that the file does not hold. Unset: the builder's defaults.
struct HfOptions {
  i64 seq = 0;  // --seq: tokens per sample; 0 = the default (kDefaultSeq, at most max_position_embeddings)
  std::optional<HfAttention> attention;  // --attention (default sdpa)
  std::optional<HfHead> head;            // --head (BERT only; default from "architectures")
  bool any() const { return seq != 0 || attention || head; }
};

// --seq's default: 2048 tokens, a common fine-tuning context (it fits every shipped decoder's
// max_position_embeddings); configs whose max_position_embeddings is smaller (BERT 512, GPT-2 1024)
// default to that maximum. The estimate's notes say which was used.
inline constexpr i64 kDefaultSeq = 2048;

// "llama, mistral, qwen2, gpt2, bert, vit": the model_type values the builder knows.
std::string hf_model_types();

// Option values as typed (CLI, request API); errors say what to write.
HfAttention parse_hf_attention(std::string_view s);
HfHead parse_hf_head(std::string_view s);

// A model that is not a config.json but came with --seq/--attention/--head: refused, since the
// setting would be ignored silently (a .memfit model's input shape fixes its sequence length).
void refuse_hf_options(const HfOptions& hf, const Model& m);

}  // namespace memfit

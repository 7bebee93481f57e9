// A model as the user wrote it: layers with named inputs and typed attributes, source positions kept.
// Two readers produce it (the text format of docs/model-format.md and the JSON form); blocks and
// repeats are already expanded, so every front end sees the same flat list.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "memfit/common.hpp"

namespace memfit {

// One attribute value. Pairs are (height, width) as PyTorch's `_pair` makes them.
struct Value {
  enum class Type { integer, pair, boolean, real, text } type = Type::integer;
  i64 a = 0, b = 0;  // integer: a; pair: (a, b)
  bool flag = false;
  double real = 0.0;
  std::string text;  // text values ("same", "valid"), and a real's spelling as written
  SourcePos pos;
};

struct Layer {
  std::string name;                 // unique, e.g. "layer1.0.conv1"
  std::string kind;                 // canonical kind from the op registry, e.g. "conv2d"
  std::vector<std::string> inputs;  // names of earlier layers; empty only for `input`
  std::map<std::string, Value> attrs;  // every attribute of the kind, defaults filled in
  SourcePos pos;
};

struct Model {
  std::string name;
  std::string file;  // as given by the caller, used in error messages
  std::vector<Layer> layers;
  // Parameters the model itself has frozen ("layer.param", requires_grad=False at export time): the
  // JSON form's top-level "freeze" (tools/memfit_export.py writes it). --freeze adds to it; --train
  // replaces it (only what --train names trains).
  std::vector<std::string> frozen;
  SourcePos frozen_pos;
  // What the source could not say and memfit assumed (the ONNX importer: which PyTorch module a node
  // stands for; a Hugging Face config's default sequence length): the estimate repeats them in its notes.
  std::vector<std::string> notes;
  // The layer transformers' get_input_embeddings() returns when it is not the first token embedding
  // (ViT: embeddings.patch_embeddings, whose output is the patch transpose); empty: that embedding.
  // PEFT's enable_input_require_grads hooks it (core/src/pipeline/finetune.cpp).
  std::string input_embeddings;
};

struct HfOptions;  // memfit/hf_config.hpp: --seq, --attention, --head for a Hugging Face config.json

// Parsers. `file` names the source in errors. Throws Error (file:line:col, layer, what to do).
// parse_model picks JSON when the first non-blank character is '{', the text format otherwise; a JSON
// object with "model_type" and no "layers" is a Hugging Face config.json, built by hf_config.cpp with
// `hf` (the two-argument form uses its defaults). Settings in `hf` on any other model are refused.
Model parse_model(std::string_view source, std::string_view file);
Model parse_model(std::string_view source, std::string_view file, const HfOptions& hf);
Model parse_model_text(std::string_view source, std::string_view file);
Model parse_model_json(std::string_view source, std::string_view file);

// Refusal limits: a model is answered in seconds or refused with a clear message.
inline constexpr i64 kMaxLayers = 200000;       // after expanding blocks and repeats
inline constexpr int kMaxBlockNesting = 32;     // block calls inside blocks
inline constexpr std::size_t kMaxSourceBytes = 16 * 1024 * 1024;
inline constexpr int kMaxInputRank = 8;  // numbers in a per-sample input shape (PyTorch allows 25 dims)

}  // namespace memfit

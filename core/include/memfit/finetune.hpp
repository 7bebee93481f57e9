// Fine-tuning as a model transformation: LoRA adapters (PEFT) and QLoRA's 4-bit base linears
// (bitsandbytes) become ordinary layers and frozen parameters, so the graph and the planner need no
// special cases. docs/fine-tuning.md describes what is modelled and from which source lines.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "memfit/graph.hpp"
#include "memfit/model.hpp"
#include "memfit/plan.hpp"

namespace memfit {

struct FinetunedModel {
  // The transformed copy (null when the settings ask for no LoRA / QLoRA: use the caller's model).
  std::shared_ptr<const Model> model;
  std::vector<std::string> train;                             // globs of the trainable (adapter) layers
  std::map<std::string, DType, std::less<>> layer_param_dtype;  // adapter layers -> the adapter dtype
  std::vector<std::string> adapted;    // base layers that got an adapter
  std::vector<std::string> quantized;  // base layers stored in 4 bits
  std::vector<std::string> unused_targets;
};

// For each linear (and gpt2_conv1d) whose name matches a LoRA target, PEFT's Linear.forward
// (src/peft/tuners/lora/layer.py) as layers:
//   L.base_layer   the original layer (linear4bit under QLoRA), frozen
//   L.lora_input   to dtype=<adapter dtype>     (_cast_input_dtype; the input itself when it matches)
//   L.lora_dropout dropout p=<dropout>          (only when dropout > 0: PEFT uses nn.Identity for 0)
//   L.lora_A       linear r, no bias            ([r, in], trainable)
//   L.lora_B       linear out_features, no bias ([out, r], trainable)
//   L.scaling      scale alpha / r
//   L.lora_add     add (L.base_layer, L.scaling)
//   L              to dtype=<base result dtype> (result.to(torch_result_dtype))
// Consumers of L keep their inputs. Throws Error for targets that match nothing or a layer kind PEFT's
// LoRA does not wrap here, and for names the new layers would collide with.
FinetunedModel apply_finetuning(const Model& model, const TrainSettings& settings);

// The graph settings for a model after apply_finetuning: every non-adapter parameter frozen (PEFT
// freezes the base model: `p.requires_grad = False` for names without "lora_"), --train layers
// trained as PEFT's modules_to_save.
GraphSettings finetune_graph_settings(const TrainSettings& settings, const FinetunedModel& f);

// Says what fine-tuning assumes (versions followed, what is not modelled) for the estimate's notes.
std::vector<std::string> finetune_notes(const TrainSettings& settings, const FinetunedModel& f);

}  // namespace memfit

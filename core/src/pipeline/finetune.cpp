// LoRA and QLoRA as a transformation of the model (memfit/finetune.hpp). Sources followed:
// huggingface/peft src/peft/tuners/lora/layer.py (Linear.forward), tuners_utils.py
// (check_target_module_exists, _cast_input_dtype, cast_adapter_dtype), lora/config.py (defaults),
// utils/other.py (prepare_model_for_kbit_training); bitsandbytes-foundation/bitsandbytes
// nn/modules.py (Linear4bit), autograd/_functions.py (MatMul4Bit), functional.py (quantize_4bit);
// transformers integrations/bitsandbytes.py (replace_with_bnb_linear, get_keys_to_not_convert).
#include "memfit/finetune.hpp"

#include <cstdio>
#include <set>

#include "model/model_parse.hpp"

namespace memfit {

namespace {

bool linear_like(const Layer& l) { return l.kind == "linear" || l.kind == "gpt2_conv1d"; }

std::string last_component(const std::string& name) {
  auto dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

// PEFT check_target_module_exists with a list of targets: `key in target_modules or
// any(key.endswith(f".{target_key}") for target_key in target_modules)`.
bool target_matches(const std::string& name, const std::string& target) {
  if (name == target) return true;
  return name.size() > target.size() && name.compare(name.size() - target.size(), target.size(), target) == 0 &&
         name[name.size() - target.size() - 1] == '.';
}

std::string number_text(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

// A layer as the parsers build it: every attribute of the kind, defaults filled in.
Layer make_layer(const std::string& kind, std::string name, std::vector<std::string> inputs,
                 const std::vector<std::pair<const char*, std::string>>& attrs, const SourcePos& pos) {
  const OpRule* rule = find_op(kind);
  if (!rule) throw std::logic_error("finetune: unknown kind " + kind);
  Layer l;
  l.name = std::move(name);
  l.kind = rule->kind;
  l.inputs = std::move(inputs);
  l.pos = pos;
  for (const auto& [key, text] : attrs) {
    const AttrSpec* spec = find_attr(*rule, key);
    if (!spec) throw std::logic_error(std::string("finetune: ") + kind + " has no attribute " + key);
    l.attrs[key] = parse_attr_text(*spec, text, pos, l.name);
  }
  fill_defaults(*rule, l);
  return l;
}

// The output head: what transformers leaves unquantized (get_keys_to_not_convert: the output
// embeddings / the last module, "lm_head" in every causal LM) and PEFT's all-linear leaves without an
// adapter (_maybe_include_all_linear_layers removes get_output_embeddings()). memfit has no module
// tree: a layer named lm_head, else the last linear-like layer of the model.
std::set<std::string> output_heads(const Model& m) {
  std::set<std::string> heads;
  const Layer* last = nullptr;
  for (const auto& l : m.layers) {
    if (!linear_like(l)) continue;
    last = &l;
    if (last_component(l.name) == "lm_head") heads.insert(l.name);
  }
  if (heads.empty() && last) heads.insert(last->name);
  return heads;
}

const char* const kDefaultTargets[] = {"q_proj", "v_proj"};


// get_input_embeddings(): the token embedding, the first `embedding` that reads ids (not GPT-2's
// position table, `positions=true`); null when the model has none.
const std::string* input_embedding(const Model& m) {
  if (!m.input_embeddings.empty()) return &m.input_embeddings;
  for (const auto& l : m.layers) {
    if (l.kind != "embedding") continue;
    auto pos = l.attrs.find("positions");
    if (pos == l.attrs.end() || !pos->second.flag) return &l.name;
  }
  return nullptr;
}

}  // namespace

FinetunedModel apply_finetuning(const Model& model, const TrainSettings& s) {
  FinetunedModel f;
  if (!s.lora && !s.qlora) return f;
  if (!s.lora) throw Error({}, "", "--qlora needs LoRA adapters to train", "add --lora (e.g. --lora r=16,alpha=32,targets=q_proj,v_proj)");
  const LoraSettings& lora = *s.lora;
  std::vector<std::string> targets = lora.targets;
  if (targets.empty()) targets.assign(std::begin(kDefaultTargets), std::end(kDefaultTargets));
  bool all_linear = false;
  for (const auto& t : targets) all_linear = all_linear || t == "all-linear";
  if (all_linear && targets.size() > 1)
    throw Error({}, "", "LoRA targets 'all-linear' and named layers together", "give targets=all-linear alone, or a list of names");
  const std::set<std::string> heads = output_heads(model);

  std::set<std::string> names;
  for (const auto& l : model.layers) names.insert(l.name);
  std::vector<bool> target_used(targets.size(), false);
  auto is_target = [&](const Layer& l) {
    bool hit = false;
    if (all_linear) return linear_like(l) && !heads.count(l.name);
    for (std::size_t k = 0; k < targets.size(); ++k)
      if (target_matches(l.name, targets[k])) {
        hit = true;
        target_used[k] = true;
      }
    return hit;
  };

  // Which dtype the base layer's result has, for PEFT's closing `result.to(torch_result_dtype)`: a
  // lowered linear's autocast dtype, else the model's activations' dtype (Linear4bit returns its
  // input's dtype, float32 after prepare_model_for_kbit_training). A model whose activations mix
  // dtypes may differ; docs/fine-tuning.md.
  const DType result_dtype = s.precision != DType::f32 ? s.precision : s.param_dtype;

  auto out = std::make_shared<Model>();
  out->name = model.name;
  out->file = model.file;
  out->input_embeddings = model.input_embeddings;  // the layers keep their names
  out->layers.reserve(model.layers.size() * 2);
  for (const auto& l : model.layers) {
    const bool adapt = is_target(l);
    if (adapt && !linear_like(l))
      throw Error(l.pos, l.name,
                  "is a LoRA target but a " + l.kind + " layer: memfit models LoRA on linear and gpt2_conv1d layers "
                  "(PEFT's Linear and Conv1D wrappers)",
                  "give targets that name linear layers (e.g. targets=q_proj,v_proj), or all-linear");
    auto tied = l.attrs.find("tied_to");  // a weight shared with an embedding stays as it is
    const bool quantize = s.qlora && linear_like(l) && !heads.count(l.name) && (tied == l.attrs.end() || tied->second.text.empty());
    Layer base = l;
    if (quantize) {
      // transformers replace_with_bnb_linear: nn.Linear / Conv1D -> bnb.nn.Linear4bit with the same
      // in/out features and bias (Conv1D's weight is transposed on the way).
      auto bias = l.attrs.find("bias");
      base = make_layer("linear4bit", l.name, l.inputs,
                        {{"out_features", std::to_string(attr_int(l, "out_features"))},
                         {"bias", bias == l.attrs.end() || bias->second.flag ? "true" : "false"},
                         {"compute", dtype_name(s.qlora->compute)},
                         {"double_quant", s.qlora->double_quant ? "true" : "false"}},
                        l.pos);
      f.quantized.push_back(l.name);
    }
    if (!adapt) {
      out->layers.push_back(std::move(base));
      continue;
    }
    const std::string& L = l.name;
    auto fresh = [&](const std::string& suffix) {
      std::string n = L + "." + suffix;
      if (!names.insert(n).second)
        throw Error(l.pos, L, "LoRA would add a layer named '" + n + "', but the model already has one",
                    "rename that layer, or leave '" + L + "' out of the LoRA targets");
      return n;
    };
    const std::string base_name = fresh("base_layer"), input_name = fresh("lora_input");
    const std::string drop_name = lora.dropout > 0 ? fresh("lora_dropout") : "";
    const std::string a_name = fresh("lora_A"), b_name = fresh("lora_B"), scale_name = fresh("scaling"),
                      add_name = fresh("lora_add");
    base.name = base_name;
    const std::vector<std::string> x = l.inputs;
    out->layers.push_back(std::move(base));
    out->layers.push_back(make_layer("to", input_name, x, {{"dtype", dtype_name(lora.dtype)}}, l.pos));
    std::string a_in = input_name;
    if (!drop_name.empty()) {
      out->layers.push_back(make_layer("dropout", drop_name, {input_name}, {{"p", number_text(lora.dropout)}}, l.pos));
      a_in = drop_name;
    }
    out->layers.push_back(make_layer("linear", a_name, {a_in}, {{"out_features", std::to_string(lora.r)}, {"bias", "false"}}, l.pos));
    out->layers.push_back(make_layer("linear", b_name, {a_name},
                                     {{"out_features", std::to_string(attr_int(l, "out_features"))}, {"bias", "false"}}, l.pos));
    // LoraLayer.update_layer: scaling = lora_alpha / r (use_rslora=False, the default). `t * 2.0` reaches
    // mul.Tensor with the float wrapped as a 0-dim CPU double, which MulBackward saves: CPU memory even
    // on a GPU, so the scale keeps nothing there (measured on the CPU: 8 B per adapter,
    // tests/reference/cpu_saved_lora.json).
    out->layers.push_back(make_layer("scale", scale_name, {b_name}, {{"factor", number_text(lora.alpha / static_cast<double>(lora.r))}}, l.pos));
    out->layers.push_back(make_layer("add", add_name, {base_name, scale_name}, {}, l.pos));
    // (Linear4bit returns its input's dtype whatever autocast does: `.to(inp_dtype)`)
    out->layers.push_back(make_layer("to", L, {add_name}, {{"dtype", dtype_name(quantize ? s.param_dtype : result_dtype)}}, l.pos));
    f.layer_param_dtype[a_name] = lora.dtype;
    f.layer_param_dtype[b_name] = lora.dtype;
    f.adapted.push_back(L);
  }
  if (f.adapted.empty()) {
    std::string t;
    for (const auto& x : targets) t += (t.empty() ? "" : ",") + x;
    throw Error({model.file, 0, 0}, "",
                "no layer matches the LoRA targets " + t + " (PEFT: \"Target modules ... not found in the base model\")",
                "name linear layers by their last name component (e.g. targets=q_proj,v_proj or fc1), or use "
                "targets=all-linear; 'memfit model MODEL --json' lists the layer names");
  }
  if (!all_linear)
    for (std::size_t k = 0; k < targets.size(); ++k)
      if (!target_used[k]) f.unused_targets.push_back(targets[k]);
  if (static_cast<i64>(out->layers.size()) > kMaxLayers)
    throw Error({model.file, 0, 0}, "",
                "with LoRA the model has " + format_count(static_cast<i64>(out->layers.size())) + " layers, over " +
                    format_count(kMaxLayers),
                "target fewer layers");
  // PEFT marks only adapter parameters trainable (mark_only_lora_as_trainable: `"lora_" in n`).
  f.train = {"*.lora_A", "*.lora_B"};
  f.model = std::move(out);
  return f;
}

GraphSettings finetune_graph_settings(const TrainSettings& s, const FinetunedModel& f) {
  GraphSettings gs = graph_settings(s);
  if (!f.model) return gs;
  if (!s.freeze.empty())
    throw Error({}, "", "--freeze with LoRA: PEFT already freezes every parameter but the adapters",
                "leave out --freeze; --train NAME also trains a layer (PEFT's modules_to_save)");
  gs.train = f.train;
  gs.train.insert(gs.train.end(), s.train.begin(), s.train.end());
  gs.layer_param_dtype = f.layer_param_dtype;
  // A reentrant checkpoint of a frozen base model gets no gradient unless its input requires grad
  // (torch/utils/checkpoint.py CheckpointFunction). PEFT makes the input embedding's output require
  // it: PeftModel._prepare_model_for_gradient_checkpointing (peft_model.py, LoRA on an unquantized
  // model that has checkpointing on) and prepare_model_for_kbit_training (utils/other.py, QLoRA, when
  // use_reentrant) call model.enable_input_require_grads(). Modelled for reentrant checkpointing, where
  // without it the step would train nothing; get_input_embeddings() is the token embedding.
  if (!s.checkpoint.empty() && s.checkpoint_impl == CheckpointImpl::reentrant)
    if (const std::string* emb = input_embedding(*f.model)) gs.output_requires_grad.push_back(*emb);
  return gs;
}

std::vector<std::string> finetune_notes(const TrainSettings& s, const FinetunedModel& f) {
  std::vector<std::string> notes;
  if (s.param_dtype != DType::f32)
    notes.push_back(std::string("--dtype ") + (s.param_dtype == DType::bf16 ? "bf16-true" : "fp16-true") +
                    ": the model as model.to(torch." + dtype_name(s.param_dtype) +
                    "): floating parameters, buffers, their .grad, optimizer state (zeros_like) and activations in " +
                    dtype_name(s.param_dtype) + "; a float32 input batch is cast too, int64 inputs stay int64");
  if (s.grad_scaler)
    notes.push_back("torch.amp.GradScaler (torch/amp/grad_scaler.py): the scale and growth tracker (0-dim, kept), the scaled "
                    "loss, inv_scale and found_inf (0-dim, per step); gradients are unscaled in place");
  if (!f.model) return notes;
  const LoraSettings& l = *s.lora;
  std::string names;
  for (std::size_t i = 0; i < f.adapted.size() && i < 4; ++i) names += (i ? ", " : "") + f.adapted[i];
  if (f.adapted.size() > 4) names += ", ...";
  auto g = [](double v) { char b[32]; std::snprintf(b, sizeof b, "%g", v); return std::string(b); };
  notes.push_back("LoRA as PEFT's lora.Linear.forward computes it (huggingface/peft src/peft/tuners/lora/layer.py, PEFT 0.10 "
                  "to 0.17): r=" + std::to_string(l.r) + ", alpha=" + g(l.alpha) + " (scaling " +
                  g(l.alpha / static_cast<double>(l.r)) + "), dropout=" + g(l.dropout) +
                  (l.dropout > 0 ? "" : " (nn.Identity)") + " on " + std::to_string(f.adapted.size()) + " layer" +
                  (f.adapted.size() == 1 ? "" : "s") + " (" + names + "); adapters " + dtype_name(l.dtype) +
                  ", every other parameter frozen");
  for (const auto& t : f.unused_targets)
    notes.push_back("LoRA target '" + t + "' matches no layer (the others do; PEFT would accept this too)");
  if (!s.checkpoint.empty()) {
    const std::string* emb = input_embedding(*f.model);
    if (s.checkpoint_impl == CheckpointImpl::reentrant && emb)
      notes.push_back("reentrant checkpointing of a frozen model: '" + *emb + "' output requires grad, as PEFT's "
                      "model.enable_input_require_grads() makes it (peft_model.py _prepare_model_for_gradient_checkpointing, "
                      "utils/other.py prepare_model_for_kbit_training), so the checkpointed blocks get gradients");
    else if (emb && !s.qlora)
      notes.push_back("non-reentrant checkpointing: modelled without enable_input_require_grads; PEFT's get_peft_model on a "
                      "model with checkpointing already on calls it too, which adds the gradient of the first block's input");
  }
  if (s.qlora) {
    notes.push_back(std::to_string(f.quantized.size()) + " linear layer" + (f.quantized.size() == 1 ? "" : "s") +
                    " stored as bitsandbytes Linear4bit NF4 (nn/modules.py, functional.py quantize_4bit: packed uint8, "
                    "absmax per 64 weights" + (s.qlora->double_quant ? ", double-quantized to uint8 with a float32 absmax per 256 blocks" : "") +
                    "), dequantized to a " + dtype_name(s.qlora->compute) +
                    " [out, in] temporary in forward and again in backward (autograd/_functions.py MatMul4Bit, bitsandbytes "
                    "0.43 to 0.45); the output head and the other parameters stay float32 as prepare_model_for_kbit_training "
                    "leaves them (peft/utils/other.py). Not checked on a GPU: bitsandbytes needs CUDA");
    if (s.checkpoint.empty())
      notes.push_back("prepare_model_for_kbit_training turns gradient checkpointing on by default; without --checkpoint "
                      "memfit models the step without it, so saved activations are what a run without checkpointing keeps "
                      "(an upper bound; add --checkpoint with the blocks' regions, e.g. 'model.layers.*')");
    notes.push_back("the transient full-precision copy of each weight while it is quantized at load is not modelled");
  }
  return notes;
}

}  // namespace memfit

// One entry point for programs (the WebAssembly module, tests): a JSON request in, a JSON result out.
// The CLI parses its flags into the same OptionStrings, so both front ends build Options one way.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "memfit/estimate.hpp"
#include "memfit/onnx.hpp"

namespace memfit {

struct BuiltinModel {
  const char* name;  // file stem in models/ (models/hf/ for the configs)
  const char* text;  // the .memfit source, or the config.json
  const char* path = "";  // "models/resnet18.memfit", "models/hf/gpt2.json": the file name errors show
};
const std::vector<BuiltinModel>& builtin_models();  // generated from models/*.memfit at build time
// The Hugging Face configs shipped in models/hf/*.json (docs/hf-config.md), also generated at build time.
const std::vector<BuiltinModel>& builtin_hf_configs();
const BuiltinModel* find_builtin_model(std::string_view name);  // either list, by name
// A model's source text as every front end reads it: a memfit model, or a config.json built with the
// options' --seq/--attention/--head (which a memfit model refuses).
Model load_model_source(std::string_view source, std::string_view file, const Options& options);
inline constexpr const char* kDefaultModel = "question_cnn";

// Settings as the user typed them; unset fields keep memfit's defaults.
struct OptionStrings {
  std::optional<std::string> batch, dtype, optimizer, optimizer_impl, zero_grad, gpu, context, cublas_workspace,
      cudnn_workspace, iterations, pytorch, grad_accumulation, freeze, train, checkpoint, checkpoint_impl, seq,
      attention, head;
  // Fine-tuning (docs/fine-tuning.md): lora "r=16,alpha=32,dropout=0.05,targets=q_proj,v_proj" (or "on"
  // for PEFT's defaults), lora_dtype fp32|bf16|fp16, qlora on|off, grad_scaler on|off (default: on
  // for fp16 autocast).
  std::optional<std::string> lora, lora_dtype, qlora, grad_scaler;
  bool timeline = false, events = false;
};
Options make_options(const OptionStrings& s);

// Parse single option values shared by the CLI and the module ("fp16", "adam", "foreach", ...).
DType parse_precision(std::string_view s);  // the autocast dtype; f32 for fp32 and the *-true forms
// "bf16-true" / "fp16-true": model.to(dtype) (f32 for everything else)
DType parse_param_dtype(std::string_view s);
LoraSettings parse_lora(std::string_view spec);
Optimizer parse_optimizer(std::string_view s);
OptimizerImpl parse_optimizer_impl(std::string_view s);


// Request: {"command": "estimate" | "max-batch" | "max-seq" | "model" | "gpus" | "sweep" | "models" | "ops",
//           max-seq: "model" holds `$seq` where the sequence length goes; "seq_limit": N caps the search,
//           "model": "<text or JSON source>", "file": "name for errors",
//           "options": {"batch": "64", "dtype": "fp32", "optimizer": "sgd", "optimizer_impl": "foreach",
//                       "zero_grad": "set_to_none", "gpu": "RTX 3090", "context": "426MiB",
//                       "cublas_workspace": "...", "cudnn_workspace": "...", "iterations": "3",
//                       "grad_accumulation": "1", "freeze": "features.*", "train": "fc,layer4",
//                       "lora": "r=16,alpha=32,dropout=0.05,targets=q_proj,v_proj", "lora_dtype": "fp32",
//                       "qlora": "on", "grad_scaler": "off",
//                       "seq": "2048", "attention": "sdpa", "head": "mlm",   (a Hugging Face config.json)
//                       "checkpoint": "layer*", "checkpoint_impl": "reentrant" | "non-reentrant",
//                       "timeline": true, "events": true},
//           "sweep_up_to": 256, "sweep_points": 24, "dims": {"seq": 128}}
// Result: the command's JSON (as `memfit <command> --json` prints it), or {"error": {...}}.
// With `onnx_file`, the model is that ONNX file (the request has no "model"; "file" names it in
// errors) and the request may give "dims": {"seq": 128} for its symbolic input dimensions.
std::string handle_request(std::string_view request_json);
std::string handle_request(std::string_view request_json, ByteSource* onnx_file);

}  // namespace memfit

// Settings as the user typed them (CLI flags, the request API's "options") to Options: the one place
// that reads option strings, so the CLI and the WebAssembly module accept and refuse the same values.
#include <charconv>
#include <cmath>
#include <string>

#include "memfit/api.hpp"
#include "memfit/report.hpp"

namespace memfit {

namespace {

i64 parse_positive(const std::string& s, const char* what, i64 max) {
  i64 v = 0;
  auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (r.ec != std::errc() || r.ptr != s.data() + s.size() || v < 1 || v > max)
    throw Error({}, "", std::string(what) + " '" + s + "' is not a whole number from 1 to " + std::to_string(max),
                std::string("give e.g. ") + (std::string(what) == "batch"       ? "--batch 64"
                                             : std::string(what) == "iterations" ? "--iterations 3"
                                             : std::string(what) == "seq"        ? "--seq 2048"
                                                                                 : "--grad-accum 4"));
  return v;
}

// "features.*,classifier.0" -> globs; empty items are refused (a stray comma is a typo).
std::vector<std::string> parse_globs(const std::string& text, const char* flag) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (true) {
    std::size_t comma = text.find(',', start);
    std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    while (!item.empty() && item.front() == ' ') item.erase(item.begin());
    while (!item.empty() && item.back() == ' ') item.pop_back();
    if (item.empty())
      throw Error({}, "", std::string(flag) + " '" + text + "' has an empty name",
                  "give layer or region names separated by commas, e.g. " + std::string(flag) + " layer4,fc");
    out.push_back(std::move(item));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

// A workspace is one allocation per call: at most 1 TiB, beyond every GPU in the catalog (docs/gpu-catalog.md),
// so one that large could never be allocated anyway. The tighter bound than kMaxSizeBytes keeps
// workspace x calls (one per conv call, per iteration) far from 2^63.
// 2^24 tokens: beyond every published max_position_embeddings (Llama 3.1: 131,072), and T * T stays
// far inside int64 for the attention matrices an eager path would hold.
constexpr i64 kMaxSeq = i64{1} << 24;

constexpr i64 kMaxWorkspaceBytes = i64{1} << 40;

// on/off switches (--qlora, --grad-scaler, and their request fields)
bool parse_switch(const std::string& v, const char* what) {
  if (v == "on" || v == "true" || v == "1" || v == "yes") return true;
  if (v == "off" || v == "false" || v == "0" || v == "no") return false;
  throw Error({}, "", std::string(what) + " '" + v + "' is not on or off", std::string("give ") + what + " on or off");
}

DType parse_half_or_float(const std::string& v, const char* what) {
  if (v == "fp32" || v == "float32") return DType::f32;
  if (v == "bf16" || v == "bfloat16") return DType::bf16;
  if (v == "fp16" || v == "float16") return DType::f16;
  throw Error({}, "", std::string(what) + " '" + v + "' is not a floating dtype", "use fp32, bf16 or fp16");
}

// LoRA ranks people use are 4 to 256; 65,536 is past any layer's width and keeps r x features small.
constexpr i64 kMaxLoraRank = 65536;
i64 parse_workspace(const std::string& s, const char* what) {
  i64 v = parse_size(s, what);
  if (v > kMaxWorkspaceBytes)
    throw Error({}, "", std::string(what) + " '" + s + "' is larger than 1 TiB (" + format_count(kMaxWorkspaceBytes) +
                            " B), more than any GPU has",
                "give the workspace PyTorch would allocate, e.g. 4MiB");
  return v;
}
}  // namespace

Options make_options(const OptionStrings& s) {
  Options o;
  // Any batch whose bytes fit 64 bits is accepted; overflow is reported by the estimate itself.
  if (s.batch) o.train.batch = parse_positive(*s.batch, "batch", i64{1} << 50);
  if (s.dtype) {
    o.train.precision = parse_precision(*s.dtype);
    o.train.param_dtype = parse_param_dtype(*s.dtype);
  }
  if (s.optimizer) o.train.optimizer = parse_optimizer(*s.optimizer);
  if (s.optimizer_impl) o.train.impl = parse_optimizer_impl(*s.optimizer_impl);
  if (s.zero_grad) {
    if (*s.zero_grad == "set_to_none" || *s.zero_grad == "set-to-none" || *s.zero_grad == "none") o.train.set_to_none = true;
    else if (*s.zero_grad == "zero" || *s.zero_grad == "zeros") o.train.set_to_none = false;
    else throw Error({}, "", "unknown zero_grad mode '" + *s.zero_grad + "'", "use set-to-none (default) or zero");
  }
  if (s.pytorch) {
    if (*s.pytorch == "2" || *s.pytorch == "2.x") o.train.rules = TorchRules::v2;
    else if (*s.pytorch == "1.13") o.train.rules = TorchRules::v1_13;
    else throw Error({}, "", "unknown PyTorch rules '" + *s.pytorch + "'", "use 2 (default) or 1.13");
  }
  if (s.iterations) o.train.n_iterations = static_cast<int>(parse_positive(*s.iterations, "iterations", 250));
  if (s.gpu && !s.gpu->empty()) o.gpu = parse_gpu(*s.gpu);
  if (s.context) o.context_bytes = parse_size(*s.context, "the CUDA context size");
  if (s.cublas_workspace || s.cudnn_workspace) {
    Workspaces w = default_workspaces(o.gpu);
    if (s.cublas_workspace) w.cublas_bytes = parse_workspace(*s.cublas_workspace, "the cuBLAS workspace size");
    if (s.cudnn_workspace) w.cudnn_conv_bytes = parse_workspace(*s.cudnn_workspace, "the cuDNN workspace size");
    o.workspaces = w;
  }
  if (s.grad_accumulation)
    o.train.grad_accumulation = static_cast<int>(parse_positive(*s.grad_accumulation, "grad_accumulation", 1024));
  if (s.freeze) o.train.freeze = parse_globs(*s.freeze, "--freeze");
  if (s.train) o.train.train = parse_globs(*s.train, "--train");
  if (!o.train.freeze.empty() && !o.train.train.empty())
    throw Error({}, "", "both --freeze and --train are given", "give one: --freeze what stays fixed, or --train what learns");
  if (s.lora) o.train.lora = parse_lora(*s.lora);
  if (s.lora_dtype) {
    if (!o.train.lora) throw Error({}, "", "--lora-dtype without --lora", "add --lora (e.g. --lora r=16,alpha=32,targets=q_proj,v_proj)");
    o.train.lora->dtype = parse_half_or_float(*s.lora_dtype, "--lora-dtype");
  }
  if (s.qlora && parse_switch(*s.qlora, "--qlora")) {
    o.train.qlora = QloraSettings{};
    if (!o.train.lora) o.train.lora = LoraSettings{};  // QLoRA trains LoRA adapters (PEFT's defaults)
    if (o.train.param_dtype != DType::f32)
      throw Error({}, "", "--qlora with --dtype " + *s.dtype,
                  "QLoRA keeps every parameter that is not 4-bit in float32 (prepare_model_for_kbit_training): give "
                  "--dtype bf16 (autocast, as the usual QLoRA recipe trains) or fp32");
  }
  // GradScaler is what fp16 autocast training uses (torch.amp docs: "gradient scaling ... to prevent
  // underflow"); bf16 needs none.
  o.train.grad_scaler = s.grad_scaler ? parse_switch(*s.grad_scaler, "--grad-scaler") : o.train.precision == DType::f16;
  // --seq: any length whose [N, T, T] attention sizes stay inside 64 bits is read; the config's
  // max_position_embeddings bounds it (hf_config.cpp).
  if (s.seq) o.seq = parse_positive(*s.seq, "seq", kMaxSeq);
  if (s.attention) o.attention = parse_hf_attention(*s.attention);
  if (s.head) o.head = parse_hf_head(*s.head);
  if (s.checkpoint) o.train.checkpoint = parse_globs(*s.checkpoint, "--checkpoint");
  if (s.checkpoint_impl) {
    if (*s.checkpoint_impl == "reentrant" || *s.checkpoint_impl == "use_reentrant=True") o.train.checkpoint_impl = CheckpointImpl::reentrant;
    else if (*s.checkpoint_impl == "non-reentrant" || *s.checkpoint_impl == "non_reentrant" || *s.checkpoint_impl == "use_reentrant=False")
      o.train.checkpoint_impl = CheckpointImpl::non_reentrant;
    else
      throw Error({}, "", "unknown checkpoint implementation '" + *s.checkpoint_impl + "'",
                  "use reentrant (torch.utils.checkpoint use_reentrant=True, the default) or non-reentrant");
  }
  o.timeline = s.timeline;
  o.events = s.events;
  return o;
}

DType parse_param_dtype(std::string_view s) {
  if (s == "bf16-true" || s == "bfloat16-true") return DType::bf16;
  if (s == "fp16-true" || s == "float16-true") return DType::f16;
  return DType::f32;
}

LoraSettings parse_lora(std::string_view spec_view) {
  LoraSettings l;
  const std::string spec(spec_view);
  const std::string example = "--lora r=16,alpha=32,dropout=0.05,targets=q_proj,v_proj";
  if (spec.empty() || spec == "on" || spec == "default") return l;
  auto number = [&](const std::string& key, const std::string& v) {
    if (v.empty() || v.find_first_not_of("0123456789+-.eE") != std::string::npos)
      throw Error({}, "", "--lora " + key + "='" + v + "' is not a number", "give e.g. " + example);
    std::size_t used = 0;
    double d = 0;
    try {
      d = std::stod(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != v.size() || !std::isfinite(d)) throw Error({}, "", "--lora " + key + "='" + v + "' is not a number", "give e.g. " + example);
    return d;
  };
  bool in_targets = false;
  std::size_t start = 0;
  while (start <= spec.size()) {
    std::size_t comma = spec.find(',', start);
    std::string item = spec.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    start = comma == std::string::npos ? spec.size() + 1 : comma + 1;
    if (item.empty()) throw Error({}, "", "--lora '" + spec + "' has an empty item", "give " + example);
    auto eq = item.find('=');
    if (eq == std::string::npos) {
      // names after targets= continue the list: targets=q_proj,v_proj
      if (!in_targets) throw Error({}, "", "--lora item '" + item + "' is not key=value", "give " + example);
      l.targets.push_back(item);
      continue;
    }
    const std::string key = item.substr(0, eq), v = item.substr(eq + 1);
    in_targets = false;
    if (key == "r") {
      i64 r = 0;
      auto res = std::from_chars(v.data(), v.data() + v.size(), r);
      if (res.ec != std::errc() || res.ptr != v.data() + v.size() || r < 1 || r > kMaxLoraRank)
        throw Error({}, "", "--lora r='" + v + "' is not a whole number from 1 to " + std::to_string(kMaxLoraRank),
                    "give e.g. r=16");
      l.r = r;
    } else if (key == "alpha" || key == "lora_alpha") {
      l.alpha = number(key, v);
      if (!(l.alpha > 0)) throw Error({}, "", "--lora alpha must be positive", "give e.g. alpha=32");
    } else if (key == "dropout" || key == "lora_dropout") {
      l.dropout = number(key, v);
      if (!(l.dropout >= 0 && l.dropout < 1))
        throw Error({}, "", "--lora dropout=" + v + " is not in [0, 1)", "give e.g. dropout=0.05 (0 = no dropout)");
    } else if (key == "targets" || key == "target_modules") {
      if (v.empty()) throw Error({}, "", "--lora targets= is empty", "give e.g. targets=q_proj,v_proj or targets=all-linear");
      l.targets.push_back(v);
      in_targets = true;
    } else {
      throw Error({}, "", "unknown --lora key '" + key + "'", "use r, alpha, dropout and targets: " + example);
    }
  }
  return l;
}

DType parse_precision(std::string_view s) {
  if (s == "fp32" || s == "float32") return DType::f32;
  if (s == "bf16-true" || s == "bfloat16-true" || s == "fp16-true" || s == "float16-true") return DType::f32;
  if (s == "fp16" || s == "float16" || s == "amp-fp16") return DType::f16;
  if (s == "bf16" || s == "bfloat16" || s == "amp-bf16") return DType::bf16;
  throw Error({}, "", "unknown dtype '" + std::string(s) + "'",
              "use fp32, fp16 or bf16 (torch.autocast mixed precision, parameters stay float32), or bf16-true / fp16-true "
              "(model.to(dtype): parameters, gradients and optimizer state in half)");
}

Optimizer parse_optimizer(std::string_view s) {
  for (Optimizer o : {Optimizer::sgd, Optimizer::sgd_momentum, Optimizer::adam, Optimizer::adamw, Optimizer::adagrad,
                      Optimizer::rmsprop, Optimizer::adamw8bit, Optimizer::paged_adamw, Optimizer::paged_adamw8bit})
    if (s == optimizer_name(o)) return o;
  if (s == "momentum" || s == "sgd_momentum") return Optimizer::sgd_momentum;
  // transformers' TrainingArguments spellings (adamw_bnb_8bit, paged_adamw_32bit, paged_adamw_8bit)
  if (s == "adamw-8bit" || s == "adamw_8bit" || s == "adamw_bnb_8bit") return Optimizer::adamw8bit;
  if (s == "paged-adamw" || s == "paged_adamw_32bit") return Optimizer::paged_adamw;
  if (s == "paged-adamw8bit" || s == "paged_adamw_8bit") return Optimizer::paged_adamw8bit;
  throw Error({}, "", "unknown optimizer '" + std::string(s) + "'",
              "use sgd, sgd-momentum, adam, adamw, adagrad, rmsprop, or bitsandbytes' adamw8bit, paged_adamw, paged_adamw8bit");
}

OptimizerImpl parse_optimizer_impl(std::string_view s) {
  if (s == "foreach") return OptimizerImpl::foreach;
  if (s == "fused") return OptimizerImpl::fused;
  if (s == "for-loop" || s == "forloop" || s == "for_loop" || s == "single-tensor") return OptimizerImpl::for_loop;
  throw Error({}, "", "unknown optimizer implementation '" + std::string(s) + "'", "use foreach, fused or for-loop");
}

}  // namespace memfit

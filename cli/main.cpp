// The native `memfit` binary: a thin front end over the core (argument parsing and printing only).
// Exit status: 0 fits (or no GPU given), 1 does not fit, 2 bad input or usage, 3 no usable CUDA device.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "memfit/api.hpp"
#include "memfit/onnx.hpp"
#include "memfit/report.hpp"
#include "probe.hpp"

namespace {

constexpr int kExitFits = 0, kExitDoesNotFit = 1, kExitBadInput = 2;

// Reads at most kMaxSourceBytes + 1 bytes: enough for the parser to say "larger than 16 MiB", and
// bounded for /dev/zero or an endless pipe (which used to be read until memory ran out).
std::string read_bounded(std::istream& in) {
  std::string text;
  char chunk[65536];
  while (text.size() <= memfit::kMaxSourceBytes && in) {
    std::size_t want = std::min(sizeof chunk, memfit::kMaxSourceBytes + 1 - text.size());
    in.read(chunk, static_cast<std::streamsize>(want));
    text.append(chunk, static_cast<std::size_t>(in.gcount()));
  }
  return text;
}

// MODEL's source text and the name errors use: a path, '-' for standard input, or a builtin name.
std::pair<std::string, std::string> load_source(const std::string& arg) {
  std::string name = arg.empty() ? memfit::kDefaultModel : arg;
  if (name == "-") return {read_bounded(std::cin), "<stdin>"};
  std::error_code ec;
  if (std::filesystem::is_directory(name, ec))
    throw memfit::Error({name, 0, 0}, "", "is a directory, not a model file", "give a .memfit or .json file inside it");
  std::ifstream in(name, std::ios::binary);
  if (in) return {read_bounded(in), name};
  if (const auto* b = memfit::find_builtin_model(name)) return {b->text, b->path};
  throw memfit::Error({name, 0, 0}, "", "cannot open the model file", "give a path to a .memfit or .json file");
}

// MODEL: a path, '-' for standard input, or the name of a builtin model (models/NAME.memfit) or
// Hugging Face config (models/hf/NAME.json). A config.json is built with --seq/--attention/--head.
// The first bytes of a file, to tell an ONNX protobuf from a text or JSON model without the extension.
std::string file_head(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char head[16] = {};
  in.read(head, sizeof head);
  return std::string(head, static_cast<std::size_t>(in.gcount()));
}

// An ONNX model takes no Hugging Face settings (they would be ignored silently).
memfit::Model checked_onnx(memfit::Model m, const memfit::Options& options) {
  memfit::refuse_hf_options(options.hf(), m);
  return m;
}

memfit::Model load_model(const std::string& arg, const memfit::DimValues& dims, const memfit::Options& options) {
  std::string name = arg.empty() ? memfit::kDefaultModel : arg;
  if (name == "-") {
    std::string text = read_bounded(std::cin);
    // an ONNX model piped in: read from memory (a pipe cannot seek), so the 16 MiB bound applies here
    if (memfit::looks_like_onnx(text)) {
      if (text.size() > memfit::kMaxSourceBytes)
        throw memfit::Error({"<stdin>", 0, 0}, "", "an ONNX model on standard input is larger than 16 MiB",
                            "give the .onnx file's path instead (it is then read without its weights)");
      memfit::MemoryByteSource src(text);
      return checked_onnx(memfit::import_onnx(src, "<stdin>", dims), options);
    }
    return memfit::load_model_source(text, "<stdin>", options);
  }
  std::error_code ec;
  // An ifstream opens a directory on Linux and reads nothing ("the model has no layers").
  if (std::filesystem::is_directory(name, ec))
    throw memfit::Error({name, 0, 0}, "", "is a directory, not a model file",
                        "give a .memfit or .json file inside it, e.g. " + name + "/model.memfit");
  std::ifstream in(name, std::ios::binary);
  // ONNX files are read through a byte source that skips the weights (no 16 MiB limit: docs/onnx.md).
  if (in && (memfit::has_onnx_extension(name) || memfit::looks_like_onnx(file_head(name)))) {
    memfit::FileByteSource src(name);
    return checked_onnx(memfit::import_onnx(src, name, dims), options);
  }
  if (in && !dims.empty())
    throw memfit::Error({name, 0, 0}, "", "--dim applies to ONNX models only", "remove --dim, or give an .onnx file");
  if (in) return memfit::load_model_source(read_bounded(in), name, options);
  if (const auto* b = memfit::find_builtin_model(name)) return memfit::load_model_source(b->text, b->path, options);
  std::string names;
  for (const auto& m : memfit::builtin_models()) names += (names.empty() ? "" : ", ") + std::string(m.name);
  for (const auto& m : memfit::builtin_hf_configs()) names += ", " + std::string(m.name);
  throw memfit::Error({name, 0, 0}, "", "cannot open the model file", "give a path to a .memfit or .json file, or one of: " + names);
}

// How a Hugging Face config.json becomes a model (docs/hf-config.md).
void add_hf_settings(CLI::App* c, memfit::OptionStrings& s) {
  auto opt = [&](const char* flag, std::optional<std::string>& dst, const char* help) {
    c->add_option_function<std::string>(flag, [&dst](const std::string& v) { dst = v; }, help);
  };
  opt("--seq", s.seq, "config.json: tokens per sample (default 2048, at most max_position_embeddings)");
  opt("--attention", s.attention, "config.json: sdpa (default, as transformers) or eager");
  opt("--head", s.head, "BERT config.json: mlm (BertForMaskedLM) or cls (BertForSequenceClassification)");
}

void add_dims(CLI::App* c, std::vector<std::string>& dims) {
  c->add_option("--dim", dims, "ONNX: a size for a symbolic input dimension, NAME=SIZE (repeatable: --dim seq=128)")
      ->allow_extra_args(false);
}

void add_settings(CLI::App* c, memfit::OptionStrings& s) {
  auto opt = [&](const char* flag, std::optional<std::string>& dst, const char* help) {
    c->add_option_function<std::string>(flag, [&dst](const std::string& v) { dst = v; }, help);
  };
  opt("--batch,-b", s.batch, "batch size (default 64)");
  opt("--dtype", s.dtype,
      "fp32 (default), fp16 or bf16 (torch.autocast mixed precision), bf16-true or fp16-true (model.to(dtype))");
  opt("--optimizer", s.optimizer,
      "sgd (default), sgd-momentum, adam, adamw, adagrad, rmsprop; bitsandbytes: adamw8bit, paged_adamw, paged_adamw8bit");
  opt("--optimizer-impl", s.optimizer_impl, "foreach (default on CUDA), fused or for-loop");
  opt("--zero-grad", s.zero_grad, "set-to-none (default) or zero");
  opt("--gpu", s.gpu, "a GPU from 'memfit gpus' or a size: 24GiB, 12GB, 12000MiB");
  opt("--context", s.context, "CUDA context size outside the allocator (default 426MiB)");
  opt("--cublas-workspace", s.cublas_workspace, "cuBLAS workspace per thread (default by GPU)");
  opt("--cudnn-workspace", s.cudnn_workspace, "cuDNN workspace per convolution call (default 0: not modelled)");
  opt("--pytorch", s.pytorch, "follow PyTorch 2 (default) or 1.13 where their autograd/optimizer code differs");
  opt("--iterations", s.iterations, "training iterations simulated (default 3: first + steady state)");
  opt("--grad-accum", s.grad_accumulation, "micro-batches of --batch per optimizer step (default 1)");
  opt("--freeze", s.freeze, "freeze these layers/regions (globs, comma-separated): requires_grad=False");
  opt("--train", s.train, "train only these layers/regions (globs); every other parameter is frozen");
  opt("--lora", s.lora, "PEFT LoRA adapters: r=16,alpha=32,dropout=0.05,targets=q_proj,v_proj (or all-linear; 'on': PEFT defaults)");
  opt("--lora-dtype", s.lora_dtype, "LoRA adapter dtype: fp32 (default, PEFT's autocast_adapter_dtype), bf16 or fp16");
  c->add_flag_function("--qlora", [&s](std::int64_t) { s.qlora = "on"; },
                       "QLoRA: base linears as bitsandbytes NF4 4-bit (double quant, bf16 compute) + LoRA");
  c->add_flag_function("--grad-scaler", [&s](std::int64_t) { s.grad_scaler = "on"; },
                       "torch.amp.GradScaler (default on for --dtype fp16)");
  c->add_flag_function("--no-grad-scaler", [&s](std::int64_t) { s.grad_scaler = "off"; }, "fp16 autocast without GradScaler");
  add_hf_settings(c, s);
  opt("--checkpoint", s.checkpoint, "activation checkpointing: regions (globs, e.g. 'layer*'); each top-most match is one torch.utils.checkpoint call");
  opt("--checkpoint-impl", s.checkpoint_impl, "reentrant (default, as transformers' gradient_checkpointing_enable) or non-reentrant");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"memfit: will this model train on this GPU, and where does the memory go?"};
  app.require_subcommand(1);
  memfit::OptionStrings s;
  std::string model_arg;
  std::vector<std::string> dim_args;
  bool json = false, explain = false, timeline = false, events = false, probe_max_batch = false;

  auto* est = app.add_subcommand("estimate", "per-layer training memory, the peak and the verdict");
  add_dims(est, dim_args);
  est->add_option("MODEL", model_arg, "model file, '-' for stdin, or a builtin name (default question_cnn)");
  add_settings(est, s);
  est->add_flag("--json", json, "print the JSON result");
  est->add_flag("--explain", explain, "show the arithmetic behind every number");
  est->add_flag("--timeline", timeline, "include memory per op in the JSON");
  est->add_flag("--events", events, "print the planned alloc/free events the allocator replays (docs/json-output.md)");

  auto* mb = app.add_subcommand("max-batch", "the largest batch that fits on the GPU");
  add_dims(mb, dim_args);
  mb->add_option("MODEL", model_arg, "model file or builtin name");
  add_settings(mb, s);
  mb->add_flag("--json", json, "print the JSON result");

  auto* ms = app.add_subcommand("max-seq", "the longest sequence that fits on the GPU (MODEL with $seq where the length goes)");
  ms->add_option("MODEL", model_arg, "model file with $seq (text or JSON)");
  add_settings(ms, s);
  ms->add_flag("--json", json, "print the JSON result");
  memfit::i64 seq_limit = 0;
  ms->add_option("--seq-limit", seq_limit, "search no further than this length (e.g. max_position_embeddings)")
      ->check(CLI::Range(memfit::i64{1}, memfit::kSeqSearchLimit));

  auto* ops = app.add_subcommand("ops", "the layer kinds memfit knows (the op registry)");
  ops->add_flag("--json", json, "print JSON (docs/ops.json is a copy)");
  bool markdown = false;
  ops->add_flag("--markdown", markdown, "print the docs' layer table (docs/model-format.md)");

  auto* gpus = app.add_subcommand("gpus", "the GPU catalog");
  gpus->add_flag("--json", json, "print JSON");

  auto* model = app.add_subcommand("model", "print the model as flat JSON (blocks expanded, attributes resolved)");
  add_dims(model, dim_args);
  model->add_option("MODEL", model_arg, "model file or builtin name");
  model->add_flag("--json", json, "JSON (the only format)");
  add_hf_settings(model, s);

  auto* probe = app.add_subcommand("probe", "replay the allocation plan on this machine's CUDA GPU");
  add_dims(probe, dim_args);
  probe->add_option("MODEL", model_arg, "model file or builtin name");
  add_settings(probe, s);
  probe->add_flag("--json", json, "print JSON");
  probe->add_flag("--max-batch", probe_max_batch, "find the largest batch by real allocation");
  double probe_time_limit = memfit::probe::kDefaultTimeLimitSeconds;
  probe->add_option("--time-limit", probe_time_limit, "seconds before the probe stops and frees everything (default 60)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : kExitBadInput;
  }

  try {
    if (gpus->parsed()) {
      std::cout << (json ? memfit::gpus_json() : memfit::render_gpus_text());
      return kExitFits;
    }
    if (ops->parsed()) {
      if (json) {
        std::cout << memfit::ops_json();
      } else if (markdown) {
        std::cout << memfit::ops_markdown_table();
      } else {
        for (const memfit::OpRule* r : memfit::all_ops()) std::cout << r->kind << "  " << r->summary << "\n";
      }
      return kExitFits;
    }
    s.timeline = timeline;
    s.events = events && !json;
    memfit::DimValues dims;
    for (const auto& d : dim_args) {
      auto [k, v] = memfit::parse_dim_setting(d);
      if (!dims.emplace(k, v).second) throw memfit::Error({}, "", "--dim " + k + " is given twice", "give each dimension once");
    }
    if (ms->parsed()) {
      memfit::Options options = memfit::make_options(s);
      if (!options.gpu) throw memfit::Error({}, "", "max-seq needs a GPU", "add --gpu NAME or --gpu 80GiB");
      auto [source, file] = load_source(model_arg);
      memfit::SeqModelFactory f = memfit::seq_model_factory(std::move(source), std::move(file), options.hf());
      memfit::limit_seq_search(f, seq_limit);
      memfit::MaxSeq found = memfit::max_seq(f, options);
      std::cout << (json ? memfit::max_seq_json(f, options, found) : memfit::render_max_seq_text(f, options, found));
      return found.max_seq > 0 ? kExitFits : kExitDoesNotFit;
    }
    memfit::Options options = memfit::make_options(s);
    memfit::Model m = load_model(model_arg, dims, options);
    if (model->parsed()) {
      std::cout << memfit::model_json(m);
      return kExitFits;
    }
    if (probe->parsed()) return memfit::run_probe_command(m, options, json, probe_max_batch, probe_time_limit);
    if (mb->parsed()) {
      if (!options.gpu) throw memfit::Error({}, "", "max-batch needs a GPU", "add --gpu NAME or --gpu 24GiB");
      memfit::MaxBatch found = memfit::max_batch(m, options);
      if (json) std::cout << memfit::max_batch_json(m, options, found);
      else std::cout << memfit::render_max_batch_text(m, options, found);
      // max_batch 0: not even batch 1 fits, which is the "does not fit" verdict (exit 1), as for estimate.
      return found.max_batch > 0 ? kExitFits : kExitDoesNotFit;
    }
    if (events && json) options.events = true;  // the lines go into the JSON as "events"
    memfit::Estimate e = memfit::estimate(m, options);
    if (events && !json) std::cout << memfit::events_text(e);
    else std::cout << (json ? memfit::estimate_json(m, e) : memfit::render_text(m, e, explain));
    if (!e.fits) return kExitFits;  // no GPU given
    return *e.fits ? kExitFits : kExitDoesNotFit;
  } catch (const memfit::Error& e) {
    std::cerr << "memfit: " << e.what() << "\n";
    return kExitBadInput;
  } catch (const std::exception& e) {
    std::cerr << "memfit: internal error: " << e.what() << " (please report the model that caused it)\n";
    return kExitBadInput;
  }
}

// Speed targets of the core issue, measured (not asserted): run `build/memfit_bench`, or
// `tools/bench.sh` which builds it and writes bench/results.txt.
//   question CNN estimate < 50 us; ResNet-50 batch 64 estimate (allocator model included) < 2 ms;
//   max-batch for ResNet-50 < 50 ms; an 80-layer 70B-class transformer at seq 4096 < 1 s (issue 11), and
//   its max-seq search (full pipelines, one per length tried: no plan reuse, the peak is not affine in T).
//   A Hugging Face 70B config (llama-3.1-70b, 80 decoder layers) at seq 4096: read, built and estimated
//   well under 50 ms (BM_hf_config_estimate).
#include <benchmark/benchmark.h>

#include "memfit/api.hpp"
#include "memfit/estimate.hpp"
#include "memfit/report.hpp"

using namespace memfit;

namespace {
Model load(const char* name) {
  const BuiltinModel* b = find_builtin_model(name);
  if (!b) throw std::runtime_error(std::string("no builtin model ") + name);
  return parse_model(b->text, name);
}

void BM_estimate(benchmark::State& st, const char* name, i64 batch) {
  Model m = load(name);
  Options o;
  o.train.batch = batch;
  for (auto _ : st) benchmark::DoNotOptimize(estimate(m, o).peak_reserved_bytes);
}

void BM_parse_and_estimate_json(benchmark::State& st, const char* name) {
  const BuiltinModel* b = find_builtin_model(name);
  for (auto _ : st) {
    Model m = parse_model(b->text, name);
    benchmark::DoNotOptimize(estimate_json(m, Options{}));
  }
}

// An 80-layer, 70B-class decoder as memfit layers (Llama-2-70B's widths without grouped KV heads:
// d 8192, 64 heads, MLP 28672; no embedding), `$seq` where the sequence length goes.
std::string llama_like_json(int n_layers) {
  const int d = 8192, heads = 64, ff = 28672;
  std::string s = R"({"format": "memfit-model/1", "name": "llama70b_like", "layers": [)";
  s += R"({"name": "input", "kind": "input", "shape": [$seq, )" + std::to_string(d) + "]}";
  std::string prev = "input";
  auto layer = [&](const std::string& name, const std::string& kind, const std::string& from, const std::string& attrs) {
    s += ",\n{\"name\": \"" + name + "\", \"kind\": \"" + kind + "\", \"from\": [" + from + "]" + (attrs.empty() ? "" : ", " + attrs) + "}";
  };
  auto q = [](const std::string& n) { return "\"" + n + "\""; };
  const std::string lin = "\"bias\": false, \"out_features\": ";
  for (int b = 0; b < n_layers; ++b) {
    const std::string p = "model.layers." + std::to_string(b) + ".";
    layer(p + "ln1", "layer_norm", q(prev), "\"normalized_shape\": " + std::to_string(d));
    for (const char* n : {"q", "k", "v"}) {
      layer(p + n + "_proj", "linear", q(p + "ln1"), lin + std::to_string(d));
      layer(p + n + "h", "reshape", q(p + n + "_proj"), "\"shape\": \"$seqx" + std::to_string(heads) + "x" + std::to_string(d / heads) + "\"");
      layer(p + n + "t", "transpose", q(p + n + "h"), "\"dim0\": 1, \"dim1\": 2");
    }
    layer(p + "kT", "transpose", q(p + "kt"), "\"dim0\": 2, \"dim1\": 3");
    layer(p + "scores", "matmul", q(p + "qt") + ", " + q(p + "kT"), "");
    layer(p + "probs", "softmax", q(p + "scores"), "\"dim\": 3");
    layer(p + "ctx", "matmul", q(p + "probs") + ", " + q(p + "vt"), "");
    layer(p + "ctx_t", "transpose", q(p + "ctx"), "\"dim0\": 1, \"dim1\": 2");
    layer(p + "ctx_flat", "reshape", q(p + "ctx_t"), "\"shape\": \"$seqx" + std::to_string(d) + "\"");
    layer(p + "o_proj", "linear", q(p + "ctx_flat"), lin + std::to_string(d));
    layer(p + "attn_add", "add", q(p + "o_proj") + ", " + q(prev), "");
    layer(p + "ln2", "layer_norm", q(p + "attn_add"), "\"normalized_shape\": " + std::to_string(d));
    layer(p + "gate_proj", "linear", q(p + "ln2"), lin + std::to_string(ff));
    layer(p + "act", "silu", q(p + "gate_proj"), "");
    layer(p + "up_proj", "linear", q(p + "ln2"), lin + std::to_string(ff));
    layer(p + "mul", "mul", q(p + "act") + ", " + q(p + "up_proj"), "");
    layer(p + "down_proj", "linear", q(p + "mul"), lin + std::to_string(d));
    layer(p + "mlp_add", "add", q(p + "down_proj") + ", " + q(p + "attn_add"), "");
    prev = p + "mlp_add";
  }
  layer("norm", "layer_norm", q(prev), "\"normalized_shape\": " + std::to_string(d));
  layer("pool", "mean", q("norm"), "\"dims\": \"1\"");
  layer("lm_head", "linear", q("pool"), lin + "32000");
  return s + "]}";
}

Options llama_options() {
  Options o;
  o.train.batch = 1;
  o.train.precision = DType::bf16;
  o.gpu = parse_gpu("1200GiB");  // float32 weights + grads of 78 B parameters: 625 GB before activations
  return o;
}

void BM_estimate_seq(benchmark::State& st, int n_layers, i64 seq) {
  SeqModelFactory f = seq_model_factory(llama_like_json(n_layers), "llama70b_like.json");
  Model m = f.build(seq);
  Options o = llama_options();
  for (auto _ : st) benchmark::DoNotOptimize(estimate(m, o).peak_reserved_bytes);
}

void BM_max_seq(benchmark::State& st, int n_layers) {
  SeqModelFactory f = seq_model_factory(llama_like_json(n_layers), "llama70b_like.json");
  Options o = llama_options();
  MaxSeq r;
  for (auto _ : st) benchmark::DoNotOptimize(r = max_seq(f, o));
  st.counters["max_seq"] = static_cast<double>(r.max_seq);
  st.counters["probes"] = r.n_probes;
}

void BM_max_batch(benchmark::State& st, const char* name, const char* gpu) {
  Model m = load(name);
  Options o;
  o.gpu = parse_gpu(gpu);
  for (auto _ : st) benchmark::DoNotOptimize(max_batch(m, o).max_batch);
}
// Reads and builds the config (parse_model) and estimates it, as `memfit estimate llama-3.1-70b --seq 4096` does.
void BM_hf_config_estimate(benchmark::State& st, const char* name, i64 seq, i64 batch) {
  const BuiltinModel* b = find_builtin_model(name);
  Options o;
  o.seq = seq;
  o.train.batch = batch;
  try {
    for (auto _ : st) {
      Model m = parse_model(b->text, b->path, o.hf());
      benchmark::DoNotOptimize(estimate(m, o).peak_reserved_bytes);
    }
  } catch (const Error& e) {
    st.SkipWithError(e.what());  // before the transformer kinds exist: the config cannot be estimated
  }
}
}  // namespace

BENCHMARK_CAPTURE(BM_hf_config_estimate, llama_3_1_70b_seq4096_b1, "llama-3.1-70b", 4096, 1)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_hf_config_estimate, llama_3_1_8b_seq2048_b1, "llama-3.1-8b", 2048, 1)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_estimate, question_cnn_b64, "question_cnn", 64)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_parse_and_estimate_json, question_cnn, "question_cnn")->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_estimate, resnet50_b64, "resnet50", 64)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_parse_and_estimate_json, resnet50, "resnet50")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_max_batch, resnet50_a100_80gb, "resnet50", "A100 80GB")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_max_batch, question_cnn_rtx3060, "question_cnn", "RTX 3060 12GB")->Unit(benchmark::kMillisecond);

BENCHMARK_CAPTURE(BM_estimate_seq, llama70b_like_80l_seq4096, 80, 4096)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_max_seq, llama70b_like_80l_1200gib, 80)->Unit(benchmark::kMillisecond)->Iterations(1);

BENCHMARK_MAIN();

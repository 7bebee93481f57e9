// Speed targets of the core issue, measured (not asserted): run `build/memfit_bench`, or
// `tools/bench.sh` which builds it and writes bench/results.txt.
//   question CNN estimate < 50 us; ResNet-50 batch 64 estimate (allocator model included) < 2 ms;
//   max-batch for ResNet-50 < 50 ms; a Hugging Face 70B config (80 decoder layers) at seq 4096 estimated
//   well under 50 ms (issue 11), config.json read and built included.
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

BENCHMARK_MAIN();

// The transformer fixtures with activation checkpointing and with LoRA against torch 1.13 on the CPU:
// tests/reference/cpu_transformer_variants.json, recorded by `tools/transformer_fixtures.py variants`
// (VARIANTS there): llama_tiny and gpt2_tiny with every decoder layer in a torch.utils.checkpoint call,
// reentrant and non-reentrant; llama_tiny with PEFT LoRA (tools/lora_fixtures.py's LoraLinear) on
// q_proj,v_proj (dropout 0.05), the same under non-reentrant checkpointing and under reentrant checkpointing
// with PEFT's enable_input_require_grads (the token embedding's output requires grad), and on all-linear. memfit
// gets the CLI's options (OptionStrings::checkpoint / checkpoint_impl / lora, make_options) on the
// fixtures' twins (tests/fixtures/transformers/*.memfit):
//  * saved bytes (saved_tensors_hooks around forward + loss: the outer graph under checkpointing)
//    exactly, after one named CPU/CUDA term: CPU dropout saves a float32 noise tensor, CUDA a bool mask;
//  * live bytes through three iterations (SGD, foreach Adam, for-loop Adam) with the tolerance of
//    tests/transformer_test.cpp, plus the checkpoint's CPU RNG states (tests/checkpoint_test.cpp).
#include <catch2/catch.hpp>

#include "cpu_live_util.hpp"
#include "test_util.hpp"

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "memfit/api.hpp"
#include "memfit/estimate.hpp"

namespace {
using memfit::i64;
using nlohmann::json;

constexpr i64 kCpuNoiseExtraBytes = 4 - 1;  // float32 noise (CPU _dropout_impl) vs CUDA's bool mask
constexpr i64 kAdamCpuStepBytes = 4;        // torch 1.13 Adam's state['step'] per parameter with state
// torch.get_rng_state(): a 5,056 B CPU ByteTensor in torch 1.13, stashed per call by preserve_rng_state
// and once more by the rerun's fork_rng (tests/checkpoint_test.cpp kCpuRngStateBytes); CPU memory on a
// GPU too, so memfit counts none
constexpr i64 kCpuRngStateBytes = 5056;

memfit::Model twin(const std::string& path) {
  std::ifstream f(std::string(MEMFIT_SOURCE_DIR) + "/" + path, std::ios::binary);
  REQUIRE(f);
  return memfit::parse_model(std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()), path);
}

memfit::Options variant_options(const json& v, const std::string& optimizer = "sgd", const std::string& impl = "foreach") {
  memfit::OptionStrings os;
  os.batch = std::to_string(v["batch"].get<i64>());
  os.optimizer = optimizer;
  os.optimizer_impl = impl;
  os.pytorch = "1.13";  // the version recorded
  if (!v["checkpoint"].is_null()) {
    os.checkpoint = v["checkpoint"].get<std::string>();
    os.checkpoint_impl = v["checkpoint_impl"].get<std::string>();
  }
  if (!v["lora"].is_null()) os.lora = v["lora"].get<std::string>();
  memfit::Options o = memfit::make_options(os);
  o.workspaces = memfit::Workspaces{};  // the CPU has no cuBLAS workspaces
  return o;
}

// The 0-d float64 CPU scalars autograd saves (`0.5 * x`, LoRA's `* scaling`, attention's `* scaling`):
// the variant's own record, or under checkpointing the same model's without it (the rerun saves the
// same ones, in a graph the outer hooks do not see): the variants file, else cpu_saved_transformers.json.
i64 cpu_scalar_bytes(const json& doc, const json& v) {
  if (v["checkpoint"].is_null()) return v["saved"]["saved_cpu_scalar_bytes"].get<i64>();
  for (const json& u : doc["variants"])
    if (u["fixture"] == v["fixture"] && u["lora"] == v["lora"] && u["checkpoint"].is_null())
      return u["saved"]["saved_cpu_scalar_bytes"].get<i64>();
  REQUIRE(v["lora"].is_null());
  const json plain = memfit::test::load_reference("tests/reference/cpu_saved_transformers.json");
  for (const json& f : plain["fixtures"])
    if (f["name"] == v["fixture"]) return f["saved_cpu_scalar_bytes"].get<i64>();
  FAIL("no saved reference for " << v["fixture"]);
  return 0;
}
}  // namespace

TEST_CASE("transformer fixtures with checkpointing and LoRA: saved bytes equal torch 1.13's",
          "[transformer][reference][checkpoint][lora]") {
  const json doc = memfit::test::load_reference("tests/reference/cpu_transformer_variants.json");
  REQUIRE(doc["variants"].size() == 8);
  for (const json& v : doc["variants"]) {
    INFO(v["name"] << ": --checkpoint " << v["checkpoint"] << " --checkpoint-impl " << v["checkpoint_impl"] << " --lora "
                   << v["lora"]);
    const json& s = v["saved"];
    memfit::Estimate e = memfit::estimate(twin(v["twin"].get<std::string>()), variant_options(v));
    CHECK(e.total_params == s["params"].get<i64>());
    CHECK(e.total_grad_bytes == 4 * s["trainable_params"].get<i64>());  // float32 .grad of what trains
    CHECK(e.total_saved_bytes ==
          s["saved_total_bytes"].get<i64>() - kCpuNoiseExtraBytes * s["saved_dropout_noise_elements"].get<i64>());
    CHECK(static_cast<i64>(e.plan.checkpoints.size()) == (v["checkpoint"].is_null() ? 0 : 2));  // one call per layer
  }
}

TEST_CASE("transformer fixtures with checkpointing and LoRA: live bytes through three iterations match torch 1.13's",
          "[transformer][reference][checkpoint][lora][live]") {
  const json doc = memfit::test::load_reference("tests/reference/cpu_transformer_variants.json");
  int n_checked = 0;
  for (const json& v : doc["variants"]) {
    const i64 scalars = cpu_scalar_bytes(doc, v);
    for (const json& run : v["runs"]) {
      const std::string opt = run["optimizer"].get<std::string>(), impl = run["optimizer_impl"].get<std::string>();
      memfit::Options o = variant_options(v, opt, impl);
      memfit::Estimate e = memfit::estimate(twin(v["twin"].get<std::string>()), o);
      const bool adam = o.train.optimizer == memfit::Optimizer::adam;
      const i64 step_bytes = adam ? kAdamCpuStepBytes * run["trainable_param_tensors"].get<i64>() : 0;
      const i64 n_calls = static_cast<i64>(e.plan.checkpoints.size());
      const i64 rng = n_calls > 0 ? (n_calls + 1) * kCpuRngStateBytes : 0;  // at most this many alive at once
      INFO(v["name"] << " " << opt << " " << impl << " (CPU scalars " << scalars << " B, RNG states " << rng << " B)");
      CHECK(e.total_grad_bytes == run["grad_bytes_after"].get<i64>());
      CHECK(e.total_optimizer_bytes == run["optimizer_state_bytes_after"].get<i64>() - step_bytes);
      const memfit::test::Live mine = memfit::test::relative_live(e, o.train.n_iterations);
      n_checked += memfit::test::check_live_iterations(
          run, mine, {.step_bytes = step_bytes, .above = memfit::test::kLiveScalarSlackBytes + scalars + rng});
      // sharper: what PyTorch held above memfit is whole RNG stashes (at most calls + 1) plus at most the
      // scalars and Adam's step tensors (measured: llama_tiny reentrant SGD 10,120 B = 2 x 5,056 + 8)
      const i64 start1 = run["iterations"][0]["start_bytes"].get<i64>();
      for (const json& it : run["iterations"]) {
        const std::size_t ki = it["iteration"].get<std::size_t>() - 1;
        const i64 over = it["peak_bytes"].get<i64>() - start1 - mine.peak_cpu[ki];
        INFO("iteration " << ki + 1 << ": measured - memfit = " << over << " B");
        CHECK(over / kCpuRngStateBytes <= (n_calls > 0 ? n_calls + 1 : 0));
        CHECK(over % kCpuRngStateBytes <= memfit::test::kLiveScalarSlackBytes + scalars + step_bytes);
      }
    }
  }
  CHECK(n_checked == 8 * 3 * 3);
}

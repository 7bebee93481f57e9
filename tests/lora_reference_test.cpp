// LoRA (PEFT's lora.Linear.forward, inserted by core/src/pipeline/finetune.cpp) against PyTorch on the
// CPU, torch 1.13 (tools/lora_fixtures.py: PEFT's forward transcribed as plain torch modules):
//  * tests/reference/cpu_saved_lora.json: what autograd saved during forward + loss, exact bytes per
//    layer and in total, after two named CPU/CUDA terms (below);
//  * tests/reference/cpu_live_lora.json: live tensor bytes through three iterations, SGD and foreach
//    Adam, with the tolerance of tests/frozen_reference_test.cpp.
// Fixtures: tests/reference/fixtures/lora_mlp.memfit and lora_stack.memfit (linear on [N, T, D]).
// The options go through OptionStrings::lora and make_options, as the CLI's --lora does.
#include <catch2/catch.hpp>

#include "cpu_live_util.hpp"
#include "test_util.hpp"

#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "memfit/api.hpp"
#include "memfit/estimate.hpp"

namespace {
using memfit::i64;
using memfit::test::Live;
using memfit::test::relative_live;
using nlohmann::json;

// CPU-only bytes in the reference that memfit (CUDA) does not count:
//  * `result * scaling` with a Python float: mul.Tensor saves the wrapped 0-dim CPU double (8 B per
//    adapter, attributed to the LoRA module itself, e.g. "fc1"); on a GPU it stays in CPU memory;
//  * a dropout's float32 noise tensor (CPU) instead of CUDA's bool mask: 3 B per element.
constexpr i64 kWrappedScalarBytes = 8;
constexpr i64 kCpuNoiseExtraBytes = 4 - 1;
constexpr i64 kScalarSlackBytes = 16;   // 0-d CPU scalars (tests/live_bytes_test.cpp)
constexpr i64 kSgdStepCpuBytes = 288;   // torch 1.13's CPU SGD step scalars (tests/frozen_reference_test.cpp)

memfit::Model fixture(const std::string& relative) {
  std::ifstream in(std::string(MEMFIT_SOURCE_DIR) + "/" + relative);
  REQUIRE(in);
  std::stringstream ss;
  ss << in.rdbuf();
  return memfit::parse_model(ss.str(), relative);
}

memfit::Options lora_options(const std::string& spec, i64 batch, const std::string& optimizer = "sgd",
                             const std::string& impl = "foreach") {
  memfit::OptionStrings os;
  os.batch = std::to_string(batch);
  os.optimizer = optimizer;
  os.optimizer_impl = impl;
  os.pytorch = "1.13";
  os.lora = spec;
  return memfit::make_options(os);
}

}  // namespace

TEST_CASE("LoRA: saved activations match the CPU autograd reference of PEFT's forward", "[reference][lora]") {
  const json doc = memfit::test::load_reference("tests/reference/cpu_saved_lora.json");
  REQUIRE(doc["models"].size() >= 4);
  for (const json& m : doc["models"]) {
    const std::string spec = m["lora"].get<std::string>();
    SECTION(m["name"].get<std::string>() + " " + spec) {
      memfit::Model model = fixture(m["source"].get<std::string>());
      for (const json& b : m["batches"]) {
        const i64 n = b["batch"].get<i64>();
        INFO(m["name"] << " --lora " << spec << " batch " << n);
        memfit::Estimate e = memfit::estimate(model, lora_options(spec, n));
        CHECK(e.total_params == m["params"].get<i64>());
        CHECK(e.total_grad_bytes == 4 * m["trainable_params"].get<i64>());  // float32 adapters only
        std::map<std::string, i64> expected;
        i64 adapters = 0;
        for (const auto& [layer, bytes] : b["first_seen_bytes"].items()) {
          expected[layer] = bytes.get<i64>();
        }
        // the LoRA modules' own saves: the wrapped scalar, and nothing else
        for (const auto& nd : e.graph.nodes)
          if (nd.rule->kind == std::string_view("scale")) {
            const std::string base = nd.layer->name.substr(0, nd.layer->name.size() - std::string(".scaling").size());
            REQUIRE(expected.count(base));
            CHECK(expected[base] == kWrappedScalarBytes);
            expected[base] = 0;
            ++adapters;
          }
        // CPU dropout noise (float32) -> CUDA bool mask
        i64 noise = b["dropout_noise_elements"].get<i64>();
        for (auto& [layer, bytes] : expected)
          if (layer.size() > 13 && layer.substr(layer.size() - 13) == ".lora_dropout") {
            CHECK(bytes % 4 == 0);
            bytes -= bytes / 4 * kCpuNoiseExtraBytes;
          }
        CHECK(e.total_saved_bytes ==
              b["saved_bytes"].get<i64>() - adapters * kWrappedScalarBytes - noise * kCpuNoiseExtraBytes);
        for (const auto& r : e.layers) {
          const std::string& ln = e.graph.nodes[static_cast<std::size_t>(r.node)].layer->name;
          INFO("layer " << ln);
          auto it = expected.find(ln);
          CHECK(r.saved_bytes == (it == expected.end() ? 0 : it->second));
        }
      }
    }
  }
}

TEST_CASE("LoRA: tensor lifetimes match PyTorch's live bytes on the CPU", "[reference][lora][live]") {
  const json doc = memfit::test::load_reference("tests/reference/cpu_live_lora.json");
  REQUIRE(doc["models"].size() >= 4);
  int n_checked = 0;
  for (const json& m : doc["models"]) {
    const std::string spec = m["lora"].get<std::string>();
    memfit::Model model = fixture(m["source"].get<std::string>());
    for (const json& run : m["runs"]) {
      const std::string opt = run["optimizer"].get<std::string>();
      const std::string impl = run["optimizer_impl"].get<std::string>() == "default" ? "foreach" : run["optimizer_impl"].get<std::string>();
      memfit::Options o = lora_options(spec, run["batch"].get<i64>(), opt, impl);
      o.workspaces = memfit::Workspaces{};  // the CPU has no cuBLAS workspaces
      memfit::Estimate e = memfit::estimate(model, o);
      const bool adam = o.train.optimizer == memfit::Optimizer::adam;
      // torch 1.13 Adam: state['step'] is a 4-byte CPU tensor per trainable parameter
      const i64 step_bytes = adam ? 4 * run["trainable_param_tensors"].get<i64>() : 0;
      i64 adapters = 0;
      for (const auto& nd : e.graph.nodes) adapters += nd.rule->kind == std::string_view("scale");
      const i64 slack = kScalarSlackBytes + adapters * kWrappedScalarBytes;
      INFO(m["name"] << " --lora " << spec << " " << opt << " " << impl);
      CHECK(e.total_grad_bytes == run["grad_bytes_after"].get<i64>());
      CHECK(e.total_optimizer_bytes == run["optimizer_state_bytes_after"].get<i64>() - step_bytes);
      Live mine = relative_live(e, o.train.n_iterations);
      n_checked += memfit::test::check_live_iterations(
          run, mine, {.step_bytes = step_bytes, .below = slack, .above = slack}, [&](const json& it) -> std::optional<i64> {
            const bool sgd_step = it.value("peak_phase", std::string()) == "optimizer" && !adam;
            return sgd_step ? kSgdStepCpuBytes : 0;
          });
    }
  }
  CHECK(n_checked == 4 * 2 * 3);
}

// Frozen layers (transfer learning: --freeze / --train) against PyTorch on the CPU, torch 1.13:
//  * tests/reference/cpu_saved_frozen.json: what autograd saved for backward with requires_grad=False
//    on the frozen layers' parameters (tools/cpu_reference.py --train ...), exact bytes per layer and
//    in total, after the same two named CPU/CUDA terms as tests/reference_test.cpp;
//  * tests/reference/cpu_live_frozen.json: live tensor bytes through three iterations
//    (tools/cpu_live_reference.py --train ...), the tolerance of tests/live_bytes_test.cpp, plus the
//    measured .grad and optimizer-state bytes after iteration 3 and the live bytes at each iteration's start.
// Rows: resnet18 with only fc trainable, resnet18 with layer4 + fc, mobilenet_v2 with only the
// classifier, vgg16 with only the classifier (tests/reference/README.md).
//
// The options go through memfit::OptionStrings::freeze / ::train and make_options, the way the CLI's
// --freeze / --train do.
#include <catch2/catch.hpp>

#include "cpu_live_util.hpp"
#include "test_util.hpp"

#include <cstdlib>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "memfit/api.hpp"
#include "memfit/common.hpp"
#include "memfit/estimate.hpp"

namespace {
using memfit::test::Live;
using memfit::test::relative_live;

using nlohmann::json;
using memfit::i64;

constexpr i64 kScalarSlackBytes = 16;  // 0-d CPU scalars (tests/live_bytes_test.cpp)
// Live during torch 1.13's SGD step on the CPU and not in memfit's plan: measured 288 B above memfit
// in every SGD row's optimizer phase (this file's, and cpu_live_bytes.json's twelve SGD rows once the
// logits `out` alive through the step are counted: 608 = 320 + 288 for question_cnn, 384 = 96 + 288
// for tiny_mlp); CPU scalar tensors of the step, not CUDA allocator memory.
constexpr i64 kSgdStepCpuBytes = 288;

std::optional<std::string> opt_string(const json& v) {
  if (v.is_null()) return std::nullopt;
  return v.get<std::string>();
}

// Options for one reference row: torch 1.13 rules (the version recorded), the row's frozen layers.
memfit::Options frozen_options(const json& frozen, i64 batch, const std::string& optimizer = "sgd",
                               const std::string& impl = "foreach") {
  memfit::OptionStrings os;
  os.batch = std::to_string(batch);
  os.optimizer = optimizer;
  os.optimizer_impl = impl;
  os.pytorch = "1.13";
  os.freeze = opt_string(frozen["freeze"]);
  os.train = opt_string(frozen["train"]);
  return memfit::make_options(os);
}

bool inplace(const memfit::Layer& l) {
  auto it = l.attrs.find("inplace");
  return it != l.attrs.end() && it->second.flag;
}

i64 numel(const std::vector<i64>& shape) {
  i64 n = 1;
  for (i64 d : shape) n *= d;
  return n;
}

struct Expected {
  std::map<std::string, i64> per_layer;
  i64 total = 0;
};

// As tests/reference_test.cpp: the reference's first-seen bytes per layer, minus (1) the input batch
// and the int64 target (held by the loop, not counted by memfit) and (2) 3 B per element for a
// non-inplace dropout that saved its float32 noise tensor (CUDA saves a bool mask). A dropout whose
// input needs no grad (mobilenet_v2's classifier.0 behind frozen features) saves nothing: no term.
Expected expected_from_reference(const json& batch, const memfit::Estimate& e) {
  Expected x;
  std::set<i64> seen;
  std::map<std::string, const memfit::Layer*> layers;
  for (const auto& n : e.graph.nodes) layers[n.layer->name] = n.layer;
  for (const json& L : batch["layers"]) {
    std::string name = L["layer"].get<std::string>();
    INFO("reference layer " << name);
    REQUIRE(layers.count(name));
    i64 bytes = L["first_seen_bytes"].get<i64>();
    for (const json& s : L["saved"]) {
      if (!seen.insert(s["storage_id"].get<i64>()).second) continue;
      if (s["is_input"].get<bool>() && !s["is_param"].get<bool>()) bytes -= s["bytes"].get<i64>();
    }
    const memfit::Layer& l = *layers[name];
    if (l.kind == "dropout" && !inplace(l) && !L["saved"].empty()) {
      REQUIRE(L["saved"].size() == 1);
      const json& noise = L["saved"][0];
      REQUIRE(noise["dtype"] == "float32");
      bytes -= numel(noise["shape"].get<std::vector<i64>>()) * (4 - 1);
    }
    x.per_layer[name] += bytes;
    x.total += bytes;
  }
  return x;
}


// CPU-only transients by the op at a peak (tests/reference/README.md):
//  * a convolution, forward (`aten::conv2d`, mkldnn's blocked-layout output and weight reorders) or
//    backward (`ConvolutionBackward0`, reorders of grad_output/input/weight): their size depends on the
//    CPU kernel, so only "memfit is not above the measurement" is checked there;
//  * `aten::batch_norm` in forward: CPU native_batch_norm allocates two [C] float32 scratch tensors
//    besides save_mean / save_invstd (measured: 4 x C x 4 B live next to the output, C = 64, for a
//    batch norm whose parameters are frozen); allowed: 4 x C x 4 B for the widest batch norm.
bool conv_at(const std::string& top) {
  return top.find("Convolution") != std::string::npos || top == "aten::conv2d";
}
i64 bn_forward_slack(const memfit::Estimate& e, const std::string& top) {
  if (top != "aten::batch_norm") return 0;
  i64 c = 0;
  for (const auto& nd : e.graph.nodes)
    if (nd.rule->kind == std::string_view("batchnorm2d")) c = std::max(c, nd.shape.out.shape.at(1));
  return 4 * c * 4;
}

memfit::Model builtin(const std::string& name) {
  const memfit::BuiltinModel* b = memfit::find_builtin_model(name);
  REQUIRE(b != nullptr);
  return memfit::parse_model(b->text, name + ".memfit");
}

}  // namespace

TEST_CASE("saved activations with frozen layers match the CPU autograd reference", "[reference][frozen]") {
  const json doc = memfit::test::load_reference("tests/reference/cpu_saved_frozen.json");
  REQUIRE(doc["models"].size() >= 4);
  for (const json& m : doc["models"]) {
    const std::string name = m["name"].get<std::string>();
    const json& frozen = m["frozen"];
    SECTION(name + " freeze=" + frozen["freeze"].dump() + " train=" + frozen["train"].dump()) {
      memfit::Model model = builtin(name);
      for (const json& batch : m["batches"]) {
        const i64 n = batch["batch"].get<i64>();
        INFO(name << " batch " << n << " train=" << frozen["train"] << " freeze=" << frozen["freeze"]);
        memfit::Estimate e = memfit::estimate(model, frozen_options(frozen, n));
        CHECK(e.total_params == m["params"].get<i64>());
        CHECK(e.total_buffer_bytes == m["buffer_bytes"].get<i64>());
        // .grad exists for the trainable parameters only (fp32: 4 B each; count measured by torch)
        CHECK(e.total_grad_bytes == 4 * frozen["trainable_params"].get<i64>());
        Expected x = expected_from_reference(batch, e);
        CHECK(e.total_saved_bytes == x.total);
        for (std::size_t i = 0; i < e.layers.size(); ++i) {
          const std::string& ln = e.graph.nodes[static_cast<std::size_t>(e.layers[i].node)].layer->name;
          INFO("layer " << ln);
          auto it = x.per_layer.find(ln);
          CHECK(e.layers[i].saved_bytes == (it == x.per_layer.end() ? 0 : it->second));
        }
      }
    }
  }
}

TEST_CASE("tensor lifetimes with frozen layers match PyTorch's live bytes on the CPU", "[reference][frozen][live]") {
  const json doc = memfit::test::load_reference("tests/reference/cpu_live_frozen.json");
  REQUIRE(doc["models"].size() >= 4);
  int n_exact = 0;
  for (const json& m : doc["models"]) {
    const std::string name = m["name"].get<std::string>();
    const json& frozen = m["frozen"];
    memfit::Model model = builtin(name);
    for (const json& run : m["runs"]) {
      const std::string opt = run["optimizer"].get<std::string>(), impl = run["optimizer_impl"].get<std::string>();
      memfit::Options o = frozen_options(frozen, m["batch"].get<i64>(), opt, impl);
      o.workspaces = memfit::Workspaces{};  // the CPU has no cuBLAS workspaces
      memfit::Estimate e = memfit::estimate(model, o);
      const bool adam = o.train.optimizer == memfit::Optimizer::adam || o.train.optimizer == memfit::Optimizer::adamw;
      // torch 1.13 Adam: state['step'] is a 4-byte CPU tensor per parameter that has state (trainable)
      const i64 step_bytes = adam ? 4 * run["trainable_param_tensors"].get<i64>() : 0;
      INFO(name << " train=" << frozen["train"] << " freeze=" << frozen["freeze"] << " batch " << m["batch"] << " "
                << opt << " " << impl);
      // after three iterations: .grad of the trainable parameters, their optimizer state
      CHECK(e.total_grad_bytes == run["grad_bytes_after"].get<i64>());
      CHECK(e.total_optimizer_bytes == run["optimizer_state_bytes_after"].get<i64>() - step_bytes);
      Live mine = relative_live(e, o.train.n_iterations);
      n_exact += memfit::test::check_live_iterations(
          run, mine, {.step_bytes = step_bytes}, [&](const json& it) -> std::optional<i64> {
            const std::string top = it["peak_top"].get<std::string>();
            if (conv_at(top)) return std::nullopt;
            return bn_forward_slack(e, top);
          });
      const i64 start1 = run["iterations"][0]["start_bytes"].get<i64>();
      for (const json& it : run["iterations"]) {
        const int k = it["iteration"].get<int>();
        const std::size_t ki = static_cast<std::size_t>(k) - 1;
        INFO("iteration " << k);
        // the phases freezing changes most: backward (no input gradients into frozen regions, no .grad
        // for frozen parameters) and the optimizer step (state for trainable parameters only)
        for (const char* phase : {"backward", "optimizer"}) {
          if (!it["phase_peak_bytes"].contains(phase)) continue;
          const i64 mp = it["phase_peak_bytes"][phase].get<i64>() - start1;
          const std::string ptop =
              it.contains("phase_peak_top") ? it["phase_peak_top"].value(phase, std::string()) : std::string();
          INFO(phase << " phase: measured " << mp << " B at " << ptop << ", memfit "
                     << mine.phase_peak[ki][phase] << " B (CPU dropout " << mine.phase_peak_cpu[ki][phase] << " B)");
          REQUIRE(mine.phase_peak[ki].count(phase));
          CHECK(mp - mine.phase_peak[ki][phase] >= -kScalarSlackBytes);
          if (conv_at(ptop)) continue;
          const bool sgd_step = std::string_view(phase) == "optimizer" &&
                                (o.train.optimizer == memfit::Optimizer::sgd || o.train.optimizer == memfit::Optimizer::sgd_momentum);
          CHECK(mp - mine.phase_peak_cpu[ki][phase] <= kScalarSlackBytes + step_bytes + (sgd_step ? kSgdStepCpuBytes : 0));
          ++n_exact;
        }
      }
    }
  }
  CHECK(n_exact > 0);
}

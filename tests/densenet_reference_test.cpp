// A small DenseNet (tests/reference/fixtures/densenet_mini.memfit: dense layers that torch.cat all
// earlier outputs of their block, the first one a one-input torch.cat([x], 1); transitions with a
// 1x1 conv and an average pool) against PyTorch on the CPU, torch 1.13:
//  * tests/reference/cpu_saved_densenet.json (tools/cpu_reference.py): saved-for-backward bytes,
//    exact per layer and in total (the reference_test.cpp rules; the model has no dropout);
//  * tests/reference/cpu_live_densenet.json (tools/cpu_live_reference.py, batch 4): live bytes through
//    three iterations, the tolerance of tests/live_bytes_test.cpp, and the steady-state peak (the last
//    iteration) within 1% of the profiler's. Every tensor here gets gradients from several concats
//    (the block input from every dense layer's cat and the block's output cat), the case where memfit
//    summed the gradients with the size of a whole concat gradient storage.
// densenet_mini.json is the same model in the JSON form (what the Python tools read); the first test
// case checks that both forms are one model.
#include <catch2/catch.hpp>

#include "cpu_live_util.hpp"
#include "test_util.hpp"

#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "memfit/api.hpp"
#include "memfit/estimate.hpp"
#include "memfit/report.hpp"

namespace {

using nlohmann::json;
using memfit::i64;

constexpr i64 kScalarSlackBytes = 16;  // 0-d CPU scalars (tests/live_bytes_test.cpp)
constexpr const char* kText = "tests/reference/fixtures/densenet_mini.memfit";
constexpr const char* kJson = "tests/reference/fixtures/densenet_mini.json";

std::string read(const std::string& relative) {
  std::ifstream f(std::string(MEMFIT_SOURCE_DIR) + "/" + relative, std::ios::binary);
  REQUIRE(f);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

const memfit::Model& densenet() { return memfit::test::keep_model(read(kText), kText); }

memfit::Options options(i64 batch, const std::string& optimizer = "sgd", const std::string& impl = "foreach") {
  memfit::OptionStrings os;
  os.batch = std::to_string(batch);
  os.optimizer = optimizer;
  os.optimizer_impl = impl;
  os.pytorch = "1.13";  // the version the reference was recorded with
  return memfit::make_options(os);
}

// Raw live bytes of the plan (tests/live_bytes_test.cpp): per iteration the start and the peak,
// relative to the live bytes when iteration 1 starts. `peak_cpu` is the same replay with the CPU's
// batch-norm backward scratch: CPU native_batch_norm_backward holds a second tensor of its input's
// size while it runs (tests/reference/README.md; measured here: features.norm5's backward peaks
// at grad_input + 1 x its input + grad weight/bias, 49,152 B above memfit's node), so during the
// events of a batchnorm2d node's backward the CPU holds that many bytes more. CUDA does not; the
// CPU's extra can move the measured peak into a batch norm's backward (here from relu's backward,
// 384 B lower, to norm5's). The model has no dropout (no CPU mask term).
using memfit::test::Live;
using memfit::test::relative_live;

// memfit's live bytes around each concat's backward in the last iteration, in backward order
// (decreasing node index, the order torch's engine runs them: highest sequence number first).
// start: after every event of later nodes; max: the highest point during the concat's own events
// (its gradient handed to its inputs: kept, added in place, or summed into a new tensor); end: after them.
struct Span {
  std::string layer;
  i64 start = 0, max = 0, end = 0;
};
std::vector<Span> concat_backward_spans(const memfit::Estimate& e, int last_iteration) {
  struct Ev {
    int node;  // -1: the release after the loop, after every node
    i64 after;
  };
  std::vector<Ev> bwd;
  i64 live = 0, before_bwd = -1, start1 = -1;  // start1: live bytes when iteration 1 starts
  for (const auto& ev : e.plan.events) {
    const std::size_t t = static_cast<std::size_t>(ev.tensor);
    if (ev.iteration >= 1 && start1 < 0) start1 = live;
    const bool in_bwd = ev.iteration == last_iteration && ev.phase == memfit::Phase::backward;
    if (in_bwd && before_bwd < 0) before_bwd = live;
    live += ev.is_free ? -e.plan.tensors[t].bytes : e.plan.tensors[t].bytes;
    if (in_bwd) bwd.push_back({ev.node, live});
  }
  REQUIRE(before_bwd >= 0);
  std::vector<Span> out;
  for (int c = static_cast<int>(e.graph.nodes.size()) - 1; c >= 0; --c) {
    const memfit::Node& nd = e.graph.nodes[static_cast<std::size_t>(c)];
    if (nd.rule->kind != std::string_view("concat")) continue;
    Span s{nd.layer->name, before_bwd, before_bwd, before_bwd};
    bool started = false;
    for (const Ev& ev : bwd) {
      const bool later_node = ev.node > c;  // runs before c
      if (later_node) {
        s.start = s.max = s.end = ev.after;
        continue;
      }
      if (ev.node != c) break;  // an earlier node (or the release): c is done
      started = true;
      s.max = std::max(s.max, ev.after);
      s.end = ev.after;
    }
    (void)started;
    s.start -= start1;
    s.max -= start1;
    s.end -= start1;
    out.push_back(s);
  }
  return out;
}

}  // namespace

TEST_CASE("densenet_mini: the text fixture and its JSON form are the same model", "[reference][densenet]") {
  const memfit::Model& text = densenet();
  memfit::Model js = memfit::parse_model(read(kJson), kJson);
  CHECK(json::parse(memfit::model_json(text)) == json::parse(memfit::model_json(js)));
  // the one-input concats (torch.cat([x], 1) in the first dense layer of each block)
  int one_input_cats = 0;
  for (const auto& l : text.layers) one_input_cats += l.kind == "concat" && l.inputs.size() == 1;
  CHECK(one_input_cats == 2);
}

TEST_CASE("densenet_mini: saved activations match the CPU autograd reference", "[reference][densenet]") {
  const json doc = memfit::test::load_reference("tests/reference/cpu_saved_densenet.json");
  REQUIRE(doc["models"].size() == 1);
  const json& m = doc["models"][0];
  REQUIRE(m["name"] == "densenet_mini");
  const memfit::Model& model = densenet();
  for (const json& batch : m["batches"]) {
    const i64 n = batch["batch"].get<i64>();
    INFO("densenet_mini batch " << n);
    memfit::Estimate e = memfit::estimate(model, options(n));
    CHECK(e.total_params == m["params"].get<i64>());
    CHECK(e.total_buffer_bytes == m["buffer_bytes"].get<i64>());
    // expected: the reference's first-seen bytes per layer minus the input batch and the target
    // (held by the loop; memfit does not count them as saved), as tests/reference_test.cpp
    std::map<std::string, i64> per_layer;
    i64 total = 0;
    std::set<i64> seen;
    for (const json& L : batch["layers"]) {
      i64 bytes = L["first_seen_bytes"].get<i64>();
      for (const json& s : L["saved"])
        if (seen.insert(s["storage_id"].get<i64>()).second && s["is_input"].get<bool>() && !s["is_param"].get<bool>())
          bytes -= s["bytes"].get<i64>();
      per_layer[L["layer"].get<std::string>()] += bytes;
      total += bytes;
    }
    CHECK(total == batch["saved_total_bytes"].get<i64>() - batch["saved_input_bytes"].get<i64>());
    CHECK(e.total_saved_bytes == total);
    for (const auto& r : e.layers) {
      const std::string& ln = e.graph.nodes[static_cast<std::size_t>(r.node)].layer->name;
      INFO("layer " << ln);
      auto it = per_layer.find(ln);
      CHECK(r.saved_bytes == (it == per_layer.end() ? 0 : it->second));
    }
  }
}

TEST_CASE("densenet_mini: tensor lifetimes match PyTorch's live bytes on the CPU", "[reference][densenet][live]") {
  const json doc = memfit::test::load_reference("tests/reference/cpu_live_densenet.json");
  REQUIRE(doc["models"].size() == 1);
  const json& m = doc["models"][0];
  const memfit::Model& model = densenet();
  for (const json& run : m["runs"]) {
    const std::string opt = run["optimizer"].get<std::string>(), impl = run["optimizer_impl"].get<std::string>();
    memfit::Options o = options(m["batch"].get<i64>(), opt, impl);
    o.workspaces = memfit::Workspaces{};  // the CPU has no cuBLAS workspaces
    memfit::Estimate e = memfit::estimate(model, o);
    const bool adam = o.train.optimizer == memfit::Optimizer::adam || o.train.optimizer == memfit::Optimizer::adamw;
    const i64 step_bytes = adam ? 4 * run["param_tensors"].get<i64>() : 0;  // torch 1.13 Adam: CPU state['step']
    INFO("densenet_mini batch " << m["batch"] << " " << opt << " " << impl);
    CHECK(e.total_grad_bytes == run["grad_bytes_after"].get<i64>());
    CHECK(e.total_optimizer_bytes == run["optimizer_state_bytes_after"].get<i64>() - step_bytes);
    Live mine = relative_live(e, o.train.n_iterations);
    REQUIRE(mine.peak.size() == run["iterations"].size());
    const i64 start1 = run["iterations"][0]["start_bytes"].get<i64>();
    for (const json& it : run["iterations"]) {
      const int k = it["iteration"].get<int>();
      const std::size_t ki = static_cast<std::size_t>(k) - 1;
      const i64 measured_start = it["start_bytes"].get<i64>() - start1;
      const i64 measured = it["peak_bytes"].get<i64>() - start1;
      INFO("iteration " << k << ": measured start " << measured_start << " B, memfit " << mine.start[ki]
                        << " B; measured peak " << measured << " B, memfit " << mine.peak[ki] << " B, peak at "
                        << it["peak_top"] << " (" << it["peak_phase"] << ")");
      CHECK(std::llabs(measured_start - mine.start[ki] - (k > 1 ? step_bytes : 0)) <= kScalarSlackBytes);
      CHECK(measured - mine.peak[ki] >= -kScalarSlackBytes);  // memfit never above what PyTorch held
      const std::string top = it["peak_top"].get<std::string>();
      INFO("memfit with the CPU's batch-norm backward scratch: " << mine.peak_cpu[ki] << " B");
      if (k == static_cast<int>(run["iterations"].size())) {
        // the steady state: within 1% of the profiler, raw and with the CPU-only scratch
        CHECK(std::llabs(measured - mine.peak[ki]) * 100 <= measured);
        CHECK(std::llabs(measured - mine.peak_cpu[ki]) * 100 <= measured);
      }
      if (top.find("Convolution") != std::string::npos) continue;  // mkldnn reorders: CPU-only transients
      CHECK(measured - mine.peak_cpu[ki] >= -kScalarSlackBytes);
      CHECK(measured - mine.peak_cpu[ki] <= kScalarSlackBytes + step_bytes);
    }
    // Every concat's backward in the last iteration: torch's CatBackward0 nodes in execution order
    // against memfit's concats in backward order. Live bytes when the node starts, the highest point
    // inside it (where its gradient is summed into the input buffers of its inputs: in torch's engine
    // that happens inside evaluate_function) and when the next node starts. (Not the node's own end:
    // a free at its very end can carry a later microsecond than the profiler's end of the node; the
    // four runs of the reference differ there and agree at the next node's start.) No CPU-only kernel
    // runs in a cat's backward (narrow views and additions), so these agree up to Adam's CPU step tensors.
    struct Measured {
      i64 start, max, next_start;
    };
    std::vector<Measured> cats;
    const json& nodes = run["backward_nodes"];
    for (std::size_t i = 0; i + 1 < nodes.size(); ++i)
      if (nodes[i][0] == "CatBackward0")
        cats.push_back({nodes[i][1].get<i64>(), nodes[i][2].get<i64>(), nodes[i + 1][1].get<i64>()});
    std::vector<Span> spans = concat_backward_spans(e, o.train.n_iterations);
    REQUIRE(cats.size() == spans.size());
    REQUIRE(cats.size() == 9);
    for (std::size_t c = 0; c < cats.size(); ++c) {
      const Span& s = spans[c];
      INFO("backward of " << s.layer << ": measured start / max / next node's start " << cats[c].start << " / "
                          << cats[c].max << " / " << cats[c].next_start << " B, memfit " << s.start << " / " << s.max
                          << " / " << s.end << " B");
      CHECK(std::llabs(cats[c].start - step_bytes - s.start) <= kScalarSlackBytes);
      CHECK(std::llabs(cats[c].max - step_bytes - s.max) <= kScalarSlackBytes);
      CHECK(std::llabs(cats[c].next_start - step_bytes - s.end) <= kScalarSlackBytes);
    }
  }
}

// Activation checkpointing (--checkpoint / --checkpoint-impl) against torch 1.13 on the CPU:
// tests/reference/cpu_live_checkpoint.json, recorded by tools/cpu_checkpoint_reference.py (resnet18 at
// 64x64, batch 2, layer1..layer4 checkpointed; an MLP stack, batch 256, layers.0..layers.3), each
// without checkpointing, reentrant and non-reentrant. Compared as tests/live_bytes_test.cpp does:
// memfit's raw live bytes (no rounding, no workspaces) never above the measurement, and equal to it
// within the CPU-only terms where no convolution kernel sets the peak; the outer graph's saved bytes
// (saved_tensors_hooks) exactly. Plus the schedule's shape and the errors, from torch/utils/checkpoint.py.
#include <catch2/catch.hpp>

#include "cpu_live_util.hpp"
#include "test_util.hpp"

#include <nlohmann/json.hpp>

#include "memfit/api.hpp"
#include "memfit/estimate.hpp"

namespace {
using memfit::i64;
using nlohmann::json;

constexpr i64 kScalarSlackBytes = 16;  // 0-d CPU scalars (tests/live_bytes_test.cpp)
// torch 1.13's SGD step on the CPU holds 288 B memfit's plan does not (tests/frozen_reference_test.cpp)
constexpr i64 kSgdStepCpuBytes = 288;
// preserve_rng_state=True (the default) stashes torch.get_rng_state(), a CPU ByteTensor of 5,056 B
// in torch 1.13 (/usr/bin/python3 -c "import torch; print(torch.get_rng_state().numel())"), per call:
// reentrant in ctx.fwd_cpu_state until the graph is freed, non-reentrant in the rerun's closure; and
// fork_rng takes one more while a rerun runs (checkpoint.py CheckpointFunction.forward / backward,
// _checkpoint_without_reentrant). On a GPU these are CPU tensors too (torch.cuda.get_rng_state()
// returns a CPU ByteTensor), outside the CUDA caching allocator, so memfit does not count them.
constexpr i64 kCpuRngStateBytes = 5056;

bool conv_at(const std::string& top) {
  return top.find("Convolution") != std::string::npos || top == "aten::conv2d";
}

memfit::Model load(const std::string& src) {
  std::ifstream f(std::string(MEMFIT_SOURCE_DIR) + "/" + src, std::ios::binary);
  REQUIRE(f);
  return memfit::parse_model(std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()), src);
}

memfit::Options reference_options(i64 batch, const json& regions, const std::string& impl) {
  memfit::OptionStrings os;
  os.batch = std::to_string(batch);
  os.pytorch = "1.13";
  if (impl != "none") {
    std::string globs;
    for (const auto& r : regions) globs += (globs.empty() ? "" : ",") + r.get<std::string>();
    os.checkpoint = globs;
    os.checkpoint_impl = impl;
  }
  memfit::Options o = memfit::make_options(os);
  o.workspaces = memfit::Workspaces{};  // the CPU has no cuBLAS workspaces
  return o;
}
}  // namespace

TEST_CASE("checkpointed regions match PyTorch's live bytes on the CPU", "[reference][checkpoint][live]") {
  const json doc = memfit::test::load_reference("tests/reference/cpu_live_checkpoint.json");
  REQUIRE(doc["models"].size() == 2);
  int n_exact = 0;
  for (const json& m : doc["models"]) {
    memfit::Model model = load(m["source"].get<std::string>());
    for (const json& run : m["runs"]) {
      const std::string impl = run["checkpoint_impl"].get<std::string>();
      memfit::Options o = reference_options(m["batch"].get<i64>(), m["checkpoint"], impl);
      memfit::Estimate e = memfit::estimate(model, o);
      INFO(m["name"] << " batch " << m["batch"] << " checkpoint " << impl);
      CHECK(e.total_saved_bytes == run["saved"]["total_bytes"].get<i64>());
      memfit::test::Live mine = memfit::test::relative_live(e, o.train.n_iterations);
      const i64 n_calls = static_cast<i64>(e.plan.checkpoints.size());
      const i64 rng = n_calls > 0 ? (n_calls + 1) * kCpuRngStateBytes : 0;  // at most this many alive at once
      bool has_conv = false;
      for (const auto& nd : e.graph.nodes) has_conv = has_conv || nd.rule->kind == std::string_view("conv2d");
      const i64 start1 = run["iterations"][0]["start_bytes"].get<i64>();
      for (const json& it : run["iterations"]) {
        const std::size_t ki = it["iteration"].get<std::size_t>() - 1;
        const i64 measured = it["peak_bytes"].get<i64>() - start1;
        const std::string top = it["peak_top"].get<std::string>();
        INFO("iteration " << ki + 1 << ": measured " << measured << " B, memfit " << mine.peak[ki] << " B, peak at " << top);
        CHECK(measured - mine.peak[ki] >= -kScalarSlackBytes);
        if (!conv_at(top)) {
          CHECK(measured - mine.peak_cpu[ki] <= kScalarSlackBytes + rng);
          ++n_exact;
        }
        for (const char* phase : {"forward", "backward", "optimizer"}) {
          if (!it["phase_peak_bytes"].contains(phase)) continue;
          // CPU convolutions reorder their weights in forward (mkldnn): not a CUDA allocation
          if (std::string_view(phase) == "forward" && has_conv) continue;
          const i64 mp = it["phase_peak_bytes"][phase].get<i64>() - start1;
          const std::string ptop = it["phase_peak_top"].value(phase, std::string());
          INFO(phase << " phase: measured " << mp << " B at " << ptop << ", memfit " << mine.phase_peak[ki][phase] << " B");
          REQUIRE(mine.phase_peak[ki].count(phase));
          CHECK(mp - mine.phase_peak[ki][phase] >= -kScalarSlackBytes);
          if (conv_at(ptop)) continue;
          CHECK(mp - mine.phase_peak_cpu[ki][phase] <=
                kScalarSlackBytes + rng + (std::string_view(phase) == "optimizer" ? kSgdStepCpuBytes : 0));
          ++n_exact;
        }
      }
    }
  }
  CHECK(n_exact > 0);
}

namespace {
int count_steps(const std::vector<memfit::Step>& steps, memfit::Step::Kind k) {
  int n = 0;
  for (const auto& s : steps) n += s.kind == k ? 1 : 0;
  return n;
}
}  // namespace

TEST_CASE("checkpoint schedules follow torch.utils.checkpoint per version", "[checkpoint]") {
  memfit::Model model = load("tests/reference/fixtures/ckpt_mlp.memfit");
  memfit::TrainSettings t;
  t.batch = 4;
  t.n_iterations = 2;
  t.checkpoint = {"layers.*"};
  memfit::Graph g = memfit::build_graph(model, memfit::graph_settings(t));
  // four calls (layers.0 .. layers.3, not `layers` itself: its children match, the top-most do), each
  // block fc1, act, fc2, add; its input is the previous block's output (or embed's)
  auto segs = memfit::checkpoint_segments(g, t);
  REQUIRE(segs.size() == 4);
  for (const auto& sg : segs) {
    CHECK(sg.last - sg.first + 1 == 4);
    CHECK(sg.inputs.size() == 1);
    CHECK(sg.outputs.size() == 1);
    CHECK(sg.last_saver == sg.last - 1);  // fc2 saves its input; the residual add saves nothing
  }
  // reentrant: the whole block is rerun, per call and iteration
  CHECK(count_steps(memfit::build_schedule(g, t), memfit::Step::Kind::recompute) == 4 * 4 * 2);
  // non-reentrant, PyTorch 2.x: the rerun stops after fc2, the last node whose backward unpacks
  // something (checkpoint.py Rule 5, _StopRecomputationError); 1.13 has no early stop
  t.checkpoint_impl = memfit::CheckpointImpl::non_reentrant;
  CHECK(count_steps(memfit::build_schedule(g, t), memfit::Step::Kind::recompute) == 3 * 4 * 2);
  t.rules = memfit::TorchRules::v1_13;
  CHECK(count_steps(memfit::build_schedule(g, t), memfit::Step::Kind::recompute) == 4 * 4 * 2);
  // checkpointing the enclosing region makes one call of all four blocks
  t.checkpoint = {"layers"};
  CHECK(memfit::checkpoint_segments(g, t).size() == 1);
}

TEST_CASE("checkpoint settings that PyTorch would refuse or that name nothing are errors", "[checkpoint]") {
  memfit::Model model = load("tests/reference/fixtures/ckpt_mlp.memfit");
  memfit::Options o;
  o.train.batch = 4;
  o.train.checkpoint = {"blocks.*"};
  CHECK_THROWS_WITH(memfit::estimate(model, o), Catch::Contains("matches no region"));
  // a reentrant call whose only input is the batch (requires_grad=False): CheckpointFunction's output
  // does not require grad, its parameters get no gradient (checkpoint.py check_backward_validity warns)
  memfit::Model first = memfit::parse_model("input 16\nb.fc: fc 16\nb.act: relu\nhead: fc 4\n", "t.memfit");
  o.train.checkpoint = {"b"};
  CHECK_THROWS_WITH(memfit::estimate(first, o), Catch::Contains("none of its inputs requires grad"));
  o.train.checkpoint_impl = memfit::CheckpointImpl::non_reentrant;  // the hooks version has no such limit
  CHECK_NOTHROW(memfit::estimate(first, o));
  memfit::OptionStrings bad;
  bad.checkpoint_impl = "sometimes";
  CHECK_THROWS_WITH(memfit::make_options(bad), Catch::Contains("unknown checkpoint implementation"));
  bad = {};
  bad.checkpoint = "layer1,,layer2";
  CHECK_THROWS_WITH(memfit::make_options(bad), Catch::Contains("empty name"));
}

TEST_CASE("values every block reads from outside are inputs of each call", "[checkpoint]") {
  // `mask` stands for an attention mask or rotary cos/sin computed once and read by every layer
  memfit::Model m = memfit::parse_model(
      "input 64\nembed: fc 64\nmask: fc 64 from=embed\n"
      "blocks.0.fc: fc 64 from=embed\nblocks.0.mul: mul from=blocks.0.fc,mask\n"
      "blocks.1.fc: fc 64 from=blocks.0.mul\nblocks.1.mul: mul from=blocks.1.fc,mask\nhead: fc 4\n",
      "mask.memfit");
  for (memfit::CheckpointImpl impl : {memfit::CheckpointImpl::reentrant, memfit::CheckpointImpl::non_reentrant}) {
    memfit::Options o;
    o.train.batch = 2;
    o.train.checkpoint = {"blocks.*"};
    o.train.checkpoint_impl = impl;
    memfit::Estimate e = memfit::estimate(m, o);
    REQUIRE(e.plan.checkpoints.size() == 2);
    for (const auto& sg : e.plan.checkpoints) CHECK(sg.inputs.size() == 2);  // the hidden state and the mask
    // reentrant: each call's ctx.save_for_backward keeps both; a storage counts where it is first saved:
    // embed's output was already saved by `mask` (a linear keeps its input), so the calls add the mask
    // (blocks.0) and blocks.0.mul's output (blocks.1), 2 x 64 x 4 B each; blocks.1's mask is the same storage
    if (impl == memfit::CheckpointImpl::reentrant) {
      i64 ckpt_inputs = 0;
      for (const auto& r : e.plan.saved)
        if (std::string_view(r.role).find("checkpoint input") != std::string_view::npos && r.owner == r.node) ckpt_inputs += r.storage_bytes;
      CHECK(ckpt_inputs == 2 * (2 * 64 * 4));
    }
  }
}

TEST_CASE("checkpointing a Llama's decoder layers: mask and rotary cos/sin are held by every call", "[checkpoint]") {
  memfit::Model m = load("tests/fixtures/transformers/llama_tiny.memfit");
  memfit::Options o;
  o.train.batch = 2;
  const i64 plain = memfit::estimate(m, o).total_saved_bytes;
  o.train.checkpoint = {"model.layers.*"};
  for (memfit::CheckpointImpl impl : {memfit::CheckpointImpl::reentrant, memfit::CheckpointImpl::non_reentrant}) {
    o.train.checkpoint_impl = impl;
    memfit::Estimate e = memfit::estimate(m, o);
    REQUIRE(e.plan.checkpoints.size() == 2);
    for (const auto& sg : e.plan.checkpoints) {
      CHECK(sg.inputs.size() == 4);  // hidden state, model.mask, model.rotary_emb:0 (cos), :1 (sin)
      // PyTorch 2.x non-reentrant stops the rerun at mlp.down_proj (the residual add saves nothing)
      if (impl == memfit::CheckpointImpl::non_reentrant)
        CHECK(e.graph.nodes[static_cast<std::size_t>(sg.recompute_last)].layer->name.find("mlp.down_proj") != std::string::npos);
    }
    CHECK(e.total_saved_bytes < plain);
    CHECK(e.recompute_flops > 0);
  }
}

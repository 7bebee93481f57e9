// The plan's live bytes as the CPU profiler sees them, and the per-iteration comparison with a
// recorded run, shared by the CPU reference tests (tests/frozen_reference_test.cpp,
// tests/densenet_reference_test.cpp, tests/lora_reference_test.cpp, tests/transformer_test.cpp,
// tests/transformer_variants_test.cpp).
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "memfit/estimate.hpp"

namespace memfit::test {

// Raw live bytes of the plan (tests/live_bytes_test.cpp): per iteration the start and the peak,
// relative to the live bytes when iteration 1 starts, overall and per phase; `_cpu` with the CPU's
// extra bytes: each live dropout mask at 4 B/element (CPU dropout's float32 noise tensor) instead of
// CUDA's 1, and while a batch norm's backward runs a second tensor of its input's size (CPU
// native_batch_norm_backward's scratch; tests/densenet_reference_test.cpp measures it).
struct Live {
  std::vector<i64> start, peak, peak_cpu;
  std::vector<std::map<std::string, i64>> phase_peak, phase_peak_cpu;  // phase name -> bytes
};
inline Live relative_live(const memfit::Estimate& e, int n_iterations) {
  std::vector<bool> is_mask(e.plan.tensors.size(), false);
  for (std::size_t t = 0; t < e.plan.tensors.size(); ++t) {
    const memfit::PlanTensor& pt = e.plan.tensors[t];
    if (pt.node < 0) continue;
    const memfit::Node& nd = e.graph.nodes[static_cast<std::size_t>(pt.node)];
    is_mask[t] = nd.rule->kind == std::string_view("dropout") && pt.bytes == nd.shape.out.numel();
  }
  const std::size_t n = static_cast<std::size_t>(n_iterations) + 1;
  std::vector<i64> start(n, -1), peak(n, -1), peak_cpu(n, -1);
  std::vector<std::map<std::string, i64>> ph(n), ph_cpu(n);
  i64 live = 0, masks = 0;
  int cur = 0;
  memfit::Phase last_phase = memfit::Phase::setup;
  for (const auto& ev : e.plan.events) {
    for (; cur < ev.iteration; ++cur) {
      const std::size_t k = static_cast<std::size_t>(cur) + 1;
      start[k] = live;
      peak[k] = live;
      peak_cpu[k] = live + 3 * masks;
    }
    if (ev.iteration > 0 && ev.phase != last_phase) {
      // a phase's peak includes the live bytes when it begins (its first event may be a free:
      // SGD's step allocates nothing, and the loop's `out` is alive until the step returns)
      const std::size_t k = static_cast<std::size_t>(ev.iteration);
      const std::string pn = memfit::phase_name(ev.phase);
      ph[k].try_emplace(pn, live);
      ph_cpu[k].try_emplace(pn, live + 3 * masks);
    }
    last_phase = ev.phase;
    const std::size_t t = static_cast<std::size_t>(ev.tensor);
    const i64 b = ev.is_free ? -e.plan.tensors[t].bytes : e.plan.tensors[t].bytes;
    live += b;
    if (is_mask[t]) masks += b;
    if (ev.iteration == 0) continue;
    const std::size_t k = static_cast<std::size_t>(ev.iteration);
    // CPU native_batch_norm_backward holds a second input-sized scratch while it runs (README)
    i64 bn_scratch = 0;
    if (ev.phase == memfit::Phase::backward && ev.node >= 0) {
      const memfit::Node& bn = e.graph.nodes[static_cast<std::size_t>(ev.node)];
      if (bn.rule->kind == std::string_view("batchnorm2d")) bn_scratch = bn.in_types.at(0).bytes();
    }
    const i64 cpu = live + 3 * masks + bn_scratch;
    peak[k] = std::max(peak[k], live);
    peak_cpu[k] = std::max(peak_cpu[k], cpu);
    const std::string pn = memfit::phase_name(ev.phase);
    auto [it, fresh] = ph[k].try_emplace(pn, live);
    if (!fresh) it->second = std::max(it->second, live);
    auto [jt, fresh_cpu] = ph_cpu[k].try_emplace(pn, cpu);
    if (!fresh_cpu) jt->second = std::max(jt->second, cpu);
  }
  Live r;
  for (std::size_t k = 1; k < n; ++k) {
    r.start.push_back(start[k] - start[1]);
    r.peak.push_back(peak[k] - start[1]);
    r.peak_cpu.push_back(peak_cpu[k] - start[1]);
    for (auto* m : {&ph[k], &ph_cpu[k]})
      for (auto& [name, bytes] : *m) bytes -= start[1];
    r.phase_peak.push_back(ph[k]);
    r.phase_peak_cpu.push_back(ph_cpu[k]);
  }
  return r;
}

// 0-d CPU scalars the plan does not hold (tests/live_bytes_test.cpp)
constexpr i64 kLiveScalarSlackBytes = 16;

// What a recorded run may differ from memfit's plan by, in bytes (each test names its terms):
//  * step_bytes: torch 1.13 Adam's state['step'], a 4-byte CPU tensor per parameter with state: in
//    every iteration's start from iteration 2 on, and allowed above memfit's peak;
//  * below: memfit's raw peak at most this much above the measured peak;
//  * above: the measured peak at most this (+ step_bytes + the per-iteration extra) above memfit's
//    CPU peak (Live::peak_cpu: CPU dropout noise, batch-norm scratch).
struct LiveTolerance {
  i64 step_bytes = 0;
  i64 below = kLiveScalarSlackBytes;
  i64 above = kLiveScalarSlackBytes;
};

// Checks each iteration of `run` (its "iterations": iteration, start_bytes, peak_bytes, peak_top, as
// tools/cpu_live_reference.py analyse() records them; all relative to iteration 1's start) against
// `mine`: the start within kLiveScalarSlackBytes of memfit's (+ step_bytes from iteration 2 on), the
// peak never below memfit's by more than tol.below, and above memfit's CPU peak by at most tol.above +
// tol.step_bytes + extra(iteration). `extra` returns nullopt where only the lower bound holds (a CPU
// convolution kernel's scratch at the peak). Returns how many iterations had both bounds checked.
inline int check_live_iterations(const nlohmann::json& run, const Live& mine, const LiveTolerance& tol,
                                 const std::function<std::optional<i64>(const nlohmann::json&)>& extra = {}) {
  REQUIRE(mine.peak.size() == run["iterations"].size());
  const i64 start1 = run["iterations"][0]["start_bytes"].get<i64>();
  int n_both = 0;
  for (const nlohmann::json& it : run["iterations"]) {
    const int k = it["iteration"].get<int>();
    const std::size_t ki = static_cast<std::size_t>(k) - 1;
    const i64 measured_start = it["start_bytes"].get<i64>() - start1;
    const i64 measured = it["peak_bytes"].get<i64>() - start1;
    INFO("iteration " << k << ": measured start " << measured_start << " B, memfit " << mine.start[ki]
                      << " B; measured peak " << measured << " B, memfit " << mine.peak[ki] << " B (CPU "
                      << mine.peak_cpu[ki] << " B), peak at " << it["peak_top"]);
    CHECK(std::llabs(measured_start - mine.start[ki] - (k > 1 ? tol.step_bytes : 0)) <= kLiveScalarSlackBytes);
    CHECK(measured - mine.peak[ki] >= -tol.below);  // memfit never above what PyTorch held
    const std::optional<i64> more = extra ? extra(it) : std::optional<i64>(0);
    if (!more) continue;
    CHECK(measured - mine.peak_cpu[ki] <= tol.above + tol.step_bytes + *more);
    ++n_both;
  }
  return n_both;
}

}  // namespace memfit::test

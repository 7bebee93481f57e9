// memfit's live tensor bytes per training iteration, with no allocator rounding and no library
// workspaces: the quantity tools/cpu_live_reference.py measures with the CPU profiler.
//
// Build (from the repository root, after building build/core/libmemfit_core.a):
//   g++ -std=c++20 -O1 -Icore/include tools/live_bytes_estimate.cpp build/core/libmemfit_core.a \
//       -o build/live_bytes_estimate
// Usage:
//   build/live_bytes_estimate [--ops] SPEC [SPEC ...]      SPEC = MODEL_FILE:BATCH:OPTIMIZER:IMPL
//   (--ops adds "ops": per (iteration, phase, layer) run of events, live bytes at start / max / end)
//   e.g. models/lenet5.memfit:8:adam:foreach  tests/reference/fixtures/tiny_mlp.json:8:sgd:foreach
// Prints a JSON array, one object per SPEC. Per iteration (1..n): start_bytes / peak_bytes relative to
// the live bytes at the start of iteration 1 (after setup: parameters, buffers, Adagrad state, x and
// target), where the peak was reached (phase, layer, the event's tensor category), and the peak of
// each phase. Byte counts are the sum of raw tensor sizes (Plan events replayed in order); the
// allocator model run with min_block_bytes = 1 is reported alongside as a cross-check.
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "memfit/api.hpp"
#include "memfit/estimate.hpp"
#include "memfit/model.hpp"

using json = nlohmann::json;
using namespace memfit;

static std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

static bool g_ops = false;  // --ops: also print a per-op timeline

static json one(const std::string& spec) {
  // MODEL:BATCH:OPT:IMPL, split from the right (paths may contain ':')
  std::string s = spec;
  std::string parts[3];
  for (int k = 2; k >= 0; --k) {
    auto p = s.rfind(':');
    if (p == std::string::npos) throw std::runtime_error("bad spec " + spec);
    parts[k] = s.substr(p + 1);
    s = s.substr(0, p);
  }
  const std::string file = s;
  Model model = parse_model(read_file(file), file);
  OptionStrings os;
  os.batch = parts[0];
  os.optimizer = parts[1];
  os.optimizer_impl = parts[2];
  os.pytorch = "1.13";  // the CPU reference runs torch 1.13: follow its rules where 2.x differs
  Options o = make_options(os);
  o.workspaces = Workspaces{};            // no cuBLAS / cuBLASLt / cuDNN workspaces
  o.allocator = AllocatorConfig{};
  o.allocator.min_block_bytes = 1;        // no 512-byte rounding
  Estimate e = estimate(model, o);
  const Plan& plan = e.plan;
  const Graph& g = e.graph;
  auto node_name = [&](int n) -> std::string {
    if (n < 0) return "";
    const Node& nd = g.nodes[static_cast<std::size_t>(n)];
    if (nd.layer) return nd.layer->name;
    return "loss";
  };

  const int n_it = o.train.n_iterations;
  std::vector<i64> start(static_cast<std::size_t>(n_it + 2), -1), peak(static_cast<std::size_t>(n_it + 2), -1);
  std::vector<int> peak_ev(static_cast<std::size_t>(n_it + 2), -1);
  std::vector<std::array<i64, n_phases>> phase_peak(static_cast<std::size_t>(n_it + 2));
  for (auto& a : phase_peak) a.fill(-1);
  i64 live = 0;
  int cur = 0;
  for (std::size_t i = 0; i < plan.events.size(); ++i) {
    const PlanEvent& ev = plan.events[i];
    if (ev.iteration != cur) {  // iteration boundary: live bytes before its first event
      for (int k = cur + 1; k <= ev.iteration; ++k) {
        start[static_cast<std::size_t>(k)] = live;
        peak[static_cast<std::size_t>(k)] = live;
      }
      cur = ev.iteration;
    }
    const i64 b = plan.tensors[static_cast<std::size_t>(ev.tensor)].bytes;
    live += ev.is_free ? -b : b;
    auto it = static_cast<std::size_t>(ev.iteration);
    if (live > peak[it]) {
      peak[it] = live;
      peak_ev[it] = static_cast<int>(i);
    }
    auto ph = static_cast<std::size_t>(ev.phase);
    if (live > phase_peak[it][ph]) phase_peak[it][ph] = live;
  }
  const i64 base = start[1];
  json ops = json::array();
  if (g_ops) {  // contiguous runs of events with the same (iteration, phase, node)
    i64 lv = 0;
    int prev = -1;
    json cur_op;
    for (std::size_t i = 0; i < plan.events.size(); ++i) {
      const PlanEvent& ev = plan.events[i];
      int key = ev.iteration * 1000000 + static_cast<int>(ev.phase) * 100000 + ev.node + 1;
      if (key != prev) {
        if (!cur_op.is_null() && cur_op["iteration"].get<int>() >= 1) ops.push_back(cur_op);
        cur_op = json{{"iteration", ev.iteration}, {"phase", phase_name(ev.phase)}, {"layer", node_name(ev.node)},
                      {"start", lv - base}, {"max", lv - base}};
        prev = key;
      }
      const i64 b = plan.tensors[static_cast<std::size_t>(ev.tensor)].bytes;
      lv += ev.is_free ? -b : b;
      if (lv - base > cur_op["max"].get<i64>()) cur_op["max"] = lv - base;
      cur_op["end"] = lv - base;
    }
    if (!cur_op.is_null()) ops.push_back(cur_op);
  }
  json its = json::array();
  for (int k = 1; k <= n_it; ++k) {
    auto K = static_cast<std::size_t>(k);
    json r;
    r["iteration"] = k;
    r["start_bytes"] = start[K] - base;
    r["peak_bytes"] = peak[K] - base;
    r["peak_increase_bytes"] = peak[K] - start[K];
    if (peak_ev[K] >= 0) {
      const PlanEvent& ev = plan.events[static_cast<std::size_t>(peak_ev[K])];
      r["peak_phase"] = phase_name(ev.phase);
      r["peak_layer"] = node_name(ev.node);
      r["peak_event_category"] = category_name(plan.tensors[static_cast<std::size_t>(ev.tensor)].category);
    }
    json pp = json::object();
    for (int ph = 0; ph < n_phases; ++ph)
      if (phase_peak[K][static_cast<std::size_t>(ph)] >= 0)
        pp[phase_name(static_cast<Phase>(ph))] = phase_peak[K][static_cast<std::size_t>(ph)] - base;
    r["phase_peak_bytes"] = pp;
    // cross-check: the allocator model without rounding (max_memory_allocated minus iteration-1 start)
    if (K < e.sim.iterations.size()) r["sim_allocated_bytes"] = e.sim.iterations[K].allocated_bytes - base;
    its.push_back(r);
  }
  json out;
  out["spec"] = spec;
  out["model"] = model.name;
  out["file"] = file;
  out["batch"] = o.train.batch;
  out["optimizer"] = optimizer_name(o.train.optimizer);
  out["optimizer_impl"] = optimizer_impl_name(o.train.impl);
  out["param_bytes"] = e.total_param_bytes;
  out["buffer_bytes"] = e.total_buffer_bytes;
  out["input_bytes"] = e.input_bytes;
  out["setup_bytes"] = base;
  out["iterations"] = its;
  if (g_ops) out["ops"] = ops;
  return out;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: live_bytes_estimate MODEL_FILE:BATCH:OPTIMIZER:IMPL ...\n";
    return 2;
  }
  json all = json::array();
  try {
    for (int i = 1; i < argc; ++i) {
      if (std::string(argv[i]) == "--ops") {
        g_ops = true;
        continue;
      }
      all.push_back(one(argv[i]));
    }
  } catch (const std::exception& ex) {
    std::cerr << "live_bytes_estimate: " << ex.what() << "\n";
    return 1;
  }
  std::cout << all.dump(1) << "\n";
  return 0;
}

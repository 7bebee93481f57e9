// Planner and allocator-replay invariants, checked on many small graphs and settings (property tests).
//
// Graphs: every builtin model and fixture at batch 2, and generated small models (chains with
// residual `add` and `concat` branches, written as text and read by parse_model). Settings: every
// optimizer x implementation PyTorch allows (fused only for SGD/Adam/AdamW: plan_training refuses
// the others), fp32/fp16/bf16, both zero_grad modes, 2..4 iterations (all combinations for the
// generated models, a rotation through them for the builtin ones to keep the suite fast).
//
// Properties of the plan (core/include/memfit/plan.hpp), each a consequence of reference counting:
//  P0 events follow the loop: setup (parameters, buffers, Adagrad's state, the batch) before
//     iteration 1, then zero_grad, forward, loss, backward, optimizer in each iteration
//  P1 every tensor is allocated exactly once, by its first event, and freed at most once, after that;
//     no event refers to a tensor after its free (no use after free)
//  P2 live bytes, in total and per category, are never negative
//  P3 after the last iteration only persistent tensors are live: parameters, buffers, gradients
//     (.grad: exactly one per trainable parameter tensor), optimizer state, the input batch and
//     targets, workspaces; parameters, buffers, inputs and optimizer state are never freed
//  P4 activations and temporaries die within their iteration; gradients flowing through
//     activations (activation_grad) are born and die in the backward phase
//  P5 steady state: iteration 2's events equal iteration 3's (and 3's equal 4's): same order, phase,
//     node, bytes, category, and which tensor each free refers to
//  P6 what a node saves (Plan::saved, iteration 1) exists by the end of that node's forward and is
//     freed in the backward phase, by the backward of its last saver to run or later (not by the
//     end-of-backward cleanup); the only exceptions are the loop's own `out`/`loss` (freed when
//     the loop rebinds them, phase optimizer, node -1), parameters and the input batch/targets
// Properties of the allocator replay (core/include/memfit/allocator.hpp), with blocks recorded:
//  A1 reserved >= allocated at every op; the overall peaks bound every op's value
//  A2 each iteration's peak (reset_peak_memory_stats at its start) >= the live bytes, rounded to
//     512 B, at every event of that iteration; the overall peak >= all of them
//  A3 one block per non-empty allocation, at least the rounded request, inside a segment, alloc and
//     free events matching the plan's; no two blocks that are live at the same time overlap (with
//     blocks inside live segments, this gives reserved >= allocated at every single event too)
// The checker's own ability to fail is tested last, on deliberately broken plans and replays.
#include <algorithm>
#include <catch2/catch.hpp>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <tuple>

#include "memfit/allocator.hpp"
#include "memfit/api.hpp"
#include "memfit/device.hpp"
#include "memfit/graph.hpp"
#include "memfit/plan.hpp"

using namespace memfit;

namespace {

// ---------------------------------------------------------------- generated models
// A small random model as text. std::mt19937's output sequence is fixed by the standard, and only
// `rng() % n` is used (no <random> distributions, whose results differ between libraries), so each
// seed gives the same model everywhere.
std::string random_model(std::uint32_t seed) {
  std::mt19937 rng(seed);
  auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<std::uint32_t>(n)); };
  int id = 0;
  auto nm = [&](const char* kind) { return "n" + std::to_string(++id) + "_" + kind; };
  std::ostringstream m;
  m << "model random_" << seed << "\n";
  std::string cur, last_act, last_name;  // last_act: the activation that produced `cur`, if one did
  const bool image = seed % 2 == 0;
  auto activation = [&](bool allow_bn) {
    static const char* acts[] = {"relu",       "relu inplace", "relu6",     "relu6 inplace", "leaky_relu",
                                 "leaky_relu inplace", "silu", "silu inplace", "gelu",       "sigmoid",
                                 "tanh",       "dropout",      "dropout inplace"};
    if (allow_bn && pick(3) == 0) {
      std::string b = nm("bn");
      m << b << ": bn from=" << cur << "\n";
      cur = b;
      last_act.clear();
    }
    if (cur != last_name) last_act.clear();
    std::string a = nm("act");
    std::string act = acts[pick(13)];
    // PyTorch refuses (at backward) an in-place write into a tensor an op saved as its result
    // (relu, sigmoid, tanh, leaky_relu_), and so does memfit: keep such a follower out of place.
    static const std::set<std::string> saves_result = {"relu", "relu inplace", "leaky_relu inplace", "sigmoid", "tanh"};
    if (saves_result.count(last_act) && act.size() > 8 && act.substr(act.size() - 8) == " inplace")
      act = act.substr(0, act.size() - 8);
    m << a << ": " << act << " from=" << cur << "\n";
    cur = a;
    last_act = act;
    last_name = a;
  };
  if (image) {
    int c = 2 + pick(3), hw = 8;
    m << "input " << c << "x8x8 layout=chw\n";
    cur = "input";
    auto conv = [&](int out, int k, const std::string& from) {
      std::string n = nm("conv");
      m << n << ": conv " << out << " " << k << "x" << k << " pad=" << k / 2 << (pick(2) ? " bias=false" : "")
        << " from=" << from << "\n";
      return n;
    };
    c = 2 + pick(6);
    cur = conv(c, 3, cur);  // the first layer is never in place on the batch itself
    const int steps = 3 + pick(6);
    for (int s = 0; s < steps; ++s) {
      switch (pick(6)) {
        case 0:
          c = 2 + pick(6);
          cur = conv(c, 1 + 2 * pick(2), cur);
          break;
        case 1: activation(true); break;
        case 2: {  // residual: conv + bn on one branch, the block input on the other
          std::string skip = cur;
          cur = conv(c, 3, cur);
          std::string b = nm("bn");
          m << b << ": bn from=" << cur << "\n";
          std::string a = nm("add");
          m << a << ": add from=" << b << "," << skip << (pick(2) ? " inplace" : "") << "\n";
          cur = a;
          if (pick(2)) activation(false);
          break;
        }
        case 3: {  // concat of two convolutions of the same input (inception-like)
          int c1 = 1 + pick(4), c2 = 1 + pick(4);
          std::string b1 = conv(c1, 1, cur), b2 = conv(c2, 3, cur);
          std::string k = nm("cat");
          m << k << ": concat from=" << b1 << "," << b2 << "\n";
          cur = k;
          c = c1 + c2;
          break;
        }
        case 4:
          if (hw >= 4) {
            std::string p = nm("pool");
            m << p << ": " << (pick(2) ? "maxpool 2" : "avgpool 2") << " from=" << cur << "\n";
            cur = p;
            hw /= 2;
          }
          break;
        default: activation(true); break;
      }
    }
    std::string g = nm("gap"), f = nm("flatten");
    m << g << ": gap from=" << cur << "\n" << f << ": flatten from=" << g << "\n";
    cur = f;
  } else {
    int w = 4 + pick(12);
    m << "input " << w << "\n";
    auto fc = [&](int out, const std::string& from) {
      std::string n = nm("fc");
      m << n << ": fc " << out << (pick(3) == 0 ? " bias=false" : "") << " from=" << from << "\n";
      return n;
    };
    w = 4 + pick(12);
    cur = fc(w, "input");
    const int steps = 3 + pick(6);
    for (int s = 0; s < steps; ++s) {
      switch (pick(4)) {
        case 0:
          w = 4 + pick(12);
          cur = fc(w, cur);
          break;
        case 1: {  // residual over one or two linear layers
          std::string skip = cur;
          cur = fc(w, cur);
          if (pick(2)) {
            activation(false);
            cur = fc(w, cur);
          }
          std::string a = nm("add");
          m << a << ": add from=" << cur << "," << skip << (pick(2) ? " inplace" : "") << "\n";
          cur = a;
          break;
        }
        case 2: {  // two linear branches of one input, concatenated
          int w1 = 2 + pick(6), w2 = 2 + pick(6);
          std::string b1 = fc(w1, cur), b2 = fc(w2, cur);
          std::string k = nm("cat");
          m << k << ": concat from=" << b1 << "," << b2 << "\n";
          cur = k;
          w = w1 + w2;
          break;
        }
        default: activation(false); break;
      }
    }
  }
  cur = [&] {
    std::string n = nm("fc");
    m << n << ": fc " << 2 + pick(8) << " from=" << cur << "\n";
    return n;
  }();
  switch (pick(3)) {  // the loss: appended, or explicit after log_softmax
    case 0: break;
    case 1: m << "ls: log_softmax from=" << cur << "\nce: cross_entropy from=ls\n"; break;
    default: m << "ce: cross_entropy from=" << cur << "\n"; break;
  }
  return m.str();
}

// ---------------------------------------------------------------- settings
struct Combo {
  Optimizer opt;
  OptimizerImpl impl;
  DType precision;
  bool set_to_none;
  int iterations;
  bool cudnn_ws;  // also exercise per-call cuDNN workspaces (freed after each conv)
};

std::vector<std::pair<Optimizer, OptimizerImpl>> optimizer_impls() {
  std::vector<std::pair<Optimizer, OptimizerImpl>> out;
  for (Optimizer o : {Optimizer::sgd, Optimizer::sgd_momentum, Optimizer::adam, Optimizer::adamw, Optimizer::adagrad,
                      Optimizer::rmsprop})
    for (OptimizerImpl i : {OptimizerImpl::foreach, OptimizerImpl::fused, OptimizerImpl::for_loop}) {
      if (i == OptimizerImpl::fused && (o == Optimizer::adagrad || o == Optimizer::rmsprop)) continue;
      out.push_back({o, i});
    }
  return out;
}

std::vector<Combo> all_combos() {
  std::vector<Combo> out;
  int k = 0;
  for (auto [o, i] : optimizer_impls())
    for (DType p : {DType::f32, DType::f16, DType::bf16})
      for (bool stn : {true, false})
        for (int it = 2; it <= 4; ++it) out.push_back({o, i, p, stn, it, (k++ % 2) == 1});
  return out;
}

// One combo per optimizer/impl pair, rotating precision, zero_grad and iterations through them.
std::vector<Combo> rotated_combos(int shift) {
  std::vector<Combo> out;
  int k = shift;
  const DType ps[] = {DType::f32, DType::f16, DType::bf16};
  for (auto [o, i] : optimizer_impls()) {
    out.push_back({o, i, ps[k % 3], (k / 3) % 2 == 0, 2 + (k % 3 == 0 ? 1 : k % 3), k % 2 == 1});
    ++k;
  }
  return out;
}

std::string describe(const Combo& c) {
  std::ostringstream os;
  os << optimizer_name(c.opt) << " " << optimizer_impl_name(c.impl) << " " << dtype_name(c.precision) << " "
     << (c.set_to_none ? "set_to_none" : "zero") << " iterations " << c.iterations
     << (c.cudnn_ws ? " cudnn-ws" : "");
  return os.str();
}

// ---------------------------------------------------------------- the checks
struct Problems {
  std::vector<std::string> list;
  int n = 0;
  void add(const std::string& s) {
    if (++n <= 8) list.push_back(s);
  }
  std::string text() const {
    std::string t;
    for (const auto& s : list) t += "  " + s + "\n";
    if (n > 8) t += "  ... " + std::to_string(n - 8) + " more\n";
    return t;
  }
};

bool persistent(Category c) {
  return c == Category::parameter || c == Category::buffer || c == Category::gradient ||
         c == Category::optimizer_state || c == Category::input || c == Category::workspace;
}

// (is_free, phase, node, bytes, category, origin...) of one event, comparable across iterations.
using Sig = std::tuple<bool, int, int, i64, int, int, int, int>;

void check_plan(const Graph& g, const Plan& p, int n_iter, Problems& pr) {
  const std::size_t nt = p.tensors.size();
  std::vector<int> alloc_ev(nt, -1), free_ev(nt, -1);
  std::array<i64, n_categories> live_cat{};
  i64 live = 0;
  // P1, P2
  for (std::size_t e = 0; e < p.events.size(); ++e) {
    const PlanEvent& ev = p.events[e];
    if (ev.tensor < 0 || static_cast<std::size_t>(ev.tensor) >= nt) {
      pr.add("event " + std::to_string(e) + " names tensor " + std::to_string(ev.tensor));
      return;
    }
    const std::size_t t = static_cast<std::size_t>(ev.tensor);
    const PlanTensor& pt = p.tensors[t];
    if (e > 0 && ev.iteration < p.events[e - 1].iteration) pr.add("iterations go backwards at event " + std::to_string(e));
    // P0: the loop's order: setup only before iteration 1; within an iteration zero_grad, forward,
    // loss, backward, optimizer; nodes name graph nodes (or -1)
    if ((ev.iteration == 0) != (ev.phase == Phase::setup))
      pr.add("event " + std::to_string(e) + ": phase " + phase_name(ev.phase) + " in iteration " + std::to_string(ev.iteration));
    if (e > 0 && ev.iteration == p.events[e - 1].iteration && ev.phase < p.events[e - 1].phase)
      pr.add(std::string("event ") + std::to_string(e) + ": phase " + phase_name(ev.phase) + " after " +
             phase_name(p.events[e - 1].phase));
    if (ev.node < -1 || ev.node >= static_cast<int>(g.nodes.size())) pr.add("event " + std::to_string(e) + " names node " + std::to_string(ev.node));
    if (ev.phase == Phase::setup && (ev.is_free || (pt.category != Category::parameter && pt.category != Category::buffer &&
                                                    pt.category != Category::input && pt.category != Category::optimizer_state)))
      pr.add(std::string("setup event ") + std::to_string(e) + " frees or makes a " + category_name(pt.category) + " tensor");
    if (!ev.is_free) {
      if (alloc_ev[t] >= 0) pr.add("tensor " + std::to_string(t) + " allocated twice");
      if (free_ev[t] >= 0) pr.add("tensor " + std::to_string(t) + " allocated after its free");
      alloc_ev[t] = static_cast<int>(e);
      live += pt.bytes;
      live_cat[static_cast<std::size_t>(pt.category)] += pt.bytes;
    } else {
      if (alloc_ev[t] < 0) pr.add("tensor " + std::to_string(t) + " freed before it was allocated");
      if (free_ev[t] >= 0) pr.add("tensor " + std::to_string(t) + " freed twice (events " + std::to_string(free_ev[t]) + ", " + std::to_string(e) + ")");
      free_ev[t] = static_cast<int>(e);
      live -= pt.bytes;
      live_cat[static_cast<std::size_t>(pt.category)] -= pt.bytes;
    }
    if (pt.bytes < 0) pr.add("tensor " + std::to_string(t) + " has negative bytes");
    if (live < 0) pr.add("live bytes negative at event " + std::to_string(e));
    for (int c = 0; c < n_categories; ++c)
      if (live_cat[static_cast<std::size_t>(c)] < 0)
        pr.add(std::string("live ") + category_name(static_cast<Category>(c)) + " bytes negative at event " + std::to_string(e));
  }
  for (std::size_t t = 0; t < nt; ++t)
    if (alloc_ev[t] < 0) pr.add("tensor " + std::to_string(t) + " never allocated");
  if (!p.events.empty() && p.events.back().iteration != n_iter) pr.add("the last event is not in the last iteration");

  // P3: what is live at the end
  i64 n_trainable = 0, trainable_bytes = 0;
  for (const auto& nd : g.nodes)
    for (const auto& ps : nd.shape.params)
      if (ps.trainable) {
        ++n_trainable;
        trainable_bytes += ps.numel() * dtype_size(ps.dtype);
      }
  i64 live_grads = 0, live_grad_bytes = 0;
  for (std::size_t t = 0; t < nt; ++t) {
    const PlanTensor& pt = p.tensors[t];
    const bool is_live = free_ev[t] < 0;
    if (is_live && !persistent(pt.category))
      pr.add(std::string("leak: ") + category_name(pt.category) + " tensor " + std::to_string(t) + " (" +
             std::to_string(pt.bytes) + " B, node " + std::to_string(pt.node) + ") is live after the last iteration");
    if (!is_live && (pt.category == Category::parameter || pt.category == Category::buffer ||
                     pt.category == Category::input || pt.category == Category::optimizer_state))
      pr.add(std::string("persistent ") + category_name(pt.category) + " tensor " + std::to_string(t) + " was freed");
    if (is_live && pt.category == Category::gradient) {
      ++live_grads;
      live_grad_bytes += pt.bytes;
    }
    // P4
    if (alloc_ev[t] < 0) continue;
    const PlanEvent& a = p.events[static_cast<std::size_t>(alloc_ev[t])];
    if (pt.category == Category::activation || pt.category == Category::temporary ||
        pt.category == Category::activation_grad) {
      if (is_live || p.events[static_cast<std::size_t>(free_ev[t])].iteration != a.iteration)
        pr.add(std::string(category_name(pt.category)) + " tensor " + std::to_string(t) + " outlives its iteration");
    }
    if (pt.category == Category::activation_grad) {
      if (a.phase != Phase::backward || (!is_live && p.events[static_cast<std::size_t>(free_ev[t])].phase != Phase::backward))
        pr.add("activation_grad tensor " + std::to_string(t) + " lives outside the backward phase");
    }
    if (pt.category == Category::activation && a.phase != Phase::forward && a.phase != Phase::loss)
      pr.add("activation tensor " + std::to_string(t) + " allocated in phase " + phase_name(a.phase));
    if (pt.category == Category::workspace && a.iteration >= 2 && is_live)
      pr.add("a workspace created in iteration " + std::to_string(a.iteration) + " stays (workspaces must not grow)");
  }
  if (live_grads != n_trainable) pr.add("live .grad tensors at the end: " + std::to_string(live_grads) + ", trainable parameter tensors: " + std::to_string(n_trainable));
  if (live_grad_bytes != trainable_bytes) pr.add("live .grad bytes at the end differ from the trainable parameter bytes");
  i64 reported_grad_bytes = 0;
  for (i64 b : p.node_grad_bytes) reported_grad_bytes += b;
  if (reported_grad_bytes != trainable_bytes) pr.add("Plan::node_grad_bytes do not add up to the trainable parameter bytes");

  // P5: steady state
  auto signature = [&](int k) {
    std::vector<Sig> out;
    int ordinal = 0;
    std::vector<int> local(nt, -1);
    for (std::size_t e = 0; e < p.events.size(); ++e) {
      const PlanEvent& ev = p.events[e];
      if (ev.iteration != k) continue;
      const std::size_t t = static_cast<std::size_t>(ev.tensor);
      const PlanTensor& pt = p.tensors[t];
      const PlanEvent& a = p.events[static_cast<std::size_t>(alloc_ev[t])];
      int o1, o2, o3;
      if (!ev.is_free) {
        local[t] = ordinal++;
        o1 = 0, o2 = local[t], o3 = 0;
      } else if (a.iteration == k) {
        o1 = 0, o2 = local[t], o3 = 0;
      } else {  // from an earlier iteration: how far back, and where it was made
        o1 = a.iteration == 0 ? -1 : k - a.iteration;
        o2 = static_cast<int>(a.phase);
        o3 = a.iteration == 0 ? static_cast<int>(t) : a.node;
      }
      out.emplace_back(ev.is_free, static_cast<int>(ev.phase), ev.node, pt.bytes, static_cast<int>(pt.category), o1, o2, o3);
    }
    return out;
  };
  for (int k = 2; k + 1 <= n_iter; ++k) {
    auto a = signature(k), b = signature(k + 1);
    if (a.size() != b.size()) {
      pr.add("steady state: iteration " + std::to_string(k) + " has " + std::to_string(a.size()) + " events, iteration " +
             std::to_string(k + 1) + " " + std::to_string(b.size()));
      continue;
    }
    for (std::size_t i = 0; i < a.size(); ++i)
      if (a[i] != b[i]) {
        pr.add("steady state: event " + std::to_string(i) + " of iteration " + std::to_string(k) + " differs from iteration " +
               std::to_string(k + 1) + "'s (bytes " + std::to_string(std::get<3>(a[i])) + " vs " +
               std::to_string(std::get<3>(b[i])) + ", node " + std::to_string(std::get<2>(a[i])) + " vs " +
               std::to_string(std::get<2>(b[i])) + ")");
        break;
      }
  }

  // P6: saved tensors
  std::vector<int> fwd_end(g.nodes.size(), -1);  // one past the last iteration-1 forward/loss event of nodes <= i
  {
    int last = -1;
    std::size_t e = 0;
    for (; e < p.events.size() && p.events[e].iteration < 1; ++e) last = static_cast<int>(e);
    for (std::size_t i = 0; i < g.nodes.size(); ++i) {
      for (; e < p.events.size() && p.events[e].iteration == 1 &&
             (p.events[e].phase == Phase::zero_grad ||
              ((p.events[e].phase == Phase::forward || p.events[e].phase == Phase::loss) && p.events[e].node <= static_cast<int>(i)));
           ++e)
        last = static_cast<int>(e);
      fwd_end[i] = last + 1;
    }
  }
  int n_loop_held = 0;
  std::vector<bool> seen(nt, false);
  // Backward runs nodes in reverse order and each releases its saved tensors right after it runs, so
  // a saved storage dies at the backward of its lowest-numbered saver or later (a lower node), never
  // in the end-of-graph cleanup (node -1) when every saver was reached.
  std::vector<int> min_saver(nt, std::numeric_limits<int>::max());
  for (const auto& s : p.saved)
    if (static_cast<std::size_t>(s.tensor) < nt)
      min_saver[static_cast<std::size_t>(s.tensor)] = std::min(min_saver[static_cast<std::size_t>(s.tensor)], s.node);
  for (const auto& s : p.saved) {
    const std::size_t t = static_cast<std::size_t>(s.tensor);
    if (t >= nt) {
      pr.add("saved record names tensor " + std::to_string(s.tensor));
      continue;
    }
    const std::string who = "saved '" + std::string(s.role) + "' of node " + std::to_string(s.node) + " (" +
                            g.nodes[static_cast<std::size_t>(s.node)].layer->name + ")";
    if (alloc_ev[t] >= fwd_end[static_cast<std::size_t>(s.node)]) pr.add(who + " is allocated after the node's forward");
    if (s.is_param || s.is_input) {
      if (free_ev[t] >= 0 && p.tensors[t].category != Category::temporary) pr.add(who + ": a parameter/input freed");
      continue;
    }
    if (free_ev[t] < 0) {
      pr.add(who + " is never freed");
      continue;
    }
    const PlanEvent& f = p.events[static_cast<std::size_t>(free_ev[t])];
    if (free_ev[t] < fwd_end[static_cast<std::size_t>(s.node)]) pr.add(who + " is freed before the node's forward ends");
    if (f.iteration != 1) pr.add(who + " outlives iteration 1");
    if (f.phase == Phase::backward) {
      if (f.node < 0 || f.node > min_saver[t])
        pr.add(who + " freed at node " + std::to_string(f.node) + ", not at or after the backward of node " +
               std::to_string(min_saver[t]));
      continue;
    }
    if (f.phase == Phase::optimizer && f.node == -1) {  // the loop's `out` / `loss`
      if (!seen[t]) ++n_loop_held;
      seen[t] = true;
      continue;
    }
    pr.add(who + " freed in phase " + phase_name(f.phase) + ", not in backward");
  }
  if (n_loop_held > 2) pr.add("more than two saved storages outlive backward (only `out` and `loss` may)");
}

SimResult replay(const Plan& p) {
  SimOptions so;
  so.record_blocks = true;
  so.record_timeline = true;
  return simulate(p, AllocatorConfig{}, so);
}

void check_sim_result(const Plan& p, const SimResult& r, Problems& pr) {
  const AllocatorConfig cfg;
  if (r.oom) {
    pr.add("out of memory without a capacity");
    return;
  }
  // A1
  for (const auto& tp : r.timeline) {
    if (tp.reserved_bytes < tp.allocated_bytes) pr.add("reserved < allocated at node " + std::to_string(tp.node));
    if (tp.allocated_bytes > r.peak_allocated_bytes || tp.reserved_bytes > r.peak_reserved_bytes)
      pr.add("an op's memory exceeds the reported peak");
  }
  // A2
  i64 live = 0, max_live = 0;
  std::vector<i64> iter_max(r.iterations.size(), 0);
  for (const auto& ev : p.events) {
    const PlanTensor& t = p.tensors[static_cast<std::size_t>(ev.tensor)];
    const i64 b = t.bytes == 0 ? 0 : round_request(cfg, t.bytes);
    live += ev.is_free ? -b : b;
    max_live = std::max(max_live, live);
    if (ev.iteration < iter_max.size()) iter_max[ev.iteration] = std::max(iter_max[ev.iteration], live);
  }
  if (r.peak_allocated_bytes < max_live) pr.add("peak allocated below the rounded live bytes");
  if (r.peak_reserved_bytes < r.peak_allocated_bytes) pr.add("peak reserved below peak allocated");
  for (std::size_t k = 0; k < r.iterations.size(); ++k) {
    if (r.iterations[k].iteration != static_cast<int>(k)) pr.add("iteration peaks out of order");
    if (r.iterations[k].allocated_bytes < iter_max[k])
      pr.add("iteration " + std::to_string(k) + "'s peak allocated " + std::to_string(r.iterations[k].allocated_bytes) +
             " is below its rounded live bytes " + std::to_string(iter_max[k]));
    if (r.iterations[k].reserved_bytes < r.iterations[k].allocated_bytes) pr.add("iteration reserved below allocated");
  }
  // A3
  std::vector<std::pair<i64, i64>> segs;  // segments in creation order (the blocks' segment index)
  for (const auto& s : r.segments)
    if (!s.is_free) segs.push_back({s.address, s.bytes});
  std::size_t n_nonempty = 0;
  for (const auto& ev : p.events)
    if (!ev.is_free && p.tensors[static_cast<std::size_t>(ev.tensor)].bytes > 0) ++n_nonempty;
  if (r.blocks.size() != n_nonempty)
    pr.add("blocks recorded " + std::to_string(r.blocks.size()) + ", non-empty allocations " + std::to_string(n_nonempty));
  struct Edge {
    int event;
    bool is_free;
    std::size_t block;
  };
  std::vector<Edge> edges;
  for (std::size_t i = 0; i < r.blocks.size(); ++i) {
    const BlockRecord& b = r.blocks[i];
    const PlanTensor& t = p.tensors[static_cast<std::size_t>(b.tensor)];
    if (b.size < round_request(cfg, t.bytes)) pr.add("block smaller than its rounded request");
    if (b.segment < 0 || static_cast<std::size_t>(b.segment) >= segs.size()) {
      pr.add("block in an unknown segment");
    } else {
      auto [sa, sb] = segs[static_cast<std::size_t>(b.segment)];
      if (b.address < sa || b.address + b.size > sa + sb) pr.add("block outside its segment");
    }
    const PlanEvent& a = p.events[static_cast<std::size_t>(b.alloc_event)];
    if (a.is_free || a.tensor != b.tensor) pr.add("block's alloc event is not its tensor's allocation");
    if (b.free_event >= 0) {
      const PlanEvent& f = p.events[static_cast<std::size_t>(b.free_event)];
      if (!f.is_free || f.tensor != b.tensor) pr.add("block's free event is not its tensor's free");
      edges.push_back({b.free_event, true, i});
    }
    edges.push_back({b.alloc_event, false, i});
  }
  std::sort(edges.begin(), edges.end(), [](const Edge& x, const Edge& y) {
    return x.event != y.event ? x.event < y.event : x.is_free > y.is_free;
  });
  std::map<i64, i64> live_blocks;  // address -> end
  for (const auto& ed : edges) {
    const BlockRecord& b = r.blocks[ed.block];
    if (ed.is_free) {
      live_blocks.erase(b.address);
      continue;
    }
    auto it = live_blocks.lower_bound(b.address);
    bool overlap = (it != live_blocks.end() && it->first < b.address + b.size);
    if (it != live_blocks.begin() && std::prev(it)->second > b.address) overlap = true;
    if (overlap) pr.add("block of tensor " + std::to_string(b.tensor) + " overlaps a live block");
    live_blocks[b.address] = b.address + b.size;
  }
}

void check_sim(const Plan& p, Problems& pr) { check_sim_result(p, replay(p), pr); }

struct Counts {
  int graphs = 0, plans = 0;
};

void check_model(const Model& m, i64 batch, const std::vector<Combo>& combos, Counts& counts) {
  ++counts.graphs;
  for (const Combo& c : combos) {
    Graph g = build_graph(m, GraphSettings{.batch = batch, .compute = c.precision});
    TrainSettings s;
    s.batch = batch;
    s.precision = c.precision;
    s.optimizer = c.opt;
    s.impl = c.impl;
    s.set_to_none = c.set_to_none;
    s.n_iterations = c.iterations;
    s.workspaces = default_workspaces(std::nullopt);
    if (c.cudnn_ws) s.workspaces.cudnn_conv_bytes = 1 * MiB;
    Plan p = plan_training(g, s);
    Problems pr;
    check_plan(g, p, c.iterations, pr);
    check_sim(p, pr);
    ++counts.plans;
    if (pr.n > 0) {
      INFO(m.name << " batch " << batch << " " << describe(c) << ":\n" << pr.text());
      CHECK(pr.n == 0);
    }
  }
}

}  // namespace

TEST_CASE("plan invariants: builtin models and fixtures at batch 2", "[invariants]") {
  Counts counts;
  int shift = 0;
  for (const auto& b : builtin_models()) {
    Model m = parse_model(b.text, std::string("models/") + b.name + ".memfit");
    check_model(m, 2, rotated_combos(shift++), counts);
  }
  for (const char* f : {"question_cnn", "tiny_mlp", "tiny_residual"}) {
    std::string path = std::string(MEMFIT_SOURCE_DIR) + "/tests/reference/fixtures/" + f + ".json";
    std::ifstream in(path);
    REQUIRE(in);
    std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    Model m = parse_model(text, path);
    check_model(m, 2, all_combos(), counts);
  }
  CHECK(counts.graphs == static_cast<int>(builtin_models().size()) + 3);
}

TEST_CASE("plan invariants: generated chains with residual and concat branches", "[invariants]") {
  Counts counts;
  const auto combos = all_combos();
  REQUIRE(combos.size() == 16 * 3 * 2 * 3);  // 16 optimizer/impl pairs x precisions x zero_grad x iterations
  for (std::uint32_t seed = 1; seed <= 16; ++seed) {
    std::string text = random_model(seed);
    INFO("generated model (seed " << seed << "):\n" << text);
    Model m = parse_model(text, "random_" + std::to_string(seed) + ".memfit");
    check_model(m, 1 + seed % 3, combos, counts);
  }
  CHECK(counts.plans == 16 * static_cast<int>(combos.size()));
}

TEST_CASE("plan invariants: the generator makes branches", "[invariants]") {
  // The properties above are only as good as the graphs: the generated set must contain residual
  // adds (in place and not), concats, in-place activations, both input kinds and explicit losses.
  std::string all;
  for (std::uint32_t seed = 1; seed <= 16; ++seed) all += random_model(seed);
  for (const char* needle : {": add from=", " inplace\n", ": concat from=", " layout=chw", "cross_entropy", ": bn ",
                             "dropout", ": fc "}) {
    INFO("no generated model contains '" << needle << "'");
    CHECK(all.find(needle) != std::string::npos);
  }
}

TEST_CASE("plan invariant checks catch broken plans", "[invariants]") {
  // The checker must be able to fail: corrupt a valid plan in the ways the properties forbid.
  Model m = parse_model(find_builtin_model("lenet5")->text, "models/lenet5.memfit");
  Graph g = build_graph(m, GraphSettings{.batch = 2});
  TrainSettings s;
  s.batch = 2;
  s.workspaces = default_workspaces(std::nullopt);
  const Plan good = plan_training(g, s);
  {
    Problems pr;
    check_plan(g, good, 3, pr);
    check_sim(good, pr);
    INFO(pr.text());
    CHECK(pr.n == 0);
  }
  auto first_free_of = [&](Category c) {
    for (std::size_t e = 0; e < good.events.size(); ++e)
      if (good.events[e].is_free && good.tensors[static_cast<std::size_t>(good.events[e].tensor)].category == c)
        return e;
    FAIL("no free of " << category_name(c));
    return std::size_t{0};
  };
  {  // a double free
    Plan p = good;
    p.events.push_back(p.events[first_free_of(Category::activation)]);
    p.events.back().iteration = 3;
    Problems pr;
    check_plan(g, p, 3, pr);
    CHECK(pr.text().find("freed twice") != std::string::npos);
  }
  {  // a leak: drop the free of an activation
    Plan p = good;
    p.events.erase(p.events.begin() + static_cast<std::ptrdiff_t>(first_free_of(Category::activation)));
    Problems pr;
    check_plan(g, p, 3, pr);
    CHECK(pr.text().find("outlives its iteration") != std::string::npos);
  }
  {  // a saved tensor released in the forward phase instead of after its backward node
    Plan p = good;
    bool done = false;
    for (const auto& sv : p.saved) {
      if (sv.is_param || sv.is_input || done) continue;
      for (auto& ev : p.events)
        if (ev.is_free && ev.tensor == sv.tensor && ev.phase == Phase::backward) {
          ev.phase = Phase::forward;
          done = true;
          break;
        }
    }
    REQUIRE(done);
    Problems pr;
    check_plan(g, p, 3, pr);
    CHECK(pr.text().find("not in backward") != std::string::npos);
  }
  {  // allocator replay: two live blocks on one address, and reserved below allocated
    SimResult r = replay(good);
    REQUIRE(r.blocks.size() >= 2);
    Problems ok;
    check_sim_result(good, r, ok);
    CHECK(ok.n == 0);
    // the first two blocks are parameters (never freed): live together
    r.blocks[1].address = r.blocks[0].address;
    r.timeline[0].reserved_bytes = r.timeline[0].allocated_bytes - 1;
    Problems pr;
    check_sim_result(good, r, pr);
    CHECK(pr.text().find("overlaps a live block") != std::string::npos);
    CHECK(pr.text().find("reserved < allocated") != std::string::npos);
  }
  {  // steady state broken: one more byte in iteration 3 only
    Plan p = good;
    for (auto& ev : p.events)
      if (ev.iteration == 3 && !ev.is_free && p.tensors[static_cast<std::size_t>(ev.tensor)].category == Category::activation) {
        p.tensors[static_cast<std::size_t>(ev.tensor)].bytes += 1;
        break;
      }
    Problems pr;
    check_plan(g, p, 3, pr);
    CHECK(pr.text().find("steady state") != std::string::npos);
  }
}

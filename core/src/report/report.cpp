#include "memfit/report.hpp"

#include <nlohmann/json.hpp>
#include <sstream>

namespace memfit {

namespace {

using ojson = nlohmann::ordered_json;

// Every JSON result goes through here. Names and messages quote the user's bytes, which need not be
// UTF-8 (the fuzzer found a 0xFF in a layer name): nlohmann's default dump throws type_error 316 on
// them, which surfaced as "internal error" and, inside error_json, as no message at all. Invalid bytes
// become U+FFFD instead; valid UTF-8 is written unchanged.
std::string dump(const ojson& j) { return j.dump(2, ' ', false, ojson::error_handler_t::replace) + "\n"; }

const char* precision_name(DType t) {
  switch (t) {
    case DType::f16: return "fp16";
    case DType::bf16: return "bf16";
    default: return "fp32";
  }
}

const std::string& node_name(const Estimate& e, int node) {
  static const std::string none;
  if (node < 0) return none;
  return e.graph.nodes[static_cast<std::size_t>(node)].layer->name;
}

ojson node_or_null(const Estimate& e, int node) { return node < 0 ? ojson(nullptr) : ojson(node_name(e, node)); }

// docs/json-output.md "Events": one line per planned allocation or free, in replay order.
// Layer names are written with whitespace as %20 and '%' as %25, so every field is one token.
template <class F>
void for_each_event_line(const Estimate& e, F&& emit) {
  auto token = [](const std::string& name) {
    if (name.empty()) return std::string("-");
    std::string out;
    for (char c : name) {
      if (c == '%') out += "%25";
      else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') out += "%20";
      else out += c;
    }
    return out;
  };
  for (const auto& ev : e.plan.events) {
    if (ev.is_free) {
      emit("free " + std::to_string(ev.tensor));
      continue;
    }
    const PlanTensor& t = e.plan.tensors[static_cast<std::size_t>(ev.tensor)];
    emit("alloc " + std::to_string(ev.tensor) + " " + std::to_string(t.bytes) + " " + category_name(t.category) + " " +
         token(node_name(e, ev.node)) + " " + phase_name(ev.phase) + " " + std::to_string(ev.iteration));
  }
}

ojson layer_json(const Estimate& e, const LayerRow& r) {
  const Node& nd = e.graph.nodes[static_cast<std::size_t>(r.node)];
  ojson j;
  j["name"] = nd.layer->name;
  j["kind"] = nd.rule->kind;
  j["inputs"] = nd.layer->inputs;
  j["output_shape"] = r.out.shape;
  j["output_dtype"] = dtype_name(r.out.dtype);
  j["output_storage"] = r.output_storage;
  if (nd.n_outputs() > 1) {  // an op with several outputs (chunk): outputs 1.. as `layer:K`
    ojson more = ojson::array();
    for (const auto& t : nd.shape.extra_outs) more.push_back(t.shape);
    j["extra_output_shapes"] = std::move(more);
  }
  j["region"] = nd.region >= 0 ? ojson(e.graph.regions[static_cast<std::size_t>(nd.region)].name) : ojson(nullptr);
  j["params"] = r.params;
  j["frozen_params"] = r.frozen_params;
  j["param_bytes"] = r.param_bytes;
  j["buffer_bytes"] = r.buffer_bytes;
  j["grad_bytes"] = r.grad_bytes;
  j["optimizer_bytes"] = r.optimizer_bytes;
  j["output_bytes"] = r.output_bytes;
  j["saved_bytes"] = r.saved_bytes;
  ojson saved = ojson::array();
  for (const auto& s : r.saved) {
    ojson t;
    t["role"] = s.role;
    t["tensor"] = s.producer >= 0 ? ojson(node_name(e, s.producer)) : ojson(nullptr);
    t["shape"] = s.type.shape;
    t["dtype"] = dtype_name(s.type.dtype);
    t["bytes"] = s.type.bytes();
    t["storage_bytes"] = s.storage_bytes;
    t["counted"] = s.owner == s.node && !s.is_param && !s.is_input;
    t["shared_with"] = s.owner != s.node ? ojson(node_name(e, s.owner)) : ojson(nullptr);
    t["note"] = s.is_param ? "a parameter (already counted)" : s.is_input ? "held by the training loop (input)"
                : s.owner != s.node                            ? "same storage as saved by an earlier layer"
                                                               : "";
    saved.push_back(std::move(t));
  }
  j["saved"] = std::move(saved);
  return j;
}

ojson estimate_object(const Model& model, const Estimate& e) {
  const Options& o = e.options;
  ojson j;
  j["memfit"] = kVersion;
  j["model"] = {{"name", e.model_name}, {"file", e.model_file}, {"layers", model.layers.size()}};
  const Workspaces ws = effective_train(o).workspaces;  // as the planner ran
  j["settings"] = {{"batch", o.train.batch},
                   {"dtype", precision_name(o.train.precision)},
                   {"optimizer", optimizer_name(o.train.optimizer)},
                   {"optimizer_impl", optimizer_impl_name(o.train.impl)},
                   {"zero_grad", o.train.set_to_none ? "set_to_none" : "zero"},
                   {"iterations", o.train.n_iterations},
                   {"grad_accumulation", o.train.grad_accumulation},
                   {"freeze", o.train.freeze},
                   {"train", o.train.train},
                   {"pytorch", torch_rules_name(o.train.rules)},
                   {"context_bytes", o.context_bytes},
                   {"workspaces",
                    {{"cublas_bytes", ws.cublas_bytes},
                     {"cublaslt_bytes", ws.cublaslt_bytes},
                     {"cudnn_conv_bytes", ws.cudnn_conv_bytes}}}};
  ojson layers = ojson::array();
  for (const auto& r : e.layers) layers.push_back(layer_json(e, r));
  j["layers"] = std::move(layers);
  ojson regions = ojson::array();
  for (const auto& rg : e.graph.regions)
    regions.push_back({{"name", rg.name},
                       {"parent", rg.parent >= 0 ? ojson(e.graph.regions[static_cast<std::size_t>(rg.parent)].name) : ojson(nullptr)},
                       {"depth", rg.depth},
                       {"first_layer", node_name(e, rg.first_node)},
                       {"last_layer", node_name(e, rg.last_node)},
                       {"layers", rg.n_nodes}});
  j["regions"] = std::move(regions);
  j["totals"] = {{"params", e.total_params},
                 {"frozen_params", e.graph.n_frozen_params},
                 {"param_bytes", e.total_param_bytes},
                 {"buffer_bytes", e.total_buffer_bytes},
                 {"grad_bytes", e.total_grad_bytes},
                 {"optimizer_bytes", e.total_optimizer_bytes},
                 {"saved_activation_bytes", e.total_saved_bytes},
                 {"input_bytes", e.input_bytes},
                 {"workspace_bytes", e.workspace_bytes}};
  ojson breakdown;
  for (int c = 0; c < n_categories; ++c)
    breakdown[category_name(static_cast<Category>(c))] = e.sim.peak_breakdown[static_cast<std::size_t>(c)];
  j["peak"] = {{"allocated_bytes", e.peak_allocated_bytes},
               {"reserved_bytes", e.peak_reserved_bytes},
               {"device_bytes", e.device_bytes},
               {"context_bytes", o.context_bytes},
               {"phase", phase_name(e.peak_phase)},
               {"layer", node_or_null(e, e.peak_node)},
               {"iteration", e.peak_iteration},
               {"breakdown", breakdown}};
  ojson iters = ojson::array();
  for (const auto& ip : e.sim.iterations) {
    if (ip.iteration == 0) continue;
    ojson it;
    it["iteration"] = ip.iteration;
    it["allocated_bytes"] = ip.allocated_bytes;
    it["reserved_bytes"] = ip.reserved_bytes;
    const PlanEvent* ev = ip.event >= 0 ? &e.plan.events[static_cast<std::size_t>(ip.event)] : nullptr;
    it["phase"] = ev ? phase_name(ev->phase) : "";
    it["layer"] = ev ? node_or_null(e, ev->node) : ojson(nullptr);
    iters.push_back(std::move(it));
  }
  j["iterations"] = std::move(iters);
  if (o.gpu) {
    j["gpu"] = {{"name", o.gpu->name},
                {"memory_bytes", o.gpu->memory_bytes},
                {"cuda_total_bytes", o.gpu->cuda_total_bytes},
                {"cuda_total_observed", o.gpu->cuda_total_observed},
                {"compute_capability", std::to_string(o.gpu->cc_major) + "." + std::to_string(o.gpu->cc_minor)},
                {"source", o.gpu->source}};
    j["fits"] = *e.fits;
    j["usable_bytes"] = e.usable_bytes;
    j["headroom_bytes"] = e.headroom_bytes;
    j["fits_only_by_freeing_cache"] = e.fits_only_by_freeing_cache;
  } else {
    j["gpu"] = nullptr;
    j["fits"] = nullptr;
    j["usable_bytes"] = nullptr;
    j["headroom_bytes"] = nullptr;
    j["fits_only_by_freeing_cache"] = false;
  }
  ojson rules = ojson::array();
  for (const auto& r : e.rules_of_thumb)
    rules.push_back({{"name", r.name}, {"formula", r.formula}, {"bytes", r.bytes}});
  j["rules_of_thumb"] = std::move(rules);
  j["notes"] = e.notes;
  if (!e.plan.checkpoints.empty()) {  // only with --checkpoint (keeps the other outputs unchanged)
    ojson calls = ojson::array();
    for (const auto& sg : e.plan.checkpoints)
      calls.push_back({{"region", e.graph.regions[static_cast<std::size_t>(sg.region)].name},
                       {"first_layer", node_name(e, sg.first)},
                       {"last_layer", node_name(e, sg.last)},
                       {"rerun_last_layer", sg.recompute_last >= sg.first ? ojson(node_name(e, sg.recompute_last)) : ojson(nullptr)}});
    j["checkpoint"] = {{"globs", o.train.checkpoint},
                       {"impl", checkpoint_impl_name(o.train.checkpoint_impl)},
                       {"calls", std::move(calls)},
                       {"forward_flops", e.forward_flops},
                       {"recompute_flops", e.recompute_flops}};
  }
  if (o.events) {
    ojson ev = ojson::array();
    for_each_event_line(e, [&](std::string line) { ev.push_back(std::move(line)); });
    j["events"] = std::move(ev);
  }
  if (o.timeline) {
    ojson tl = ojson::array();
    for (const auto& p : e.sim.timeline)
      tl.push_back({{"iteration", p.iteration},
                    {"phase", phase_name(p.phase)},
                    {"layer", node_or_null(e, p.node)},
                    {"allocated_bytes", p.allocated_bytes},
                    {"reserved_bytes", p.reserved_bytes}});
    j["timeline"] = std::move(tl);
  }
  return j;
}

void add_remedies(const Model& model, const Options& o, ojson& j) {
  ojson arr = ojson::array();
  for (const auto& r : remedies(model, o))
    arr.push_back({{"change", r.change},
                   {"why", r.why},
                   {"cost", r.cost},
                   {"device_bytes", r.device_bytes},
                   {"peak_reserved_bytes", r.peak_reserved_bytes},
                   {"fits", r.fits}});
  j["remedies"] = std::move(arr);
}

}  // namespace

std::string events_text(const Estimate& e) {
  std::string out = "# memfit events 1: alloc ID BYTES CATEGORY LAYER PHASE ITERATION | free ID\n";
  for_each_event_line(e, [&](const std::string& line) {
    out += line;
    out += '\n';
  });
  return out;
}

std::string estimate_json(const Model& model, const Options& options) {
  return estimate_json(model, estimate(model, options));
}

std::string estimate_json(const Model& model, const Estimate& e) {
  ojson j = estimate_object(model, e);
  if (e.fits && !*e.fits) add_remedies(model, e.options, j);
  return dump(j);
}

std::string max_batch_json(const Model& model, const Options& options) {
  return max_batch_json(model, options, max_batch(model, options));
}

std::string max_batch_json(const Model& model, const Options& options, const MaxBatch& mb) {
  Options at = options;
  at.train.batch = mb.max_batch > 0 ? mb.max_batch : 1;
  Estimate e = estimate(model, at);
  ojson j = estimate_object(model, e);
  j["max_batch"] = mb.max_batch;
  // true: every batch up to the search's cap fits, so max_batch is the cap, not a limit of the GPU.
  j["max_batch_capped"] = max_batch_capped(mb);
  j["max_batch_search_cap"] = kMaxBatchSearchCap;
  return dump(j);
}

std::string max_seq_json(const SeqModelFactory& factory, const Options& options, const MaxSeq& ms) {
  Model model = factory.build(ms.max_seq > 0 ? ms.max_seq : 1);
  Estimate e = estimate(model, options);
  ojson j = estimate_object(model, e);
  j["max_seq"] = ms.max_seq;
  j["max_seq_capped"] = ms.capped;  // every length up to the cap fits: max_seq is the cap
  j["max_seq_search_cap"] = ms.limit;
  j["max_seq_probes"] = ms.n_probes;  // full pipelines the search ran
  return dump(j);
}

std::string model_json(const Model& model) {
  // Resolve attributes (padding=same -> numbers) by inferring shapes at batch 1.
  Graph g = build_graph(model, GraphSettings{.batch = 1});
  ojson j;
  j["format"] = "memfit-model/1";
  j["name"] = model.name;
  ojson layers = ojson::array();
  for (const auto& nd : g.nodes) {
    if (g.loss_appended && &nd == &g.nodes.back()) break;
    const Layer& l = *nd.layer;
    ojson jl;
    jl["name"] = l.name;
    jl["kind"] = l.kind;
    if (l.kind == "input") {
      jl["shape"] = std::vector<i64>(nd.shape.out.shape.begin() + 1, nd.shape.out.shape.end());
      if (nd.shape.out.dtype != DType::f32) jl["dtype"] = dtype_name(nd.shape.out.dtype);  // token ids: int64
      layers.push_back(std::move(jl));
      continue;
    }
    jl["from"] = l.inputs;
    for (const auto& spec : nd.rule->attrs) {
      const Value& v = nd.shape.attrs.at(spec.key);
      // an optional reference left unset (linear's tied_to): not written, so models without it read as before
      if (v.type == Value::Type::text && v.text.empty() && spec.default_text && !*spec.default_text) continue;
      switch (v.type) {
        case Value::Type::integer: jl[spec.key] = v.a; break;
        case Value::Type::pair: jl[spec.key] = {v.a, v.b}; break;
        case Value::Type::boolean: jl[spec.key] = v.flag; break;
        case Value::Type::real: jl[spec.key] = v.real; break;
        case Value::Type::text: jl[spec.key] = v.text; break;
      }
    }
    layers.push_back(std::move(jl));
  }
  j["layers"] = std::move(layers);
  if (!model.frozen.empty()) j["freeze"] = model.frozen;
  return dump(j);
}

std::string gpus_json() {
  ojson arr = ojson::array();
  for (const auto& g : gpu_catalog())
    arr.push_back({{"name", g.name},
                   {"memory_bytes", g.memory_bytes},
                   {"cuda_total_bytes", g.cuda_total_bytes},
                   {"cuda_total_observed", g.cuda_total_observed},
                   {"compute_capability", std::to_string(g.cc_major) + "." + std::to_string(g.cc_minor)},
                   {"source", g.source}});
  ojson j;
  j["gpus"] = std::move(arr);
  return dump(j);
}

std::string batch_sweep_json(const Model& model, const Options& options, i64 up_to, int n_points) {
  if (up_to < 1) up_to = 1;
  if (n_points < 2) n_points = 2;
  ojson pts = ojson::array();
  i64 last = 0;
  // Bounded before the work: each point replays the whole plan (about layers x iterations steps).
  constexpr i64 kMaxSweepNodeSteps = 6 * 1000 * 1000;
  const i64 steps_per_point = checked_mul(static_cast<i64>(model.layers.size()) + 1, options.train.n_iterations, "sweep size");
  if (checked_mul(steps_per_point, n_points, "sweep size") > kMaxSweepNodeSteps)
    throw Error({}, "", "a sweep of " + std::to_string(n_points) + " points over " + format_count(static_cast<i64>(model.layers.size())) +
                            " layers x " + std::to_string(options.train.n_iterations) + " iterations is over " +
                            format_count(kMaxSweepNodeSteps) + " node steps",
                "ask for at most " + std::to_string(std::max<i64>(2, kMaxSweepNodeSteps / steps_per_point)) + " points");
  BatchReplayer replay(model, options);  // one plan for every point when its sizes scale with the batch
  for (int k = 0; k < n_points; ++k) {
    i64 b = 1 + (up_to - 1) * k / (n_points - 1);
    if (b == last) continue;
    last = b;
    const Options& o = options;
    SimResult s = replay.simulate(b);
    pts.push_back({{"batch", b},
                   {"allocated_bytes", s.peak_allocated_bytes},
                   {"reserved_bytes", s.peak_reserved_bytes},
                   {"device_bytes", checked_add(s.peak_reserved_bytes, o.context_bytes, "device bytes (reserved + context)")}});
  }
  ojson j;
  j["points"] = std::move(pts);
  return dump(j);
}

std::string error_json(const Error& e) {
  ojson j;
  j["error"] = {{"message", e.what()},
                {"file", e.pos().file},
                {"line", e.pos().line},
                {"column", e.pos().column},
                {"layer", e.layer()},
                {"problem", e.problem()},
                {"fix", e.fix()}};
  return dump(j);
}

}  // namespace memfit

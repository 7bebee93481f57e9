#include "memfit/estimate.hpp"

#include <algorithm>

namespace memfit {

namespace {

Workspaces workspaces_for(const Options& o) { return o.workspaces ? *o.workspaces : default_workspaces(o.gpu); }

TrainSettings effective_train(const Options& o) {
  TrainSettings t = o.train;
  t.workspaces = workspaces_for(o);
  return t;
}

i64 usable_of(const Options& o) {
  if (!o.gpu) return 0;
  return o.gpu->cuda_total_bytes - o.context_bytes;
}

// Runs plan + allocator model with the GPU's usable memory as the cudaMalloc limit.
bool fits_on_gpu(const Model& model, const Options& o, i64 batch) {
  Options p = o;
  p.train.batch = batch;
  Graph g = build_graph(model, batch, p.train.precision, p.train.rules);
  Plan plan = plan_training(g, effective_train(p));
  AllocatorConfig cfg = p.allocator;
  cfg.capacity_bytes = usable_of(p);
  if (cfg.capacity_bytes <= 0) return false;
  return !simulate(plan, cfg).oom;
}

// The public rules of thumb memfit compares itself with (their factors, as people state them).
constexpr i64 kBackwardFactor = 3;     // "multiply by 3 for the backward pass"
constexpr i64 kParamCopies = 3;        // weights + gradients + one optimizer buffer
constexpr i64 kFloat32Bytes = 4;       // "... x 4 bytes"
constexpr i64 kTorchinfoPassFactor = 2;  // torchinfo: forward + backward = 2 x outputs

void rules_of_thumb(Estimate& e) {
  i64 outputs = 0, param_outputs = 0;
  for (const auto& row : e.layers) {
    const Node& nd = e.graph.nodes[static_cast<std::size_t>(row.node)];
    if (row.node == 0 || nd.rule->is_loss) continue;
    outputs = checked_add(outputs, row.output_bytes, "rule of thumb");
    if (row.params > 0) param_outputs = checked_add(param_outputs, row.output_bytes, "rule of thumb");
  }
  i64 p = e.total_param_bytes;
  e.rules_of_thumb = {
      {"activations counted once", "parameters + every layer's output once = " + format_count(p) + " + " +
                                       format_count(outputs) + " B",
       checked_add(p, outputs, "rule of thumb")},
      {"x3 for backward", "3 x (parameters + outputs) = 3 x " + format_count(p + outputs) + " B",
       checked_mul(kBackwardFactor, checked_add(p, outputs, "rule of thumb"), "rule of thumb")},
      {"params x 3 x 4 B", "weights, gradients and one optimizer copy, activations ignored = " +
                               format_count(e.total_params) + " x 3 x 4 B",
       checked_mul(e.total_params, kParamCopies * kFloat32Bytes, "rule of thumb")},
      {"torchinfo", "2 x outputs of layers with parameters + parameters + input = 2 x " + format_count(param_outputs) +
                        " + " + format_count(p) + " + " + format_count(e.input_bytes) + " B",
       checked_add(checked_mul(kTorchinfoPassFactor, param_outputs, "rule of thumb"), checked_add(p, e.input_bytes, "rule of thumb"),
                   "rule of thumb")},
  };
}

}  // namespace

Estimate estimate(const Model& model, const Options& options) {
  Estimate e;
  e.options = options;
  e.model_name = model.name;
  e.model_file = model.file;
  e.graph = build_graph(model, options.train.batch, options.train.precision, options.train.rules);
  TrainSettings train = effective_train(options);
  e.plan = plan_training(e.graph, train);
  SimOptions so;
  so.record_timeline = options.timeline;
  e.sim = simulate(e.plan, options.allocator, so);

  // per-layer rows
  const auto& nodes = e.graph.nodes;
  e.layers.resize(nodes.size());
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    const Node& nd = nodes[i];
    LayerRow& r = e.layers[i];
    r.node = static_cast<int>(i);
    r.out = nd.shape.out;
    r.output_bytes = nd.shape.out.bytes();
    r.output_storage = i == 0 ? "input"
                       : nd.mem.output == OpMemory::Output::in_place ? "in-place"
                       : nd.mem.output == OpMemory::Output::view     ? "view"
                                                                     : "new";
    for (const auto& p : nd.shape.params) {
      i64 b = checked_mul(p.numel(), dtype_size(p.dtype), "parameter bytes");
      if (p.trainable) {
        r.params = checked_add(r.params, p.numel(), "parameter count");
        r.param_bytes = checked_add(r.param_bytes, b, "parameter bytes");
      } else {
        r.buffer_bytes = checked_add(r.buffer_bytes, b, "buffer bytes");
      }
    }
    r.grad_bytes = e.plan.node_grad_bytes[i];
    r.optimizer_bytes = e.plan.node_optimizer_bytes[i];
    e.total_params = checked_add(e.total_params, r.params, "parameter count");
    e.total_param_bytes = checked_add(e.total_param_bytes, r.param_bytes, "parameter bytes");
    e.total_buffer_bytes = checked_add(e.total_buffer_bytes, r.buffer_bytes, "buffer bytes");
    e.total_grad_bytes = checked_add(e.total_grad_bytes, r.grad_bytes, "gradient bytes");
    e.total_optimizer_bytes = checked_add(e.total_optimizer_bytes, r.optimizer_bytes, "optimizer bytes");
  }
  for (const auto& s : e.plan.saved) {
    LayerRow& r = e.layers[static_cast<std::size_t>(s.node)];
    r.saved.push_back(s);
    // Unique storages, counted at the first layer that saves them. Parameters are not activations;
    // the loop's own batch and targets are listed but cost nothing extra.
    if (s.owner == s.node && !s.is_param && !s.is_input) {
      r.saved_bytes = checked_add(r.saved_bytes, s.type.bytes(), "saved bytes");
      e.total_saved_bytes = checked_add(e.total_saved_bytes, s.type.bytes(), "saved bytes");
    }
  }
  e.input_bytes = checked_add(nodes[0].shape.out.bytes(), e.graph.target.bytes(), "input bytes");
  e.workspace_bytes = 0;
  for (const auto& t : e.plan.tensors)
    if (t.category == Category::workspace) e.workspace_bytes += t.bytes;

  // The peak over all iterations (first: optimizer state appears; last: steady state).
  e.peak_allocated_bytes = e.sim.peak_allocated_bytes;
  e.peak_reserved_bytes = e.sim.peak_reserved_bytes;
  if (e.sim.peak_event >= 0) {
    const PlanEvent& ev = e.plan.events[static_cast<std::size_t>(e.sim.peak_event)];
    e.peak_phase = ev.phase;
    e.peak_node = ev.node;
    e.peak_iteration = ev.iteration;
  }
  e.device_bytes = checked_add(e.peak_reserved_bytes, options.context_bytes, "device bytes");

  if (options.gpu) {
    e.usable_bytes = usable_of(options);
    AllocatorConfig cfg = options.allocator;
    cfg.capacity_bytes = e.usable_bytes;
    bool ok = e.usable_bytes > 0;
    if (ok && e.peak_reserved_bytes > e.usable_bytes) {
      // Would PyTorch get through by releasing its cache (release_cached_blocks) on the way?
      SimResult capped = simulate(e.plan, cfg);
      ok = !capped.oom;
      if (ok) {
        e.fits_only_by_freeing_cache = true;
        e.headroom_bytes = e.usable_bytes - capped.peak_reserved_bytes;
      }
    }
    e.fits = ok;
    if (!e.fits_only_by_freeing_cache) e.headroom_bytes = e.usable_bytes - e.peak_reserved_bytes;
    if (!options.gpu->cuda_total_observed && options.gpu->source != "size given by the user")
      e.notes.push_back("the CUDA-visible memory of this GPU was not observed: nvidia-smi's total minus a typical driver "
                        "reservation (" + format_mib(kDriverReservedDefaultBytes) + ") is used");
  }
  if (e.graph.loss_appended)
    e.notes.push_back("the model does not end in a loss: nn.CrossEntropyLoss on '" +
                      nodes[static_cast<std::size_t>(e.graph.model_output)].layer->name + "' is assumed (layer 'loss')");
  rules_of_thumb(e);
  return e;
}

MaxBatch max_batch(const Model& model, const Options& options) {
  if (!options.gpu)
    throw Error({}, "", "max-batch needs a GPU", "give --gpu NAME or --gpu SIZE (e.g. --gpu 24GiB)");
  MaxBatch r;
  auto fits = [&](i64 b) {
    ++r.n_probes;
    try {
      return fits_on_gpu(model, options, b);
    } catch (const Error& e) {
      // A batch whose byte counts overflow 64 bits certainly does not fit; shape errors do not depend
      // on the batch and are reported by the caller's estimate.
      if (std::string(e.what()).find("overflows") != std::string::npos) return false;
      throw;
    }
  };
  if (!fits(1)) return r;
  i64 lo = 1, hi = 2;
  constexpr i64 kBatchLimit = i64{1} << 40;  // beyond any GPU; stops the doubling
  while (hi <= kBatchLimit && fits(hi)) {
    lo = hi;
    hi *= 2;
  }
  if (hi > kBatchLimit) {
    r.max_batch = lo;
    return r;
  }
  // invariant: lo fits, hi does not
  while (hi - lo > 1) {
    i64 mid = lo + (hi - lo) / 2;
    if (fits(mid)) lo = mid;
    else hi = mid;
  }
  r.max_batch = lo;
  return r;
}

std::vector<Remedy> remedies(const Model& model, const Options& options) {
  std::vector<Remedy> out;
  if (!options.gpu) return out;
  auto attempt = [&](std::string change, std::string why, Options o) {
    Estimate e = estimate(model, o);
    out.push_back({std::move(change), std::move(why), o, e.device_bytes, e.peak_reserved_bytes, e.fits.value_or(false)});
  };
  MaxBatch mb = max_batch(model, options);
  if (mb.max_batch >= 1 && mb.max_batch < options.train.batch) {
    Options o = options;
    o.train.batch = mb.max_batch;
    attempt("--batch " + std::to_string(mb.max_batch), "the largest batch that fits with the other settings unchanged", o);
  }
  const Optimizer opt = options.train.optimizer;
  if (opt != Optimizer::sgd && opt != Optimizer::sgd_momentum) {
    Options o = options;
    o.train.optimizer = Optimizer::sgd_momentum;
    attempt("--optimizer sgd-momentum", "one state tensor per parameter instead of two, no sqrt temporaries", o);
  }
  if ((opt == Optimizer::adam || opt == Optimizer::adamw) && options.train.impl == OptimizerImpl::foreach) {
    Options o = options;
    o.train.impl = OptimizerImpl::fused;
    attempt("--optimizer-impl fused", "the fused step allocates no parameter-sized temporaries", o);
  }
  if (options.train.precision == DType::f32) {
    Options o = options;
    o.train.precision = DType::bf16;
    attempt("--dtype bf16", "autocast halves most activations (parameters and gradients stay float32)", o);
  }
  if (!options.train.set_to_none) {
    Options o = options;
    o.train.set_to_none = true;
    attempt("--zero-grad set-to-none", "gradients are freed before the forward pass", o);
  }
  return out;
}

}  // namespace memfit

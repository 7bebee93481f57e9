#include "memfit/estimate.hpp"

#include <algorithm>
#include <limits>

namespace memfit {

TrainSettings effective_train(const Options& o) {
  TrainSettings t = o.train;
  t.workspaces = o.workspaces ? *o.workspaces : default_workspaces(o.gpu);
  return t;
}

i64 usable_bytes(const Options& o) {
  if (!o.gpu) return 0;
  return o.gpu->cuda_total_bytes - o.context_bytes;
}

Pipeline run_pipeline(const Model& model, const Options& options, i64 capacity_bytes) {
  Pipeline p;
  TrainSettings train = effective_train(options);
  p.graph = build_graph(model, graph_settings(train));
  p.plan = plan_training(p.graph, train);
  AllocatorConfig cfg = options.allocator;
  cfg.capacity_bytes = capacity_bytes;
  // A storage within a segment's rounding of 2^63 cannot be modelled: refuse it here, where its
  // layer is known (the allocator model would say the same without the layer).
  for (const auto& t : p.plan.tensors)
    if (t.bytes > std::numeric_limits<i64>::max() - cfg.round_large_bytes) {
      const Layer* l = t.node >= 0 ? p.graph.nodes[static_cast<std::size_t>(t.node)].layer : nullptr;
      throw Error(l ? l->pos : SourcePos{}, l ? l->name : "",
                  "one tensor of " + format_bytes_exact(t.bytes) +
                      " is too large to model: rounded up to the allocator's 2 MiB segments it overflows 64 bits",
                  "use a smaller batch or smaller layers");
    }
  SimOptions so;
  so.record_timeline = options.timeline && capacity_bytes == 0;
  p.sim = simulate(p.plan, cfg, so);
  return p;
}

namespace {

// An op whose rule has a note for when it feeds the loss (softmax before cross-entropy): say so,
// with what removing the layer would change.
void before_loss_note(Estimate& e) {
  const Node& loss = e.graph.nodes.back();
  if (!loss.rule->is_loss || loss.in.empty()) return;
  const Node& feeder = e.graph.nodes[static_cast<std::size_t>(loss.in[0])];
  if (!feeder.rule->before_loss_note || feeder.in.size() != 1 || feeder.n_consumers != 1) return;
  std::string note = "'" + feeder.layer->name + "' (" + feeder.rule->kind + ") feeds the loss: " + feeder.rule->before_loss_note;
  // What removing it changes, from the plan: its output (which it saves) and, in backward, the
  // gradient it hands to its input; the loss then takes the input directly.
  i64 saved = 0;
  for (const auto& r : e.plan.saved)
    if (r.node == loss.in[0] && r.owner == r.node && !r.is_param && !r.is_input) saved += r.storage_bytes;
  note += "; without it, its output (" + format_bytes_exact(feeder.shape.out.bytes()) + ", " +
          (saved == feeder.shape.out.bytes() ? "saved for backward" : format_bytes_exact(saved) + " saved for backward") +
          ") and its input's gradient (" + format_bytes_exact(feeder.in_types[0].bytes()) + ") are not allocated";
  e.notes.push_back(note + ".");
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
  Pipeline p = run_pipeline(model, options);
  e.graph = std::move(p.graph);
  e.plan = std::move(p.plan);
  e.sim = std::move(p.sim);

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
      if (p.tied_node >= 0) continue;  // another layer's parameter (a tied lm_head): counted there
      i64 b = checked_mul(p.numel(), dtype_size(p.dtype), "parameter bytes");
      if (!p.is_buffer) {
        r.params = checked_add(r.params, p.numel(), "parameter count");
        if (!p.trainable) r.frozen_params = checked_add(r.frozen_params, p.numel(), "parameter count");
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
      // the storage, as PyTorch's memory holds it (torch.chunk's views keep their whole input alive)
      r.saved_bytes = checked_add(r.saved_bytes, s.storage_bytes, "saved bytes");
      e.total_saved_bytes = checked_add(e.total_saved_bytes, s.storage_bytes, "saved bytes");
    }
  }
  e.input_bytes = checked_add(nodes[0].shape.out.bytes(), e.graph.target.bytes(), "input bytes");
  e.workspace_bytes = 0;
  for (const auto& t : e.plan.tensors)
    if (t.category == Category::workspace) e.workspace_bytes = checked_add(e.workspace_bytes, t.bytes, "workspace bytes");

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
    e.usable_bytes = usable_bytes(options);
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
  for (const auto& n : model.notes) e.notes.push_back(n);
  if (e.graph.loss_appended)
    e.notes.push_back("the model does not end in a loss: nn.CrossEntropyLoss on '" +
                      nodes[static_cast<std::size_t>(e.graph.model_output)].layer->name + "' is assumed (layer 'loss')");
  // cuDNN's convolution workspace is elastic (docs/cudnn-workspace.md): PyTorch tries plans in
  // cuDNN's order and takes the first whose workspace it can allocate, so what the step needs is
  // modelled without it, and a roomy GPU shows more.
  bool has_cudnn = false;
  for (const auto& nd : nodes)
    for (Workspace w : nd.mem.fwd_workspaces) has_cudnn = has_cudnn || w == Workspace::cudnn_conv;
  if (has_cudnn && effective_train(options).workspaces.cudnn_conv_bytes == 0)
    e.notes.push_back("cuDNN convolution workspaces are not counted: PyTorch takes the first algorithm whose workspace "
                      "it can allocate, so training needs no more than this, but on a GPU with spare memory "
                      "max_memory_allocated is typically higher by about one convolution's workspace "
                      "(--cudnn-workspace SIZE adds one per call; docs/cudnn-workspace.md)");
  if (!nodes.back().requires_grad)
    e.notes.push_back("nothing in this model requires grad (it has no parameters): PyTorch's loss.backward() would fail "
                      "with \"element 0 of tensors does not require grad\"; only the forward pass is modelled");
  // rules' own notes (sdpa's backend, unmodelled half-precision paths), once each with a count
  std::vector<std::pair<std::string, std::pair<std::string, int>>> rule_notes;  // note -> (first layer, count)
  for (const auto& nd : nodes) {
    if (nd.mem.note.empty()) continue;
    auto it = std::find_if(rule_notes.begin(), rule_notes.end(), [&](const auto& r) { return r.first == nd.mem.note; });
    if (it == rule_notes.end()) rule_notes.push_back({nd.mem.note, {nd.layer->name, 1}});
    else it->second.second++;
  }
  for (const auto& [note, where] : rule_notes)
    e.notes.push_back("'" + where.first + "'" + (where.second > 1 ? " and " + std::to_string(where.second - 1) + " more" : "") +
                      ": " + note);
  before_loss_note(e);
  rules_of_thumb(e);
  return e;
}

LargestSearch search_largest(const std::function<std::optional<bool>(i64)>& fits, i64 start, i64 limit,
                             i64 first_step) {
  LargestSearch r;
  i64 step = std::max<i64>(first_step, 1);
  auto probe = [&](i64 n) {
    ++r.n_probes;
    std::optional<bool> f = fits(n);
    if (!f) r.stopped = true;
    return f;
  };
  i64 lo = 0, hi = 0;  // invariant once set: lo fits (or 0), hi does not (or 0 = unknown)
  start = std::clamp<i64>(start, 1, limit);
  auto f = probe(start);
  if (!f) return r;
  if (*f) {
    lo = start;
    while (true) {  // doubling up from a fitting start
      if (lo >= limit) {
        r.largest = limit;
        r.capped = true;
        return r;
      }
      i64 next = lo > limit - step ? limit : lo + step;
      if (step <= limit / 2) step *= 2;
      auto g = probe(next);
      if (!g) {
        r.largest = lo;
        return r;
      }
      if (!*g) {
        hi = next;
        break;
      }
      lo = next;
    }
  } else {
    hi = start;  // galloping down from a start that does not fit
    while (hi > 1) {
      i64 next = hi - 1 < step ? 1 : hi - step;
      if (step <= limit / 2) step *= 2;
      auto g = probe(next);
      if (!g) return r;
      if (*g) {
        lo = next;
        break;
      }
      hi = next;
    }
    if (lo == 0) return r;  // even 1 does not fit
  }
  while (hi - lo > 1) {
    i64 mid = lo + (hi - lo) / 2;
    auto g = probe(mid);
    if (!g) break;
    if (*g) lo = mid;
    else hi = mid;
  }
  r.largest = lo;
  return r;
}

// The plan's structure (which storages, in which order) does not depend on the batch; every storage's
// size is affine in it (activations scale with N, parameters and workspaces do not). Three plans
// (N = 1, 2, 3) give each size as base + N x per_sample, checked on the third; a search or a sweep
// then needs only the allocator model per batch. When the check fails (a model whose plan changes
// with the batch), every batch runs the whole pipeline.
BatchReplayer::BatchReplayer(const Model& model, const Options& options) : model_(model), options_(options) {
  options_.timeline = false;
  options_.events = false;
  auto plan_at = [&](i64 b) {
    Options o = options_;
    o.train.batch = b;
    TrainSettings t = effective_train(o);
    return plan_training(build_graph(model, graph_settings(t)), t);
  };
  Plan p1, p2, p3;
  try {
    p1 = plan_at(1);
    p2 = plan_at(2);
    p3 = plan_at(3);
  } catch (const Error& e) {
    // sizes beyond 64 bits already at a small batch: every batch runs the whole pipeline (whose
    // overflow errors the searches read as "does not fit")
    if (std::string(e.what()).find("overflows") != std::string::npos) return;
    throw;
  }
  auto same_structure = [](const Plan& x, const Plan& y) {
    if (x.tensors.size() != y.tensors.size() || x.events.size() != y.events.size()) return false;
    for (std::size_t k = 0; k < x.events.size(); ++k)
      if (x.events[k].tensor != y.events[k].tensor || x.events[k].is_free != y.events[k].is_free) return false;
    return true;
  };
  if (!same_structure(p1, p2) || !same_structure(p1, p3)) return;
  const std::size_t n = p1.tensors.size();
  base_bytes_.resize(n);
  per_sample_bytes_.resize(n);
  for (std::size_t t = 0; t < n; ++t) {
    i64 per = p2.tensors[t].bytes - p1.tensors[t].bytes;
    i64 base = p1.tensors[t].bytes - per;
    i64 three = 0, predicted = 0;
    if (per < 0 || base < 0 || __builtin_mul_overflow(per, 3, &three) || __builtin_add_overflow(base, three, &predicted) ||
        predicted != p3.tensors[t].bytes)
      return;
    base_bytes_[t] = base;
    per_sample_bytes_[t] = per;
  }
  plan_ = std::move(p1);
  affine_ = true;
}

SimResult BatchReplayer::simulate(i64 batch, i64 capacity_bytes) {
  AllocatorConfig cfg = options_.allocator;
  cfg.capacity_bytes = capacity_bytes;
  if (!affine_) {
    Options o = options_;
    o.train.batch = batch;
    return run_pipeline(model_, o, capacity_bytes).sim;
  }
  for (std::size_t t = 0; t < plan_.tensors.size(); ++t)
    plan_.tensors[t].bytes = checked_add(base_bytes_[t], checked_mul(per_sample_bytes_[t], batch, "a tensor's bytes"),
                                         "a tensor's bytes");
  return memfit::simulate(plan_, cfg);
}

MaxBatch max_batch(const Model& model, const Options& options) {
  if (!options.gpu)
    throw Error({}, "", "max-batch needs a GPU", "give --gpu NAME or --gpu SIZE (e.g. --gpu 24GiB)");
  if (static_cast<i64>(model.layers.size()) > kMaxSearchLayers)
    throw Error({model.file, 0, 0}, "",
                "the largest-batch search takes models of up to " + format_count(kMaxSearchLayers) + " layers; this one has " +
                    format_count(static_cast<i64>(model.layers.size())),
                "estimate a given batch instead (estimate --batch N --gpu GPU answers in seconds)");
  const i64 usable = usable_bytes(options);
  if (usable <= 0) return {};
  BatchReplayer replay(model, options);
  auto fits = [&](i64 b) -> std::optional<bool> {
    try {
      return !replay.simulate(b, usable).oom;
    } catch (const Error& e) {
      // A batch whose byte counts overflow 64 bits certainly does not fit; shape errors do not depend
      // on the batch and are reported by the caller's estimate.
      if (std::string(e.what()).find("overflows") != std::string::npos) return false;
      throw;
    }
  };
  // Seed: the uncapped reserved peak is close to affine in the batch, so two replays predict where
  // it crosses the usable memory; the search gallops from there in steps of 1/64 of the seed (about
  // log2(64) + 6 replays instead of 2 log2(answer)) and stays exact: it only compares fits().
  i64 start = 1, first_step = 1;
  if (replay.reuses_plan()) {
    i64 r1 = replay.simulate(1).peak_reserved_bytes, r2 = replay.simulate(2).peak_reserved_bytes;
    if (r2 > r1 && usable > r1) {
      start = std::clamp<i64>(1 + (usable - r1) / (r2 - r1), 1, kBatchSearchLimit);
      first_step = std::max<i64>(1, start / 64);
    }
  }
  LargestSearch s = search_largest(fits, start, kBatchSearchLimit, first_step);
  return {.max_batch = s.largest, .n_probes = s.n_probes, .capped = s.capped};
}

std::vector<Remedy> remedies(const Model& model, const Options& options) {
  std::vector<Remedy> out;
  if (!options.gpu) return out;
  auto attempt = [&](std::string change, std::string why, Options o) {
    Estimate e = estimate(model, o);
    out.push_back({std::move(change), std::move(why), o, e.device_bytes, e.peak_reserved_bytes, e.fits.value_or(false)});
  };
  // (a model beyond the search's size gets the other remedies only)
  MaxBatch mb = static_cast<i64>(model.layers.size()) > kMaxSearchLayers ? MaxBatch{} : max_batch(model, options);
  if (mb.max_batch >= 1 && mb.max_batch < options.train.batch) {
    Options o = options;
    o.train.batch = mb.max_batch;
    attempt("--batch " + std::to_string(mb.max_batch), "the largest batch that fits with the other settings unchanged", o);
    // The same effective batch as K micro-batches: the smallest K dividing the batch whose micro-batch
    // is at most the largest batch that fits (then checked by the whole pipeline).
    const i64 b = options.train.batch * options.train.grad_accumulation;
    for (i64 k = 2; k <= b && k <= 1024; ++k) {
      if (b % k != 0 || b / k > mb.max_batch) continue;
      Options g = options;
      g.train.batch = b / k;
      g.train.grad_accumulation = static_cast<int>(k);
      attempt("--batch " + std::to_string(b / k) + " --grad-accum " + std::to_string(k),
              "the same effective batch (" + std::to_string(b) + ") as " + std::to_string(k) + " micro-batches of " +
                  std::to_string(b / k) + "; gradients accumulate in .grad",
              g);
      break;
    }
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

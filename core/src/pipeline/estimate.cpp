#include "memfit/estimate.hpp"

#include <nlohmann/json.hpp>
#include "memfit/hf_config.hpp"

#include <algorithm>
#include <cctype>
#include <limits>

#include "memfit/finetune.hpp"

namespace memfit {

namespace {
// The graph of the model as the settings train it: LoRA / QLoRA transform a copy of the model first
// (core/src/pipeline/finetune.cpp), which the graph then owns (its nodes point into it).
Graph training_graph(const Model& model, const TrainSettings& t, std::vector<std::string>* notes = nullptr) {
  FinetunedModel f = apply_finetuning(model, t);
  GraphSettings gs = finetune_graph_settings(t, f);
  Graph g = build_graph(f.model ? *f.model : model, gs);
  if (notes) *notes = finetune_notes(t, f);
  g.owned_model = std::move(f.model);
  return g;
}
bool paged_optimizer(Optimizer o) { return o == Optimizer::paged_adamw || o == Optimizer::paged_adamw8bit; }
}  // namespace

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
  p.graph = training_graph(model, train, &p.notes);
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

// A multiply-add is two floating-point operations (the usual FLOP count of a GEMM: 2 x M x N x K).
constexpr i64 kFlopsPerMultiplyAdd = 2;
// A training step's compute is about three forwards: backward computes the input and the weight
// gradient, each a GEMM the size of the forward's (Kaplan et al. 2020, "Scaling Laws", C = 6 N per token
// = 2 N forward + 4 N backward).
constexpr i64 kStepForwards = 3;
constexpr i64 kPercent = 100;
// FLOP counts only inform a note: beyond 2^63 they saturate instead of failing the estimate.
i64 saturating_mul(i64 a, i64 b) {
  i64 r = 0;
  return __builtin_mul_overflow(a, b, &r) ? std::numeric_limits<i64>::max() : r;
}
i64 saturating_add(i64 a, i64 b) {
  i64 r = 0;
  return __builtin_add_overflow(a, b, &r) ? std::numeric_limits<i64>::max() : r;
}

// What checkpointing costs: the reruns' FLOPs against one step's (forward + backward); and where
// preserve_rng_state's stashes live.
void checkpoint_cost(Estimate& e);

void rules_of_thumb(Estimate& e) {
  i64 outputs = 0, param_outputs = 0;
  for (const auto& row : e.layers) {
    const Node& nd = e.graph.nodes[static_cast<std::size_t>(row.node)];
    // a `parameter` layer's output is the parameter itself, already in the parameter bytes (and no
    // module output torchinfo would list)
    if (row.node == 0 || nd.rule->is_loss || nd.mem.output == OpMemory::Output::parameter) continue;
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

int recompute_percent(const Estimate& e) {
  if (e.forward_flops <= 0) return 0;
  // share = recompute / (3 x forward), in whole percent; long double keeps 2^63-sized counts exact enough
  long double share = static_cast<long double>(e.recompute_flops) / (static_cast<long double>(kStepForwards) * e.forward_flops);
  return static_cast<int>(share * kPercent + 0.5L);
}

namespace {

void checkpoint_cost(Estimate& e) {
  for (const auto& nd : e.graph.nodes) e.forward_flops = saturating_add(e.forward_flops, node_matmul_flops(nd));
  if (e.plan.checkpoints.empty()) return;
  std::string names;
  for (const auto& sg : e.plan.checkpoints) {
    for (int n = sg.first; n <= sg.recompute_last; ++n)
      e.recompute_flops = saturating_add(e.recompute_flops, node_matmul_flops(e.graph.nodes[static_cast<std::size_t>(n)]));
    if (names.size() < 200) names += (names.empty() ? "" : ", ") + e.graph.regions[static_cast<std::size_t>(sg.region)].name;
  }
  const bool reentrant = e.options.train.checkpoint_impl == CheckpointImpl::reentrant;
  std::string note = "activation checkpointing: " + std::to_string(e.plan.checkpoints.size()) + " torch.utils.checkpoint calls (" +
                     names + (names.size() >= 200 ? ", ..." : "") + "), use_reentrant=" + (reentrant ? "True" : "False");
  if (e.forward_flops > 0) {
    note += "; the reruns cost about " + std::to_string(recompute_percent(e)) +
            "% more step time (their matmul/convolution FLOPs " + format_count(e.recompute_flops) + " against a step's 3 x " +
            format_count(e.forward_flops) + ")";
  }
  note += "; preserve_rng_state's stashed RNG states are CPU tensors (torch.get_rng_state, torch.cuda.get_rng_state), "
          "not GPU memory";
  e.notes.push_back(note + ".");
}

}  // namespace

Estimate estimate(const Model& model, const Options& options) {
  Estimate e;
  e.options = options;
  e.model_name = model.name;
  e.model_file = model.file;
  Pipeline p = run_pipeline(model, options);
  e.notes = std::move(p.notes);  // what fine-tuning and precision settings assume
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
                       : nd.mem.output == OpMemory::Output::parameter ? "parameter"
                                                                     : "new";
    for (const auto& p : nd.shape.params) {
      if (p.tied_node >= 0) continue;  // another layer's parameter (a tied lm_head): counted there
      i64 b = checked_mul(p.numel(), dtype_size(p.dtype), "parameter bytes");
      if (!p.is_buffer) {
        r.params = checked_add(r.params, p.count(), "parameter count");
        if (!p.trainable) r.frozen_params = checked_add(r.frozen_params, p.count(), "parameter count");
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
  // Paged optimizer state lives in CUDA managed memory, beside the caching allocator: nvidia-smi shows
  // it while it is resident on the GPU, so it counts against the GPU's memory here.
  e.managed_bytes = e.plan.managed_bytes;
  e.device_bytes = checked_add(checked_add(e.peak_reserved_bytes, options.context_bytes, "device bytes"), e.managed_bytes,
                               "device bytes");

  if (options.gpu) {
    e.usable_bytes = usable_bytes(options) - e.managed_bytes;
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
  if (e.managed_bytes > 0)
    e.notes.push_back("paged optimizer state: " + format_mib(e.managed_bytes) + " in CUDA managed memory (bitsandbytes "
                      "F.get_paged, cudaMallocManaged; parameters of at least 1e5 elements), outside "
                      "torch.cuda.max_memory_allocated/reserved but on the GPU while resident, so counted in the verdict; "
                      "under memory pressure the driver pages it to CPU memory, so a run that misses by less than this "
                      "may still train, slower");
  if (options.train.optimizer == Optimizer::adamw8bit || options.train.optimizer == Optimizer::paged_adamw ||
      options.train.optimizer == Optimizer::paged_adamw8bit)
    e.notes.push_back(std::string("optimizer ") + optimizer_name(options.train.optimizer) +
                      " as bitsandbytes' Optimizer2State allocates it (optim/optimizer.py, bitsandbytes 0.43 to 0.45): " +
                      (options.train.optimizer == Optimizer::paged_adamw ? "two float32 states per parameter"
                                                                          : "two uint8 states per parameter with a float32 absmax "
                                                                            "per 256 elements (float32 states for parameters under "
                                                                            "4,096 elements)") +
                      "; updates in place. Not checked on a GPU: bitsandbytes needs CUDA");
  before_loss_note(e);
  rules_of_thumb(e);
  checkpoint_cost(e);
  return e;
}

i64 node_matmul_flops(const Node& nd) {
  const std::string_view kind = nd.rule->kind;
  i64 macs_per_output = 0;
  if (kind == "conv2d") {
    for (const auto& p : nd.shape.params)  // weight [out, in/groups, kh, kw]: in/groups x kh x kw per output
      if (p.name == "weight" && p.shape.size() >= 2 && p.shape[0] > 0) macs_per_output = p.numel() / p.shape[0];
  } else if ((kind == "linear" || kind == "linear4bit" || kind == "gpt2_conv1d" || kind == "matmul") && !nd.in_types.empty() &&
             !nd.in_types[0].shape.empty()) {
    macs_per_output = nd.in_types[0].shape.back();  // the contracted dimension (in_features)
  } else if (kind == "sdpa" && nd.in_types.size() >= 2 && nd.in_types[1].shape.size() >= 2) {
    // q @ k^T and probs @ v: 2 x key length per output element (causal kernels skip about half)
    macs_per_output = saturating_mul(2, nd.in_types[1].shape[nd.in_types[1].shape.size() - 2]);
  }
  return saturating_mul(kFlopsPerMultiplyAdd, saturating_mul(nd.shape.out.numel(), macs_per_output));
}

std::vector<std::string> block_checkpoint_globs(const Graph& g) {
  // The nesting depth whose regions cover the most layers (at least two regions there; a tie goes to
  // the deeper level: more, smaller calls hold less during each rerun): resnet's blocks layer1.0 ..
  // layer4.1, a transformer's model.layers.N.
  std::vector<i64> cover, count;
  for (const auto& r : g.regions) {
    const std::size_t d = static_cast<std::size_t>(r.depth);
    if (cover.size() <= d) cover.resize(d + 1, 0), count.resize(d + 1, 0);
    cover[d] += r.n_nodes;
    ++count[d];
  }
  int best = -1;
  for (std::size_t d = 0; d < cover.size(); ++d)
    if (count[d] >= 2 && (best < 0 || cover[d] >= cover[static_cast<std::size_t>(best)])) best = static_cast<int>(d);
  std::vector<std::string> globs;
  if (best < 0) return globs;
  for (const auto& r : g.regions) {
    if (r.depth != best) continue;
    std::string glob = r.parent < 0 ? r.name : g.regions[static_cast<std::size_t>(r.parent)].name + ".*";
    if (std::find(globs.begin(), globs.end(), glob) == globs.end()) globs.push_back(glob);
  }
  return globs;
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
    return plan_training(training_graph(model, t), t);
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
  i64 usable = usable_bytes(options);
  if (paged_optimizer(options.train.optimizer)) {
    // managed memory does not depend on the batch: the plan at batch 1 says how much
    Options one = options;
    one.train.batch = 1;
    usable -= run_pipeline(model, one).plan.managed_bytes;
  }
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

void limit_seq_search(SeqModelFactory& f, i64 user_limit) {
  if (user_limit > 0) f.limit = f.limit > 0 ? std::min(f.limit, user_limit) : user_limit;
}

SeqModelFactory seq_model_factory(std::string source, std::string file, const HfOptions& hf) {
  // A config.json (an object with "model_type" and no "layers", as parse_model decides): the builder
  // takes the length, and max_position_embeddings bounds the search (the builder refuses longer).
  {
    nlohmann::json doc = nlohmann::json::parse(source, nullptr, false);
    if (doc.is_object() && doc.contains("model_type") && !doc.contains("layers")) {
      SeqModelFactory f;
      auto mpe = doc.find("max_position_embeddings");
      if (mpe == doc.end() || !mpe->is_number_integer() || mpe->get<i64>() < 1)
        throw Error({file, 0, 0}, "", "max-seq needs the config's max_position_embeddings (a " +
                                          (doc["model_type"].is_string() ? doc["model_type"].get<std::string>() : std::string("?")) +
                                          " model's length is fixed by its inputs, e.g. ViT's image size)",
                    "use max-batch for this model");
      f.limit = std::min(mpe->get<i64>(), kSeqSearchLimit);
      f.build = [source = std::move(source), file = std::move(file), hf](i64 seq) {
        HfOptions o = hf;
        o.seq = seq;
        return parse_model(source, file, o);
      };
      return f;
    }
  }
  static constexpr std::string_view kToken = "$seq";
  auto is_ident = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  // `$seq` not followed by an identifier character ($seq_len is another name), except a shape's
  // separator: `$seqx64x128` is T x 64 x 128
  std::vector<std::size_t> at;
  for (std::size_t k = source.find(kToken); k != std::string::npos; k = source.find(kToken, k + 1)) {
    const std::size_t e = k + kToken.size();
    const bool separator = e + 1 < source.size() && source[e] == 'x' && std::isdigit(static_cast<unsigned char>(source[e + 1]));
    if (e >= source.size() || !is_ident(source[e]) || separator) at.push_back(k);
  }
  if (at.empty())
    throw Error({file, 0, 0}, "", "max-seq needs a model whose sequence length is a parameter, and this one has no $seq",
                "write $seq where the length goes (JSON: \"shape\": [$seq, 512]; reshapes: $seq,8,64), or give a config.json");
  SeqModelFactory f;
  f.build = [source = std::move(source), file = std::move(file), at = std::move(at)](i64 seq) {
    std::string text;
    std::size_t from = 0;
    const std::string n = std::to_string(seq);
    for (std::size_t k : at) {
      text.append(source, from, k - from);
      text += n;
      from = k + kToken.size();
    }
    text.append(source, from, std::string::npos);
    return parse_model(text, file);
  };
  return f;
}

MaxSeq max_seq(const SeqModelFactory& factory, const Options& options) {
  if (!options.gpu) throw Error({}, "", "max-seq needs a GPU", "give --gpu NAME or --gpu SIZE (e.g. --gpu 80GiB)");
  MaxSeq r;
  r.limit = factory.limit > 0 ? std::min(factory.limit, kSeqSearchLimit) : kSeqSearchLimit;
  const i64 usable = usable_bytes(options);
  if (usable <= 0) return r;
  auto fits = [&](i64 seq) -> std::optional<bool> {
    try {
      return !run_pipeline(factory.build(seq), options, usable).sim.oom;
    } catch (const Error& e) {
      // byte counts beyond 64 bits at this length certainly do not fit; anything else (a shape
      // error) is the model's and is reported
      if (std::string(e.what()).find("overflows") != std::string::npos) return false;
      throw;
    }
  };
  // the model at T = 1 is checked first: a model that cannot be built is an error, not "0 fits"
  (void)factory.build(1);
  const i64 start = std::min(kSeqSearchStart, r.limit);
  LargestSearch s = search_largest(fits, start, r.limit, std::max<i64>(1, start / 16));
  r.max_seq = s.largest;
  r.n_probes = s.n_probes;
  r.capped = s.capped;
  return r;
}

std::vector<Remedy> remedies(const Model& model, const Options& options) {
  std::vector<Remedy> out;
  if (!options.gpu) return out;
  std::vector<int> rank;  // cost order (see estimate.hpp); equal ranks keep the order they were tried in
  auto attempt = [&](int cost_rank, std::string change, std::string why, std::string cost, Options o) {
    Estimate e = estimate(model, o);
    out.push_back({std::move(change), std::move(why), std::move(cost), o, e.device_bytes, e.peak_reserved_bytes,
                   e.fits.value_or(false)});
    rank.push_back(cost_rank);
    return e;
  };
  enum Rank { kFree, kPrecision, kRecompute, kAccumulate, kTrainingChange, kSmallerBatch };
  if (!options.train.set_to_none) {
    Options o = options;
    o.train.set_to_none = true;
    attempt(kFree, "--zero-grad set-to-none", "gradients are freed before the forward pass", "none", o);
  }
  const Optimizer opt = options.train.optimizer;
  if ((opt == Optimizer::adam || opt == Optimizer::adamw) && options.train.impl == OptimizerImpl::foreach) {
    Options o = options;
    o.train.impl = OptimizerImpl::fused;
    attempt(kFree, "--optimizer-impl fused", "the fused step allocates no parameter-sized temporaries", "none (same update)", o);
  }
  if (options.train.precision == DType::f32 && options.train.param_dtype == DType::f32) {
    Options o = options;
    o.train.precision = DType::bf16;
    attempt(kPrecision, "--dtype bf16", "autocast halves most activations (parameters and gradients stay float32)",
            "bfloat16 matmuls (usually faster; slightly different numerics)", o);
  }
  // Checkpointing the model's blocks (when it has a group of sibling regions and checkpoints none yet):
  // reentrant as transformers does, non-reentrant when a block's inputs need no grad (reentrant refuses).
  if (options.train.checkpoint.empty()) {
    std::vector<std::string> globs;
    try {
      globs = block_checkpoint_globs(build_graph(model, graph_settings(effective_train(options))));
    } catch (const Error&) {
    }
    if (!globs.empty()) {
      std::string list;
      for (const auto& gl : globs) list += (list.empty() ? "" : ",") + gl;
      for (CheckpointImpl impl : {CheckpointImpl::reentrant, CheckpointImpl::non_reentrant}) {
        Options o = options;
        o.train.checkpoint = globs;
        o.train.checkpoint_impl = impl;
        try {
          std::string change = "--checkpoint '" + list + "'";
          if (impl != CheckpointImpl::reentrant) change += " --checkpoint-impl non-reentrant";
          // the cost comes from the checked estimate itself
          std::size_t at = out.size();
          Estimate e = attempt(kRecompute, change, "the blocks keep only their inputs; backward reruns each one's forward", "", o);
          out[at].cost = "about " + std::to_string(recompute_percent(e)) + "% more step time (one more forward of the blocks)";
          break;
        } catch (const Error&) {
          continue;  // reentrant refused (an input needs no grad): try the hooks version
        }
      }
    }
  }
  // (a model beyond the search's size gets the other remedies only)
  MaxBatch mb = static_cast<i64>(model.layers.size()) > kMaxSearchLayers ? MaxBatch{} : max_batch(model, options);
  if (mb.max_batch >= 1 && mb.max_batch < options.train.batch) {
    // The same effective batch as K micro-batches: the smallest K dividing the batch whose micro-batch
    // is at most the largest batch that fits (then checked by the whole pipeline).
    const i64 b = options.train.batch * options.train.grad_accumulation;
    for (i64 k = 2; k <= b && k <= 1024; ++k) {
      if (b % k != 0 || b / k > mb.max_batch) continue;
      Options g = options;
      g.train.batch = b / k;
      g.train.grad_accumulation = static_cast<int>(k);
      attempt(kAccumulate, "--batch " + std::to_string(b / k) + " --grad-accum " + std::to_string(k),
              "the same effective batch (" + std::to_string(b) + ") as " + std::to_string(k) + " micro-batches of " +
                  std::to_string(b / k) + "; gradients accumulate in .grad",
              "smaller kernels, " + std::to_string(k) + " passes per step (slower when " + std::to_string(b / k) +
                  " samples underuse the GPU)",
              g);
      break;
    }
    Options o = options;
    o.train.batch = mb.max_batch;
    attempt(kSmallerBatch, "--batch " + std::to_string(mb.max_batch), "the largest batch that fits with the other settings unchanged",
            "a smaller effective batch (learning rate and convergence change)", o);
  }
  if (opt != Optimizer::sgd && opt != Optimizer::sgd_momentum) {
    Options o = options;
    o.train.optimizer = Optimizer::sgd_momentum;
    attempt(kTrainingChange, "--optimizer sgd-momentum", "one state tensor per parameter instead of two, no sqrt temporaries",
            "a different optimizer (training dynamics change)", o);
  }
  if (opt == Optimizer::adam || opt == Optimizer::adamw) {
    Options o = options;
    o.train.optimizer = Optimizer::adamw8bit;
    attempt(kTrainingChange, "--optimizer adamw8bit", "bitsandbytes' 8-bit AdamW state: 2 bytes per parameter instead of 8",
            "8-bit optimizer state (bitsandbytes; blockwise-quantized moments)", o);
  }
  std::vector<std::size_t> order(out.size());
  for (std::size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return rank[a] < rank[b]; });
  std::vector<Remedy> sorted;
  for (std::size_t k : order) sorted.push_back(std::move(out[k]));
  return sorted;
}

}  // namespace memfit

// Human-readable output: a per-layer table, the peak and its breakdown, the verdict, the rules of thumb.
// With explain, every number is followed by the arithmetic that produced it.
#include <algorithm>
#include <sstream>
#include <unordered_map>

#include "memfit/report.hpp"

namespace memfit {

namespace {

std::string shape_x(const std::vector<i64>& s) {
  std::string o;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i) o += 'x';
    o += std::to_string(s[i]);  // appended apart: GCC 12's -Wrestrict misfires on "x" + to_string
  }
  return o.empty() ? "scalar" : o;
}

std::string product_expr(const TensorType& t) {
  std::string o;
  for (i64 d : t.shape) o += std::to_string(d) + " x ";
  return o + std::to_string(dtype_size(t.dtype)) + " B";
}

std::string pad(std::string s, std::size_t w, bool right = false) {
  if (s.size() >= w) return s;
  return right ? std::string(w - s.size(), ' ') + s : s + std::string(w - s.size(), ' ');
}

std::string mib(i64 b) { return format_mib(b); }

// Layer names in text output are at most this many bytes: the table pads every row to its widest
// name, so one 1 MiB name in a model repeated 20,000 times once meant ~20 GB of text. JSON keeps
// the full names.
constexpr std::size_t kMaxNameBytes = 40;

// The name itself, or its first bytes (cut at a UTF-8 character boundary) and "...".
std::string short_name(const std::string& name) {
  if (name.size() <= kMaxNameBytes) return name;
  std::size_t cut = kMaxNameBytes - 3;
  while (cut > 0 && (static_cast<unsigned char>(name[cut]) & 0xC0) == 0x80) --cut;  // not inside a character
  return name.substr(0, cut) + "...";
}

std::string precision_label(const TrainSettings& t) {
  std::string l = t.param_dtype == DType::bf16 ? "bf16-true (model.to(bfloat16))"
                  : t.param_dtype == DType::f16 ? "fp16-true (model.to(float16))"
                  : t.precision == DType::f16   ? "fp16 autocast"
                  : t.precision == DType::bf16  ? "bf16 autocast"
                                                : "fp32";
  if (t.grad_scaler) l += " + GradScaler";
  if (t.qlora) l += ", QLoRA (NF4 base)";
  if (t.lora)
    l += ", LoRA r=" + std::to_string(t.lora->r);
  return l;
}

void header(std::ostringstream& o, const Estimate& e) {
  const Options& op = e.options;
  o << "memfit " << kVersion << " - " << e.model_name << " (" << e.model_file << ")\n";
  o << "batch " << op.train.batch << ", " << precision_label(op.train) << ", optimizer "
    << optimizer_name(op.train.optimizer);
  const Optimizer opt = op.train.optimizer;
  if (opt != Optimizer::adamw8bit && opt != Optimizer::paged_adamw && opt != Optimizer::paged_adamw8bit)
    o << " (" << optimizer_impl_name(op.train.impl) << ")";
  o << ", zero_grad("
    << (op.train.set_to_none ? "set_to_none=True" : "set_to_none=False") << ")";
  if (op.train.grad_accumulation > 1) o << ", " << op.train.grad_accumulation << " micro-batches per step";
  auto globs = [](const std::vector<std::string>& g) {
    std::string t;
    for (const auto& x : g) t += (t.empty() ? "" : ",") + x;
    return t;
  };
  if (!op.train.freeze.empty()) o << ", frozen: " << globs(op.train.freeze);
  if (!op.train.train.empty()) o << ", training only: " << globs(op.train.train);
  if (op.gpu) o << ", GPU " << op.gpu->name;
  o << "\n\n";
}

// Top-level regions (blocks, repeats) with what their layers hold: a long model stays readable.
void region_summary(std::ostringstream& o, const Estimate& e) {
  std::vector<std::size_t> top;
  for (std::size_t k = 0; k < e.graph.regions.size(); ++k)
    if (e.graph.regions[k].depth == 0) top.push_back(k);
  if (top.empty()) return;
  std::vector<int> top_of(e.graph.nodes.size(), -1);  // node -> its top-level region
  for (std::size_t i = 0; i < e.graph.nodes.size(); ++i) {
    int r = e.graph.nodes[i].region;
    while (r >= 0 && e.graph.regions[static_cast<std::size_t>(r)].parent >= 0) r = e.graph.regions[static_cast<std::size_t>(r)].parent;
    top_of[i] = r;
  }
  constexpr std::size_t kShown = 40;
  o << "by region (top level):\n";
  o << "  " << pad("region", 24) << pad("layers", 8, true) << pad("params", 14, true) << pad("frozen", 14, true)
    << pad("saved", 14, true) << "\n";
  for (std::size_t n = 0; n < top.size() && n < kShown; ++n) {
    const Region& rg = e.graph.regions[top[n]];
    i64 params = 0, frozen = 0, saved = 0;
    for (const auto& row : e.layers)
      if (top_of[static_cast<std::size_t>(row.node)] == static_cast<int>(top[n])) {
        params += row.params;
        frozen += row.frozen_params;
        saved += row.saved_bytes;
      }
    std::string name = rg.name.size() > 22 ? rg.name.substr(0, 21) + "~" : rg.name;
    o << "  " << pad(name, 24) << pad(std::to_string(rg.n_nodes), 8, true) << pad(format_count(params), 14, true)
      << pad(format_count(frozen), 14, true) << pad(mib(saved), 14, true) << "\n";
  }
  if (top.size() > kShown) o << "  ... and " << top.size() - kShown << " more regions (all in --json \"regions\")\n";
}

// Repeated blocks fold in the table: a region identical to the sibling just before it (same layer
// kinds, output shapes and parameter counts in the same order, and a name that differs only in its
// last number: model.layers.1 after model.layers.0) is shown as one line, so an 80-layer decoder is
// one layer in full plus "x 79". --explain shows every layer.
struct Folding {
  std::vector<int> like;  // region -> the first region of its run of identical siblings; -1: not folded
  std::vector<int> next;  // region -> the sibling that starts right after it (-1: none)
};
bool numbered_sibling(const std::string& a, const std::string& b) {
  auto dot_a = a.rfind('.'), dot_b = b.rfind('.');
  std::string_view pa = dot_a == std::string::npos ? std::string_view() : std::string_view(a).substr(0, dot_a + 1);
  std::string_view pb = dot_b == std::string::npos ? std::string_view() : std::string_view(b).substr(0, dot_b + 1);
  auto digits = [](std::string_view t) { return !t.empty() && t.find_first_not_of("0123456789") == std::string_view::npos; };
  return pa == pb && digits(std::string_view(a).substr(pa.size())) && digits(std::string_view(b).substr(pb.size()));
}
// Table column widths: a 70B model's 70,553,706,496 parameters and 99999.99 MiB need a space before them.
constexpr std::size_t kParamsW = 16, kMibW = 14;

Folding fold_repeats(const Estimate& e) {
  const auto& regions = e.graph.regions;
  Folding f;
  f.like.assign(regions.size(), -1);
  // Each node's kind, output shape and parameters interned to an id once (O(nodes)); two sibling
  // regions repeat when their node id sequences are equal, compared only for numbered neighbours.
  std::vector<int> node_id(e.graph.nodes.size());
  {
    std::unordered_map<std::string, int> ids;
    std::string sig;
    for (std::size_t i = 0; i < e.graph.nodes.size(); ++i) {
      const Node& nd = e.graph.nodes[i];
      sig = nd.rule->kind;
      for (i64 d : nd.shape.out.shape) (sig += ',') += std::to_string(d);
      for (const auto& p : nd.shape.params) ((sig += '|') += std::to_string(p.numel())) += p.trainable ? 't' : 'f';
      node_id[i] = ids.emplace(sig, static_cast<int>(ids.size())).first->second;
    }
  }
  auto same_nodes = [&](const Region& a, const Region& b) {
    if (a.last_node - a.first_node != b.last_node - b.first_node) return false;
    for (int t = 0; t <= a.last_node - a.first_node; ++t)
      if (node_id[static_cast<std::size_t>(a.first_node + t)] != node_id[static_cast<std::size_t>(b.first_node + t)]) return false;
    return true;
  };
  // siblings by where they start: (parent, first node) -> region
  std::unordered_map<i64, int> starting;
  const i64 n_nodes = static_cast<i64>(e.graph.nodes.size());
  auto key = [&](int parent, int node) { return (static_cast<i64>(parent) + 1) * (n_nodes + 1) + node; };
  for (std::size_t k = 0; k < regions.size(); ++k) starting.emplace(key(regions[k].parent, regions[k].first_node), static_cast<int>(k));
  f.next.assign(regions.size(), -1);
  for (std::size_t j = 0; j < regions.size(); ++j) {  // parents come first, so a run's start is resolved before it
    auto it = starting.find(key(regions[j].parent, regions[j].last_node + 1));
    if (it == starting.end()) continue;
    const auto k = static_cast<std::size_t>(it->second);
    f.next[j] = it->second;
    if (numbered_sibling(regions[j].name, regions[k].name) && same_nodes(regions[j], regions[k]))
      f.like[k] = f.like[j] >= 0 ? f.like[j] : static_cast<int>(j);
  }
  return f;
}

}  // namespace

std::string render_text(const Model& model, const Options& options, bool explain) {
  return render_text(model, estimate(model, options), explain);
}

std::string render_text(const Model& model, const Estimate& e, bool explain) {
  const Options& options = e.options;
  std::ostringstream o;
  header(o, e);
  // table
  std::size_t name_w = 16;  // the widest layer name (at most kMaxNameBytes) sets the first column
  for (const auto& nd : e.graph.nodes) name_w = std::max(name_w, std::min(nd.layer->name.size(), kMaxNameBytes) + 2);
  o << pad("layer", name_w) << pad("kind", 19) << pad("output (N first)", 18) << pad("params", kParamsW, true)
    << pad("saved", 14, true) << pad("grads", kMibW, true) << pad("optim", kMibW, true) << "\n";
  const Folding folding = explain ? Folding{} : fold_repeats(e);
  std::vector<int> row_of(e.graph.nodes.size(), -1);
  for (std::size_t k = 0; k < e.layers.size(); ++k) row_of[static_cast<std::size_t>(e.layers[k].node)] = static_cast<int>(k);
  for (std::size_t li = 0; li < e.layers.size(); ++li) {
    const auto& r = e.layers[li];
    const Node& nd = e.graph.nodes[static_cast<std::size_t>(r.node)];
    if (!folding.like.empty()) {
      // the outermost region starting here that repeats its predecessor: fold the whole run
      int fold = -1;
      for (int g = nd.region; g >= 0; g = e.graph.regions[static_cast<std::size_t>(g)].parent)
        if (e.graph.regions[static_cast<std::size_t>(g)].first_node == r.node && folding.like[static_cast<std::size_t>(g)] >= 0) fold = g;
      if (fold >= 0) {
        const int first = fold;
        int last_region = fold, n_regions = 0, last_node = r.node;
        i64 params = 0, saved = 0, grads = 0, optim = 0;
        for (int g = first; g >= 0 && g < static_cast<int>(e.graph.regions.size());) {
          const Region& rg = e.graph.regions[static_cast<std::size_t>(g)];
          ++n_regions;
          last_region = g;
          last_node = rg.last_node;
          for (int i = rg.first_node; i <= rg.last_node; ++i) {
            int ri = row_of[static_cast<std::size_t>(i)];
            if (ri < 0) continue;
            params += e.layers[static_cast<std::size_t>(ri)].params;
            saved += e.layers[static_cast<std::size_t>(ri)].saved_bytes;
            grads += e.layers[static_cast<std::size_t>(ri)].grad_bytes;
            optim += e.layers[static_cast<std::size_t>(ri)].optimizer_bytes;
          }
          // the next sibling, while it is in the same run
          int next = folding.next[static_cast<std::size_t>(g)];
          g = next >= 0 && folding.like[static_cast<std::size_t>(next)] == folding.like[static_cast<std::size_t>(first)] ? next : -1;
        }
        const std::string& model_name = e.graph.regions[static_cast<std::size_t>(folding.like[static_cast<std::size_t>(first)])].name;
        std::string span = short_name(e.graph.regions[static_cast<std::size_t>(first)].name) +
                           (n_regions > 1 ? " .. " + short_name(e.graph.regions[static_cast<std::size_t>(last_region)].name) : "");
        o << pad(span, name_w) << pad(std::to_string(n_regions) + " more like " + short_name(model_name), 37)
          << pad(format_count(params), kParamsW, true) << pad(mib(saved), 14, true) << pad(mib(grads), kMibW, true)
          << pad(mib(optim), kMibW, true) << "\n";
        while (li + 1 < e.layers.size() && e.layers[li + 1].node <= last_node) ++li;
        continue;
      }
    }
    std::string kind = nd.rule->kind;
    if (std::string(r.output_storage) == "in-place" || std::string(r.output_storage) == "view")
      kind += std::string(" (") + r.output_storage + ")";
    o << pad(short_name(nd.layer->name), name_w) << pad(kind, 19) << pad(shape_x(r.out.shape), 18) << pad(format_count(r.params), kParamsW, true)
      << pad(mib(r.saved_bytes), 14, true) << pad(mib(r.grad_bytes), kMibW, true) << pad(mib(r.optimizer_bytes), kMibW, true)
      << "\n";
    if (!explain) continue;
    o << "    output " << dtype_name(r.out.dtype) << ": " << product_expr(r.out) << " = " << format_bytes_exact(r.output_bytes)
      << (r.node == 0                                          ? " (the batch, held by the loop)"
          : std::string(r.output_storage) == "parameter" ? " (the parameter itself: nothing allocated)"
                                                         : "")
      << "\n";
    for (const auto& p : nd.shape.params) {
      TensorType t{p.shape, p.dtype};
      o << "    " << (p.is_buffer ? "buffer " : p.trainable ? "param " : "frozen param ") << p.name << " " << shape_x(p.shape) << ": "
        << format_count(p.numel()) << " x " << dtype_size(p.dtype) << " B = " << format_bytes_exact(t.bytes()) << "\n";
    }
    if (r.grad_bytes) o << "    gradient (.grad, the params' shapes and dtypes) = " << format_bytes_exact(r.grad_bytes) << "\n";
    if (r.optimizer_bytes)
      o << "    optimizer state (" << optimizer_name(options.train.optimizer) << ") = " << format_bytes_exact(r.optimizer_bytes)
        << "\n";
    for (const auto& s : r.saved) {
      o << "    saves " << s.role << " " << dtype_name(s.type.dtype) << " " << shape_x(s.type.shape) << ": "
        << product_expr(s.type) << " = " << format_bytes_exact(s.type.bytes());
      if (s.storage_bytes != s.type.bytes() && !s.is_param)
        o << " (a view: keeps its whole storage, " << format_bytes_exact(s.storage_bytes) << ")";
      if (s.is_param) o << " (the parameter itself: not extra)";
      else if (s.is_input) o << " (held by the loop anyway: not counted)";
      else if (s.owner != s.node)
        o << " (same storage as saved by '" << short_name(e.graph.nodes[static_cast<std::size_t>(s.owner)].layer->name)
          << "': counted once)";
      o << "\n";
    }
  }
  o << "\n";
  o << "parameters      " << format_count(e.total_params) << " (" << mib(e.total_param_bytes) << ")";
  if (explain) o << " = " << format_bytes_exact(e.total_param_bytes) << " (the elements times their dtype's size)";
  if (e.graph.n_frozen_params > 0)
    o << ", of which frozen " << format_count(e.graph.n_frozen_params) << " (no .grad, no optimizer state)";
  o << "\n";
  if (e.total_buffer_bytes) o << "buffers         " << mib(e.total_buffer_bytes) << "\n";
  o << "gradients       " << mib(e.total_grad_bytes) << "\n";
  o << "optimizer state " << mib(e.total_optimizer_bytes) << "\n";
  o << "saved for backward (unique storages) " << mib(e.total_saved_bytes);
  if (explain) o << " = " << format_bytes_exact(e.total_saved_bytes) << " (sum of the per-layer 'saved' column)";
  o << "\n";
  o << "input batch + targets " << mib(e.input_bytes) << "\n";
  region_summary(o, e);
  o << "\n";

  o << "peak (iteration " << e.peak_iteration << ", " << phase_name(e.peak_phase);
  if (e.peak_node >= 0) o << " at '" << short_name(e.graph.nodes[static_cast<std::size_t>(e.peak_node)].layer->name) << "'";
  o << ")\n";
  o << "  torch.cuda.max_memory_allocated  " << pad(mib(e.peak_allocated_bytes), 14, true) << "  ("
    << format_bytes_exact(e.peak_allocated_bytes) << ")\n";
  o << "  torch.cuda.max_memory_reserved   " << pad(mib(e.peak_reserved_bytes), 14, true) << "  ("
    << format_bytes_exact(e.peak_reserved_bytes) << ")\n";
  o << "  + CUDA context                   " << pad(mib(options.context_bytes), 14, true) << "\n";
  if (e.managed_bytes > 0)
    o << "  + paged optimizer state (managed) " << pad(mib(e.managed_bytes), 14, true) << "  (outside the allocator)\n";
  o << "  = on the GPU (nvidia-smi)        " << pad(mib(e.device_bytes), 14, true) << "\n";
  if (explain)
    o << "    allocated = sum of live blocks, each request rounded up to a multiple of 512 B;\n"
         "    reserved = sum of cudaMalloc'd segments (2 MiB for requests <= 1 MiB, 20 MiB below 10 MiB,\n"
         "    else rounded up to 2 MiB), cached and reused, not returned to the driver.\n";
  o << "  at the peak:\n";
  std::string sum_expr;
  for (int c = 0; c < n_categories; ++c) {
    i64 b = e.sim.peak_breakdown[static_cast<std::size_t>(c)];
    if (!b) continue;
    o << "    " << pad(category_name(static_cast<Category>(c)), 17) << pad(mib(b), 14, true) << "\n";
    sum_expr += (sum_expr.empty() ? "" : " + ") + format_count(b);
  }
  if (explain)
    o << "    allocated at the peak = " << sum_expr << " = " << format_bytes_exact(e.peak_allocated_bytes) << "\n";
  if (explain && e.sim.peak_event >= 0) {
    // What is live at the peak, largest first: replay the plan's events up to the peak.
    std::vector<char> live(e.plan.tensors.size(), 0);
    for (int k = 0; k <= e.sim.peak_event; ++k) {
      const PlanEvent& ev = e.plan.events[static_cast<std::size_t>(k)];
      live[static_cast<std::size_t>(ev.tensor)] = ev.is_free ? 0 : 1;
    }
    std::vector<int> ids;
    for (std::size_t t = 0; t < live.size(); ++t)
      if (live[t]) ids.push_back(static_cast<int>(t));
    std::sort(ids.begin(), ids.end(), [&](int a, int b) {
      return e.plan.tensors[static_cast<std::size_t>(a)].bytes > e.plan.tensors[static_cast<std::size_t>(b)].bytes;
    });
    constexpr std::size_t kShown = 12;
    o << "  largest tensors live at the peak (" << ids.size() << " in all):\n";
    for (std::size_t k = 0; k < ids.size() && k < kShown; ++k) {
      const PlanTensor& t = e.plan.tensors[static_cast<std::size_t>(ids[k])];
      o << "    " << pad(format_bytes_exact(t.bytes), 18, true) << "  " << pad(category_name(t.category), 16) << " from '"
        << (t.node >= 0 ? short_name(e.graph.nodes[static_cast<std::size_t>(t.node)].layer->name) : std::string("-")) << "'\n";
    }
  }
  o << "  per iteration (max_memory_allocated / reserved after reset_peak_memory_stats):\n";
  for (const auto& ip : e.sim.iterations)
    if (ip.iteration > 0)
      o << "    iteration " << ip.iteration << ": " << mib(ip.allocated_bytes) << " / " << mib(ip.reserved_bytes) << "\n";
  o << "\n";
  if (options.gpu) {
    const Gpu& g = *options.gpu;
    o << "GPU " << g.name << ": " << mib(g.memory_bytes) << " total, " << mib(g.cuda_total_bytes)
      << " visible to CUDA" << (g.cuda_total_observed || g.source == "size given by the user" ? "" : " (estimated)")
      << ", " << mib(e.usable_bytes) << " usable after the context\n";
    if (*e.fits) {
      o << "FITS: headroom " << mib(e.headroom_bytes);
      if (e.fits_only_by_freeing_cache) o << " (only because PyTorch frees its cache when memory runs out: slower)";
      o << "\n";
    } else {
      o << "DOES NOT FIT: " << mib(-e.headroom_bytes) << " short\n";
      o << "what to change:\n";
      for (const auto& r : remedies(model, options))
        o << "  " << pad(r.change, 28) << pad(mib(r.device_bytes), 14, true) << " on the GPU  "
          << (r.fits ? "fits" : "does not fit") << "  (" << r.why << "; cost: " << r.cost << ")\n";
    }
    o << "\n";
  }
  o << "rules of thumb for comparison:\n";
  for (const auto& r : e.rules_of_thumb) {
    o << "  " << pad(r.name, 26) << pad(mib(r.bytes), 14, true);
    if (explain) o << "   " << r.formula;
    o << "\n";
  }
  for (const auto& n : e.notes) o << "note: " << n << "\n";
  return o.str();
}

std::string render_max_batch_text(const Model& model, const Options& options) {
  return render_max_batch_text(model, options, max_batch(model, options));
}

std::string render_max_batch_text(const Model& model, const Options& options, const MaxBatch& mb) {
  std::ostringstream o;
  if (max_batch_capped(mb))
    o << "every batch up to the search cap fits on " << options.gpu->name << ": " << format_count(mb.max_batch)
      << " (the search's cap, not a limit of this GPU)\n";
  else
    o << "largest batch that fits on " << options.gpu->name << ": " << mb.max_batch << "\n";
  if (mb.max_batch > 0) {
    Options at = options;
    at.train.batch = mb.max_batch;
    Estimate e = estimate(model, at);
    o << "  at batch " << mb.max_batch << ": allocated " << mib(e.peak_allocated_bytes) << " of "
      << mib(e.usable_bytes) << " usable, headroom " << mib(e.headroom_bytes) << "\n";
    if (e.fits_only_by_freeing_cache)
      o << "  (fits only because PyTorch frees its cached segments when cudaMalloc fails: without that it would\n"
           "   reserve " << mib(e.peak_reserved_bytes) << "; a batch where the headroom stays positive without it\n"
           "   trains faster)\n";
  } else {
    o << "  even batch 1 does not fit\n";
  }
  o << "  (" << mb.n_probes << " full estimates searched)\n";
  return o.str();
}

std::string render_max_seq_text(const SeqModelFactory& factory, const Options& options, const MaxSeq& ms) {
  std::ostringstream o;
  if (ms.capped)
    o << "every sequence length up to the search cap fits on " << options.gpu->name << ": " << format_count(ms.max_seq)
      << " (the cap, not a limit of this GPU)\n";
  else
    o << "longest sequence that fits on " << options.gpu->name << " at batch " << options.train.batch << ": "
      << format_count(ms.max_seq) << "\n";
  if (ms.max_seq > 0) {
    Estimate e = estimate(factory.build(ms.max_seq), options);
    o << "  at " << format_count(ms.max_seq) << " tokens: allocated " << mib(e.peak_allocated_bytes) << " of "
      << mib(e.usable_bytes) << " usable, headroom " << mib(e.headroom_bytes) << "\n";
  } else {
    o << "  even one token does not fit\n";
  }
  o << "  (" << ms.n_probes << " full estimates searched, one per length tried)\n";
  return o.str();
}

std::string render_gpus_text() {
  std::ostringstream o;
  o << pad("GPU", 18) << pad("nvidia-smi total", 18, true) << pad("CUDA total", 16, true) << "  cc    source\n";
  for (const auto& g : gpu_catalog())
    o << pad(g.name, 18) << pad(format_count(g.memory_bytes / MiB) + " MiB", 18, true)
      << pad(format_count(g.cuda_total_bytes / MiB) + " MiB", 16, true) << (g.cuda_total_observed ? " " : "*") << " "
      << g.cc_major << "." << g.cc_minor << "   " << g.source << "\n";
  o << "* estimated: nvidia-smi total minus " << mib(kDriverReservedDefaultBytes) << " driver reservation\n";
  o << "any size also works: --gpu 24GiB, --gpu 12GB, --gpu 12000MiB\n";
  return o.str();
}

}  // namespace memfit

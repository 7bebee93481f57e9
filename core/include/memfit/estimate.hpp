// The pipeline every front end calls: model -> graph -> plan -> allocator model -> estimate.
// Searches (largest batch, remedies, sweeps) call run_pipeline again with changed settings.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "memfit/allocator.hpp"
#include "memfit/device.hpp"
#include "memfit/graph.hpp"
#include "memfit/hf_config.hpp"
#include "memfit/plan.hpp"

namespace memfit {

struct Options {
  TrainSettings train;
  std::optional<Gpu> gpu;
  i64 context_bytes = kCudaContextDefaultBytes;  // CUDA context + loaded kernels, outside the allocator
  std::optional<Workspaces> workspaces;          // unset: default_workspaces(gpu)
  AllocatorConfig allocator;                     // capacity is set from the GPU by estimate()
  bool timeline = false;                         // record memory per op (for charts)
  bool events = false;                           // include the planned alloc/free events in the output
  // How a Hugging Face config.json becomes a model (--seq, --attention, --head; docs/hf-config.md).
  // Read when the model is built, before the pipeline: memfit models refuse them (refuse_hf_options).
  i64 seq = 0;  // tokens per sample; 0: min(kDefaultSeq, max_position_embeddings)
  std::optional<HfAttention> attention;
  std::optional<HfHead> head;
  HfOptions hf() const { return {seq, attention, head}; }
};

struct LayerRow {
  int node = 0;
  TensorType out;
  const char* output_storage = "new";  // "new", "in-place" (shares its input), "view"
  i64 params = 0, frozen_params = 0, param_bytes = 0, buffer_bytes = 0;
  i64 grad_bytes = 0, optimizer_bytes = 0, output_bytes = 0;
  i64 saved_bytes = 0;  // storages this layer is the first to save (params and the loop's batch excluded)
  std::vector<SavedRecord> saved;
};

struct RuleOfThumb {
  std::string name;
  std::string formula;
  i64 bytes = 0;
};

struct Estimate {
  Options options;
  std::string model_name, model_file;
  Graph graph;
  Plan plan;
  SimResult sim;  // without a capacity: what max_memory_allocated/reserved report
  std::vector<LayerRow> layers;
  i64 total_params = 0, total_param_bytes = 0, total_buffer_bytes = 0, total_grad_bytes = 0;
  i64 total_optimizer_bytes = 0, total_saved_bytes = 0, input_bytes = 0, workspace_bytes = 0;
  // the peak: the worse of the first and the steady-state iteration
  i64 peak_allocated_bytes = 0, peak_reserved_bytes = 0, device_bytes = 0;
  i64 managed_bytes = 0;  // paged optimizer state (CUDA managed memory): in device_bytes, not in reserved
  Phase peak_phase = Phase::setup;
  int peak_node = -1, peak_iteration = 0;
  // verdict (only with a GPU)
  std::optional<bool> fits;
  i64 usable_bytes = 0;    // the GPU's CUDA total minus the context and managed memory: what the allocator can reserve
  i64 headroom_bytes = 0;  // usable minus the peak reserved (negative: missing)
  bool fits_only_by_freeing_cache = false;  // needed the allocator's release-and-retry path
  std::vector<RuleOfThumb> rules_of_thumb;
  std::vector<std::string> notes;
  // Activation checkpointing's price: matrix-multiply and convolution FLOPs (2 x multiply-adds) of one
  // forward, and of the reruns in one backward (0 without --checkpoint).
  i64 forward_flops = 0, recompute_flops = 0;
};

// 2 x multiply-adds of one node's forward when it is a convolution, a linear layer or a matmul (the
// ops that dominate a training step's time); 0 for the others.
i64 node_matmul_flops(const Node& nd);

// The regions a checkpointing remedy would wrap: the largest group of sibling regions (resnet's layer1..4,
// a transformer's model.layers.*), as --checkpoint globs; empty when the model has no region with a sibling.
std::vector<std::string> block_checkpoint_globs(const Graph& g);
// The reruns' share of a step's compute, recompute / (3 x forward FLOPs), in whole percent.
int recompute_percent(const Estimate& e);

// The one pipeline every command, search and front end runs: graph -> schedule -> plan -> allocator
// model. `capacity_bytes` > 0 replays with the GPU's usable memory as the cudaMalloc limit (the
// release-and-retry path included), 0 without a limit (what max_memory_* report on a roomy GPU).
struct Pipeline {
  Graph graph;
  Plan plan;
  SimResult sim;
  std::vector<std::string> notes;  // what the fine-tuning / precision settings assume (finetune_notes)
};
Pipeline run_pipeline(const Model& model, const Options& options, i64 capacity_bytes = 0);

// The allocator model at many batch sizes for one model and settings (searches, sweeps): the plan is
// built once when its sizes are affine in the batch (checked), else the pipeline runs per batch.
class BatchReplayer {
 public:
  BatchReplayer(const Model& model, const Options& options);
  SimResult simulate(i64 batch, i64 capacity_bytes = 0);  // throws Error ("overflows") past 64 bits
  bool reuses_plan() const { return affine_; }

 private:
  const Model& model_;
  Options options_;
  Plan plan_;
  std::vector<i64> base_bytes_, per_sample_bytes_;
  bool affine_ = false;
};

// The settings the planner runs with (workspaces resolved for the GPU).
TrainSettings effective_train(const Options& options);
i64 usable_bytes(const Options& options);  // the GPU's CUDA-visible total minus the context; 0 without a GPU

Estimate estimate(const Model& model, const Options& options);

// Largest n in [1, limit] with fits(n), for a fits() that is monotone (true up to some n, then
// false): galloping from `start`, then bisection. Shared by max-batch here and the probe's search
// by real allocation. fits() returning nullopt stops the search (interrupted, device error).
struct LargestSearch {
  i64 largest = 0;        // 0: even 1 does not fit
  bool capped = false;    // everything up to `limit` fits: `largest` is the limit, not a boundary
  bool stopped = false;   // fits() asked to stop
  int n_probes = 0;
};
// The first step away from `start` is `first_step`, doubling after each probe (galloping).
LargestSearch search_largest(const std::function<std::optional<bool>(i64)>& fits, i64 start, i64 limit,
                             i64 first_step = 1);
inline constexpr i64 kBatchSearchLimit = i64{1} << 40;  // beyond any GPU: stops the doubling
// Searches replay the plan a dozen times or more: they take models of at most this many layers
// (about 6 s natively at the limit on a 2-core machine; bench/). An estimate takes kMaxLayers.
inline constexpr i64 kMaxSearchLayers = 50000;

// Largest batch for which the allocator model does not run out of the GPU's usable memory.
// 0 when even batch 1 does not fit. Requires options.gpu.
struct MaxBatch {
  i64 max_batch = 0;
  int n_probes = 0;
  bool capped = false;  // every batch up to kBatchSearchLimit fits: max_batch is the search cap
};
MaxBatch max_batch(const Model& model, const Options& options);

// Longest sequence: a model per sequence length T (the hfconfig branch's config.json builder gives one;
// seq_model_factory() makes one from a source with `$seq` in it). The peak is not affine in T
// (attention's T x T scores), so every probe runs the whole pipeline: a galloping search from
// kSeqSearchStart in steps of 1/16 of it, then bisection (about 15 pipelines; bench/).
struct SeqModelFactory {
  std::function<Model(i64 seq)> build;
  i64 limit = 0;  // the longest sequence the model takes (max_position_embeddings); 0: kSeqSearchLimit
};
// A Hugging Face config.json: the builder at --seq T, up to its max_position_embeddings. Otherwise the
// source with every `$seq` replaced by T (text or JSON); throws Error when it has neither.
SeqModelFactory seq_model_factory(std::string source, std::string file, const HfOptions& hf = {});
// A user's cap (--seq-limit, "seq_limit"; 0: none) tightens the factory's own.
void limit_seq_search(SeqModelFactory& f, i64 user_limit);
inline constexpr i64 kSeqSearchLimit = i64{1} << 20;  // a million tokens: the search's cap without one
inline constexpr i64 kSeqSearchStart = 2048;
struct MaxSeq {
  i64 max_seq = 0;    // 0: even T = 1 does not fit
  int n_probes = 0;   // full pipelines run
  bool capped = false;  // every T up to `limit` fits: max_seq is the cap, not a limit of the GPU
  i64 limit = 0;      // the cap searched up to
};
MaxSeq max_seq(const SeqModelFactory& factory, const Options& options);  // requires options.gpu

// What to change when it does not fit, each computed by the whole pipeline.
struct Remedy {
  std::string change;  // e.g. "--batch 32", "--optimizer sgd-momentum", "--dtype bf16"
  std::string why;
  std::string cost;    // what it costs in time or training behaviour (remedies are sorted by it)
  Options options;
  i64 device_bytes = 0;
  i64 peak_reserved_bytes = 0;
  bool fits = false;
};
// Each is checked by running the estimate with it; ordered from the cheapest: free switches
// (set_to_none, fused Adam), autocast bf16, checkpointing (one more forward of the checkpointed
// regions), gradient accumulation (same effective batch, smaller kernels), then what changes the
// training itself (another optimizer, a smaller effective batch). Hooks for the train branch's
// 8-bit optimizers and LoRA rank go in the same list (estimate.cpp, "more remedies").
std::vector<Remedy> remedies(const Model& model, const Options& options);

}  // namespace memfit

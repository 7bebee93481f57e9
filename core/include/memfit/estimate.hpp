// The pipeline every front end calls: model -> graph -> plan -> allocator model -> estimate.
// Searches (largest batch, remedies) call the whole pipeline again with changed settings.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "memfit/allocator.hpp"
#include "memfit/device.hpp"
#include "memfit/graph.hpp"
#include "memfit/plan.hpp"

namespace memfit {

struct Options {
  TrainSettings train;
  std::optional<Gpu> gpu;
  i64 context_bytes = kCudaContextDefaultBytes;  // CUDA context + loaded kernels, outside the allocator
  std::optional<Workspaces> workspaces;          // unset: default_workspaces(gpu)
  AllocatorConfig allocator;                     // capacity is set from the GPU by estimate()
  bool timeline = false;                         // record memory per op (for charts)
};

struct LayerRow {
  int node = 0;
  TensorType out;
  const char* output_storage = "new";  // "new", "in-place" (shares its input), "view"
  i64 params = 0, param_bytes = 0, buffer_bytes = 0;
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
  Phase peak_phase = Phase::setup;
  int peak_node = -1, peak_iteration = 0;
  // verdict (only with a GPU)
  std::optional<bool> fits;
  i64 usable_bytes = 0;    // the GPU's CUDA total minus the context: what the allocator can reserve
  i64 headroom_bytes = 0;  // usable minus the peak reserved (negative: missing)
  bool fits_only_by_freeing_cache = false;  // needed the allocator's release-and-retry path
  std::vector<RuleOfThumb> rules_of_thumb;
  std::vector<std::string> notes;
};

Estimate estimate(const Model& model, const Options& options);

// Largest batch for which the allocator model does not run out of the GPU's usable memory.
// 0 when even batch 1 does not fit. Requires options.gpu.
struct MaxBatch {
  i64 max_batch = 0;
  int n_probes = 0;
};
MaxBatch max_batch(const Model& model, const Options& options);

// What to change when it does not fit, each computed by the whole pipeline.
struct Remedy {
  std::string change;  // e.g. "--batch 32", "--optimizer sgd-momentum", "--dtype bf16"
  std::string why;
  Options options;
  i64 device_bytes = 0;
  i64 peak_reserved_bytes = 0;
  bool fits = false;
};
std::vector<Remedy> remedies(const Model& model, const Options& options);

}  // namespace memfit

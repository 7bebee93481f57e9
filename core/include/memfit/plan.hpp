// The training step as a flat list of storage allocations and frees (the planner), from reference
// counts: a storage dies when the last holder lets go (the loop's variables, autograd's saved
// tensors, gradient buffers). The allocator model only replays these events.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "memfit/graph.hpp"

namespace memfit {

enum class Optimizer : std::uint8_t { sgd, sgd_momentum, adam, adamw, adagrad, rmsprop };
enum class OptimizerImpl : std::uint8_t { foreach, fused, for_loop };
const char* optimizer_name(Optimizer o);
const char* optimizer_impl_name(OptimizerImpl i);

// Library workspaces that go through the caching allocator; defaults in device.hpp with citations.
struct Workspaces {
  i64 cublas_bytes = 0;    // per thread that calls cuBLAS (forward thread, autograd's backward thread)
  i64 cublaslt_bytes = 0;  // per thread that calls cuBLASLt (addmm with bias in forward)
  i64 cudnn_conv_bytes = 0;  // per convolution call, forward and backward (not modelled by default: 0)
};

// How torch.utils.checkpoint runs a checkpointed call (docs/checkpointing.md):
//  reentrant      CheckpointFunction (use_reentrant=True): forward under no_grad keeping its tensor
//                 inputs (ctx.save_for_backward); its backward reruns the call under enable_grad and
//                 runs a nested backward over the rerun graph.
//  non_reentrant  saved-tensor hooks (use_reentrant=False): the forward records the outer graph but
//                 keeps no saved tensor; the first unpack in backward reruns the call (PyTorch 2.x stops
//                 the rerun at the last tensor it needs, 1.13 reruns all of it).
// transformers 4.x's gradient_checkpointing_enable() ends up reentrant (modeling_utils.py; sources in
// docs/checkpointing.md), the default here.
enum class CheckpointImpl : std::uint8_t { reentrant, non_reentrant };
const char* checkpoint_impl_name(CheckpointImpl c);  // "reentrant", "non-reentrant"

struct TrainSettings {
  i64 batch = 64;                // samples per forward/backward (the micro-batch with accumulation)
  int grad_accumulation = 1;     // micro-batches per optimizer step (gradients accumulate in .grad)
  DType precision = DType::f32;  // f32, or torch.autocast with f16 / bf16 (parameters stay f32)
  Optimizer optimizer = Optimizer::sgd;
  OptimizerImpl impl = OptimizerImpl::foreach;
  bool set_to_none = true;  // optimizer.zero_grad(set_to_none=True), PyTorch >= 2.0 default
  int n_iterations = 3;     // iteration 1 creates optimizer state; the last one is the steady state
  TorchRules rules = TorchRules::v2;
  Workspaces workspaces;
  std::vector<std::string> freeze, train;  // parameter globs (GraphSettings)
  // Activation checkpointing: globs over region names (`layer*`, `model.layers.*`); each top-most
  // matching region is one torch.utils.checkpoint call.
  std::vector<std::string> checkpoint;
  CheckpointImpl checkpoint_impl = CheckpointImpl::reentrant;
};
GraphSettings graph_settings(const TrainSettings& s);

// The training step as a schedule of steps over the graph; the planner executes it. The steady-state
// loop, the first iteration and gradient accumulation are different schedules of the same steps
// (activation checkpointing adds the checkpoint_* and recompute steps).
struct Step {
  enum class Kind : std::uint8_t {
    setup,           // model.cuda(), the optimizer's __init__ state, the batch on the device
    zero_grad,       // optimizer.zero_grad()
    begin_forward,   // out = model(x) starts (under autocast when mixed precision)
    forward,         // one node's forward (the loss node's is the loss phase)
    end_forward,     // autocast exits: its weight-cast cache is cleared; the loop holds out, loss
    begin_backward,  // loss.backward(): the ones_like seed
    backward,        // one node's backward
    end_backward,    // the graph is freed: anything not reached is released
    end_micro_batch, // the loop rebinds out and loss
    optimizer,       // optimizer.step()
    // Activation checkpointing (`segment` says which checkpointed call):
    checkpoint_forward,  // the call starts: its tensor inputs are held (ctx / the rerun's closure)
    recompute_begin,     // backward reaches the call: the rerun starts (under enable_grad, autocast re-entered)
    recompute,           // one node's forward rerun, saving what its backward needs
    recompute_end,       // the rerun returns: autocast's cache is cleared; unused outputs dropped
    checkpoint_release,  // the call's backward is done: its inputs (and the reentrant rerun's outputs) go
  } kind;
  std::int32_t node = -1;
  std::uint8_t iteration = 0;
  std::int32_t segment = -1;  // forward/backward/recompute steps inside a checkpointed call: its index
};

// One checkpointed call: a region, its nodes [first, last] in graph order, the values it takes from
// outside (its inputs) and the ones used after it (its outputs), as value ids.
struct CheckpointSegment {
  int region = -1;
  int first = 0, last = 0;
  std::vector<int> inputs, outputs;
  int last_saver = -1;  // the last node in it whose backward needs saved tensors (-1: none)
  int recompute_last = -1;  // where the rerun stops (PyTorch 2.x non-reentrant: at last_saver)
};
// The top-most regions matching s.checkpoint; throws Error for a glob matching no region, a region
// holding the loss, or a reentrant call whose parameters would get no gradient.
std::vector<CheckpointSegment> checkpoint_segments(const Graph& g, const TrainSettings& s);
std::vector<Step> build_schedule(const Graph& g, const TrainSettings& s, const std::vector<CheckpointSegment>& segs);
std::vector<Step> build_schedule(const Graph& g, const TrainSettings& s);
const char* step_kind_name(Step::Kind k);

struct PlanTensor {
  i64 bytes = 0;
  Category category = Category::activation;
  std::int32_t node = -1;  // graph node that caused it; -1 for none
};

struct PlanEvent {
  std::int32_t tensor = 0;
  bool is_free = false;
  Phase phase = Phase::setup;
  std::uint8_t iteration = 0;  // 0 = setup, then 1..n
  std::int32_t node = -1;
};

// What one node's forward saved for backward in iteration 1 (for the per-layer report).
struct SavedRecord {
  int node = 0;
  const char* role = "";
  int tensor = 0;        // planner storage id: equal ids are the same storage
  int owner = 0;         // node that first saved this storage (its bytes are counted there)
  int producer = -1;     // node whose output this is (-1: the target, or an op-internal tensor)
  TensorType type;         // as the op saved it (a view's own shape)
  i64 storage_bytes = 0;  // the storage it keeps alive: a saved chunk/slice view keeps all of its base
  bool is_param = false;  // a parameter itself (not an activation): listed, not counted
  bool is_input = false;  // the input batch or target (held by the loop anyway)
};

struct Plan {
  std::vector<PlanTensor> tensors;
  std::vector<PlanEvent> events;
  std::vector<SavedRecord> saved;
  std::vector<i64> node_grad_bytes;       // per node: parameter gradient bytes (f32)
  std::vector<i64> node_optimizer_bytes;  // per node: persistent optimizer state bytes
  std::vector<CheckpointSegment> checkpoints;  // the checkpointed calls the plan runs
};

Plan plan_training(const Graph& g, const TrainSettings& s);  // executes build_schedule(g, s)

}  // namespace memfit

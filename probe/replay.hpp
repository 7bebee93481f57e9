// Device-independent heart of `memfit probe`: replays the caching-allocator model's cudaMalloc/cudaFree
// plan (SimResult::segments) on a Device, and searches the largest batch whose replay fits.
#pragma once

#include <chrono>
#include <csignal>
#include <optional>
#include <string>

#include "device.hpp"
#include "memfit/estimate.hpp"

namespace memfit::probe {

// Never ask the device for more than its measured free memory minus this. The driver needs device
// memory of its own after our allocations (page tables, the memset kernel's launch, the deferred
// frees of other processes), and the GPU may be shared with a display or other jobs: taking the last
// bytes could make *them* fail. 256 MiB is about half a PyTorch context (docs/pytorch-behaviour.md s7)
// and under 1% of a 40 GB card, so the verdict loses little.
inline constexpr i64 kSafetyMarginBytes = 256 * MiB;

// The whole probe (every replay of a --max-batch search together) stops after this, freeing everything:
// a replay moves at most the GPU's memory through cudaMemset, which takes well under a second on any
// training GPU, so 60 s only trips on a device that is hung or heavily shared. --time-limit overrides.
inline constexpr double kDefaultTimeLimitSeconds = 60.0;

enum class ReplayOutcome {
  fits,          // every cudaMalloc of the plan succeeded
  does_not_fit,  // one was refused (by the device, by the margin, or the plan ran out of the budget)
  interrupted,   // SIGINT / SIGTERM between allocations
  timed_out,     // the time limit passed between allocations
  device_error,  // a CUDA error other than out-of-memory
};
const char* outcome_name(ReplayOutcome o);

struct ReplayLimits {
  i64 margin_bytes = kSafetyMarginBytes;
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  const volatile std::sig_atomic_t* stop = nullptr;  // set by the signal handler; checked between allocations
};

// The first allocation that did not succeed.
struct ReplayFailure {
  int event = -1;  // index into Plan::events
  Phase phase = Phase::setup;
  int iteration = 0;
  int node = -1;
  std::string layer;       // the graph node's layer name ("" when the event has no node)
  i64 bytes = 0;           // the cudaMalloc size (the allocator's segment)
  i64 request_bytes = 0;   // the tensor that needed it
  i64 free_bytes = 0;      // device free memory at that moment
  std::string reason;
};

struct ReplayResult {
  ReplayOutcome outcome = ReplayOutcome::fits;
  i64 batch = 0;
  i64 free_before = 0;          // device free memory when the replay started
  i64 budget_bytes = 0;         // free_before - margin: the allocator model's capacity
  i64 min_free = 0;             // lowest free memory seen (after each allocation was touched)
  i64 peak_bytes = 0;           // free_before - min_free: what the replay really took
  i64 planned_peak_bytes = 0;   // the replayed plan's peak of live segments (the model's reserved peak)
  i64 estimate_peak_reserved_bytes = 0;  // the estimate's (no capacity) peak reserved, for comparison
  int segments = 0;             // cudaMalloc calls that succeeded
  int frees = 0;                // cudaFree calls of the plan (the allocator's release-and-retry)
  int planned_segments = 0;     // cudaMalloc calls in the plan
  std::optional<ReplayFailure> failed;
  std::string error;            // device_error / interrupted / timed_out text
  bool ok() const { return outcome == ReplayOutcome::fits; }
};

// Replays an estimate's plan: the allocator model is run with the device's free memory minus the
// margin as its capacity (so it releases its cache and retries as PyTorch would), and its segments are
// cudaMalloc'd, touched and cudaFree'd in plan order. Everything is freed before it returns, on every path.
ReplayResult replay_plan(Device& device, const Estimate& estimate, const ReplayLimits& limits);

// estimate(model, options at batch) + replay_plan.
ReplayResult replay_batch(Device& device, const Model& model, const Options& options, i64 batch,
                          const ReplayLimits& limits);

struct ReplayMaxBatch {
  i64 estimate_max_batch = 0;  // core's max_batch with the measured budget as the usable memory
  i64 max_batch = 0;           // the largest batch whose replay fit (0: not even batch 1)
  int n_replays = 0;
  ReplayOutcome outcome = ReplayOutcome::fits;  // fits: the search finished (whatever it found)
  std::string error;
  std::optional<ReplayResult> at_max;    // the replay of max_batch
  std::optional<ReplayResult> above;     // the replay of the smallest batch that did not fit
};

// Binary search like core's max_batch, by real allocation: starts at core's answer for a GPU whose
// usable memory is the device's free memory minus the margin, checks it and its successor, and walks
// (doubling, then bisecting) only when the device disagrees.
ReplayMaxBatch max_batch_by_replay(Device& device, const Model& model, const Options& options,
                                   const ReplayLimits& limits);

}  // namespace memfit::probe

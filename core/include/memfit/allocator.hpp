// A model of PyTorch's CUDA caching allocator (c10/cuda/CUDACachingAllocator.cpp) replaying a Plan:
// sizes rounded to 512 B, small (<= 1 MiB) and large pools, new segments of 2 MiB / 20 MiB / a
// 2 MiB multiple, best fit (smallest block, lowest address), split rules, freed blocks cached in their
// segment and merged with free neighbours, memory returned only by the out-of-memory retry (which frees
// every wholly free segment). One code path both plans and measures: with capacity 0 it only measures.
#pragma once

#include <array>
#include <vector>

#include "memfit/plan.hpp"

namespace memfit {

// Constants of CUDACachingAllocator.cpp (docs/pytorch-behaviour.md section 1), overridable for tests.
struct AllocatorConfig {
  i64 min_block_bytes = 512;               // kMinBlockSize: all sizes rounded up to a multiple
  i64 small_size_bytes = 1 * MiB;          // kSmallSize: largest request served by the small pool
  i64 small_buffer_bytes = 2 * MiB;        // kSmallBuffer: segment size for small requests
  i64 large_buffer_bytes = 20 * MiB;       // kLargeBuffer: segment for requests in (1 MiB, 10 MiB)
  i64 min_large_alloc_bytes = 10 * MiB;    // kMinLargeAlloc: from here segments are request-sized
  i64 round_large_bytes = 2 * MiB;         // kRoundLarge: large segments rounded to this
  i64 capacity_bytes = 0;  // what cudaMalloc may hand out in total; 0 = unlimited (no OOM)
};

i64 round_request(const AllocatorConfig& c, i64 bytes);     // round_size
i64 segment_size_for(const AllocatorConfig& c, i64 rounded);  // get_allocation_size

struct SegmentEvent {
  int event = 0;         // index into Plan::events that caused it
  i64 address = 0;
  i64 bytes = 0;
  bool is_free = false;  // cudaFree (only from the OOM retry, which releases cached segments)
};

struct BlockRecord {  // one tensor's block (recorded on request, for property tests and the probe)
  int tensor = 0;
  i64 address = 0;
  i64 size = 0;
  int segment = 0;
  int alloc_event = 0;
  int free_event = -1;  // -1: still live at the end
};

struct TimelinePoint {  // one op (iteration, phase, node): the highest memory seen while it ran
  std::uint8_t iteration = 0;
  Phase phase = Phase::setup;
  int node = -1;
  i64 allocated_bytes = 0;
  i64 reserved_bytes = 0;
};

struct IterationPeak {
  int iteration = 0;
  i64 allocated_bytes = 0;  // what max_memory_allocated() reports after reset_peak_memory_stats()
  i64 reserved_bytes = 0;   // max_memory_reserved() likewise
  int event = -1;           // where the allocated peak was reached
};

struct SimResult {
  bool oom = false;
  int oom_event = -1;
  i64 oom_request_bytes = 0;
  i64 peak_allocated_bytes = 0;
  i64 peak_reserved_bytes = 0;
  int peak_event = -1;  // event at which allocated peaked (first time)
  std::array<i64, n_categories> peak_breakdown{};  // allocated bytes (block sizes) by category there
  std::vector<IterationPeak> iterations;           // [0] = setup, then 1..n
  std::vector<SegmentEvent> segments;
  std::vector<TimelinePoint> timeline;
  std::vector<BlockRecord> blocks;
  i64 n_cuda_malloc = 0;
  i64 n_oom_retries = 0;  // times cached segments were released to make room
};

struct SimOptions {
  bool record_blocks = false;
  bool record_timeline = false;
};

SimResult simulate(const Plan& plan, const AllocatorConfig& config, const SimOptions& options = {});

}  // namespace memfit

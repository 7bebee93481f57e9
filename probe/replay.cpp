#include "replay.hpp"

#include <algorithm>
#include <map>

namespace memfit::probe {

const char* outcome_name(ReplayOutcome o) {
  switch (o) {
    case ReplayOutcome::fits: return "fits";
    case ReplayOutcome::does_not_fit: return "does_not_fit";
    case ReplayOutcome::interrupted: return "interrupted";
    case ReplayOutcome::timed_out: return "timed_out";
    case ReplayOutcome::device_error: return "device_error";
  }
  return "?";
}

namespace {

// Every live device allocation of one replay, keyed by the allocator model's segment address; the
// destructor frees whatever is left, so no path (failure, error, interruption, exception) leaks.
class LiveSegments {
 public:
  explicit LiveSegments(Device& d) : device_(d) {}
  LiveSegments(const LiveSegments&) = delete;
  LiveSegments& operator=(const LiveSegments&) = delete;
  ~LiveSegments() { release_all(); }

  void add(i64 address, DeviceHandle h) { live_[address] = h; }
  bool release(i64 address) {
    auto it = live_.find(address);
    if (it == live_.end()) return false;
    device_.free(it->second);
    live_.erase(it);
    return true;
  }
  void release_all() {
    for (auto& [addr, h] : live_) device_.free(h);
    live_.clear();
  }

 private:
  Device& device_;
  std::map<i64, DeviceHandle> live_;
};

ReplayFailure failure_at(const Estimate& e, int event, i64 bytes, i64 free_bytes, std::string reason) {
  ReplayFailure f;
  f.event = event;
  f.bytes = bytes;
  f.free_bytes = free_bytes;
  f.reason = std::move(reason);
  if (event >= 0 && static_cast<std::size_t>(event) < e.plan.events.size()) {
    const PlanEvent& ev = e.plan.events[static_cast<std::size_t>(event)];
    f.phase = ev.phase;
    f.iteration = ev.iteration;
    f.node = ev.node;
    f.request_bytes = e.plan.tensors[static_cast<std::size_t>(ev.tensor)].bytes;
    if (ev.node >= 0 && static_cast<std::size_t>(ev.node) < e.graph.nodes.size()) {
      const Layer* l = e.graph.nodes[static_cast<std::size_t>(ev.node)].layer;
      if (l) f.layer = l->name;
    }
  }
  return f;
}

}  // namespace

ReplayResult replay_plan(Device& device, const Estimate& e, const ReplayLimits& limits) {
  ReplayResult r;
  r.batch = e.options.train.batch;
  r.estimate_peak_reserved_bytes = e.peak_reserved_bytes;
  auto stopped = [&] { return limits.stop && *limits.stop != 0; };
  auto late = [&] { return std::chrono::steady_clock::now() >= limits.deadline; };
  if (stopped()) {
    r.outcome = ReplayOutcome::interrupted;
    r.error = "interrupted before the replay started";
    return r;
  }
  if (late()) {
    r.outcome = ReplayOutcome::timed_out;
    r.error = "the time limit passed before the replay started";
    return r;
  }

  r.free_before = device.free_memory();
  if (r.free_before < 0) {
    r.outcome = ReplayOutcome::device_error;
    r.error = "cannot read the free memory: " + device.last_error();
    return r;
  }
  r.min_free = r.free_before;
  r.budget_bytes = r.free_before - limits.margin_bytes;

  // The allocator model with the budget as its cudaMalloc limit: the plan PyTorch's allocator would
  // make on this device (including its release-and-retry when it runs out).
  AllocatorConfig cfg = e.options.allocator;
  cfg.capacity_bytes = std::max<i64>(r.budget_bytes, 1);  // 0 would mean "unlimited"
  SimResult sim = simulate(e.plan, cfg);
  r.planned_peak_bytes = sim.peak_reserved_bytes;
  for (const auto& s : sim.segments)
    if (!s.is_free) ++r.planned_segments;

  {
    LiveSegments live(device);
    bool stopped_early = false;
    for (const SegmentEvent& s : sim.segments) {
      if (stopped()) {
        r.outcome = ReplayOutcome::interrupted;
        r.error = "interrupted (signal) after " + std::to_string(r.segments) + " allocations";
        stopped_early = true;
        break;
      }
      if (late()) {
        r.outcome = ReplayOutcome::timed_out;
        r.error = "the time limit passed after " + std::to_string(r.segments) + " allocations";
        stopped_early = true;
        break;
      }
      if (s.is_free) {
        if (live.release(s.address)) ++r.frees;
        continue;
      }
      i64 free_now = device.free_memory();
      if (free_now < 0) {
        r.outcome = ReplayOutcome::device_error;
        r.error = "cannot read the free memory: " + device.last_error();
        stopped_early = true;
        break;
      }
      if (s.bytes > free_now - limits.margin_bytes) {
        r.outcome = ReplayOutcome::does_not_fit;
        r.failed = failure_at(e, s.event, s.bytes, free_now,
                              "not requested: it would leave less than the safety margin (" +
                                  format_mib(limits.margin_bytes) + ") free");
        stopped_early = true;
        break;
      }
      DeviceHandle h = 0;
      DeviceStatus st = device.malloc(s.bytes, h);
      if (st == DeviceStatus::out_of_memory) {
        r.outcome = ReplayOutcome::does_not_fit;
        r.failed = failure_at(e, s.event, s.bytes, device.free_memory(), "cudaMalloc: out of memory");
        stopped_early = true;
        break;
      }
      if (st == DeviceStatus::error) {
        r.outcome = ReplayOutcome::device_error;
        r.error = "cudaMalloc(" + std::to_string(s.bytes) + "): " + device.last_error();
        stopped_early = true;
        break;
      }
      live.add(s.address, h);
      ++r.segments;
      if (device.touch(h, s.bytes) != DeviceStatus::ok) {
        r.outcome = ReplayOutcome::device_error;
        r.error = "cudaMemset(" + std::to_string(s.bytes) + "): " + device.last_error();
        stopped_early = true;
        break;
      }
      i64 after = device.free_memory();
      if (after >= 0) r.min_free = std::min(r.min_free, after);
    }
    if (!stopped_early && sim.oom) {
      // The plan itself ran out of the budget (after releasing its cache): the next cudaMalloc would
      // ask for more than free memory minus the margin, so it is not asked for.
      i64 seg = segment_size_for(cfg, round_request(cfg, sim.oom_request_bytes));
      r.outcome = ReplayOutcome::does_not_fit;
      r.failed = failure_at(e, sim.oom_event, seg, device.free_memory(),
                            "not requested: the allocator would need more than free memory minus the safety "
                            "margin (" + format_mib(limits.margin_bytes) + "), even after releasing its cache");
    }
  }  // every segment is freed here
  r.peak_bytes = r.free_before - r.min_free;
  return r;
}

ReplayResult replay_batch(Device& device, const Model& model, const Options& options, i64 batch,
                          const ReplayLimits& limits) {
  Options o = options;
  o.train.batch = batch;
  o.timeline = false;
  Estimate e = estimate(model, o);
  return replay_plan(device, e, limits);
}

ReplayMaxBatch max_batch_by_replay(Device& device, const Model& model, const Options& options,
                                   const ReplayLimits& limits) {
  ReplayMaxBatch m;
  i64 free0 = device.free_memory();
  if (free0 < 0) {
    m.outcome = ReplayOutcome::device_error;
    m.error = "cannot read the free memory: " + device.last_error();
    return m;
  }
  // Core's answer for a GPU whose usable memory (cuda_total - context) is the replay's budget.
  Options seed_options = options;
  if (!seed_options.gpu) {
    Gpu g;
    g.name = device.info().name;
    seed_options.gpu = g;
  }
  seed_options.gpu->cuda_total_bytes = free0 - limits.margin_bytes + seed_options.context_bytes;
  m.estimate_max_batch = seed_options.gpu->cuda_total_bytes - seed_options.context_bytes > 0
                             ? max_batch(model, seed_options).max_batch
                             : 0;

  // Replays batch b; nullopt when the search must stop (interrupted, timed out, device error).
  auto fits = [&](i64 b) -> std::optional<bool> {
    ++m.n_replays;
    ReplayResult r;
    try {
      r = replay_batch(device, model, options, b, limits);
    } catch (const Error& err) {
      // As in core's max_batch: byte counts that overflow 64 bits certainly do not fit.
      if (std::string(err.what()).find("overflows") == std::string::npos) throw;
      r.batch = b;
      r.outcome = ReplayOutcome::does_not_fit;
    }
    switch (r.outcome) {
      case ReplayOutcome::fits:
        if (!m.at_max || m.at_max->batch < b) m.at_max = r;
        return true;
      case ReplayOutcome::does_not_fit:
        if (!m.above || m.above->batch > b) m.above = r;
        return false;
      default:
        m.outcome = r.outcome;
        m.error = r.error;
        return std::nullopt;
    }
  };

  // Core's search (galloping from the model's answer, then bisection), on real allocations.
  LargestSearch s = search_largest(fits, std::max<i64>(m.estimate_max_batch, 1), kBatchSearchLimit);
  if (s.stopped) return m;  // interrupted, timed out or a device error: m.outcome says which
  m.max_batch = s.largest;
  return m;
}

}  // namespace memfit::probe

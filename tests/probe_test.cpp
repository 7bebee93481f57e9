// `memfit probe`'s replay logic against a fake device with a set capacity: it fits when it should, fails
// at the right allocation (phase, layer, bytes, free memory), never asks for more than free memory minus
// the safety margin, frees everything on every path, and its --max-batch search agrees with core's.
// Needs the memfit_probe library (probe/CMakeLists.txt).
#include <catch2/catch.hpp>

#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "memfit/api.hpp"
#include "memfit/estimate.hpp"
#include "probe.hpp"
#include "replay.hpp"

using namespace memfit;
using namespace memfit::probe;

namespace {

// A GPU with `capacity` bytes, allocation exact to the byte (the allocator model's segments are already
// 2 MiB multiples, as the driver's granularity), no context of its own. Failures can be injected.
class FakeDevice : public Device {
 public:
  explicit FakeDevice(i64 capacity) : capacity_(capacity) {}

  DeviceInfo info() const override {
    DeviceInfo d;
    d.name = "Fake GPU";
    d.cc_major = 8;
    d.cc_minor = 6;
    d.total_bytes = capacity_;
    d.free_bytes = capacity_;
    d.context_note = "fake device";
    return d;
  }
  i64 free_memory() override { return capacity_ - used_; }
  DeviceStatus malloc(i64 bytes, DeviceHandle& h) override {
    int call = malloc_calls++;
    if (on_malloc) on_malloc(call);
    // the replay must never ask for more than free memory minus the margin
    if (bytes > free_memory() - margin) ++over_margin_requests;
    if (call == error_malloc_at) return DeviceStatus::error;
    if (call == oom_malloc_at || bytes + overhead_per_malloc > free_memory()) return DeviceStatus::out_of_memory;
    h = next_++;
    live_[h] = bytes + overhead_per_malloc;
    used_ += bytes + overhead_per_malloc;
    peak_used = std::max(peak_used, used_);
    return DeviceStatus::ok;
  }
  DeviceStatus touch(DeviceHandle h, i64 bytes) override {
    int call = touch_calls++;
    if (!live_.count(h) || live_[h] < bytes) ++bad_handles;
    return call == error_touch_at ? DeviceStatus::error : DeviceStatus::ok;
  }
  void free(DeviceHandle h) override {
    auto it = live_.find(h);
    if (it == live_.end()) {
      ++bad_handles;
      return;
    }
    used_ -= it->second;
    live_.erase(it);
  }
  std::string last_error() const override { return "injected fault"; }

  std::size_t live_count() const { return live_.size(); }

  // knobs and counters
  i64 margin = kSafetyMarginBytes;
  i64 overhead_per_malloc = 0;  // bytes the "driver" takes beyond each request (a device giving less)
  int oom_malloc_at = -1, error_malloc_at = -1, error_touch_at = -1;
  std::function<void(int)> on_malloc;
  int malloc_calls = 0, touch_calls = 0, over_margin_requests = 0, bad_handles = 0;
  i64 peak_used = 0;

 private:
  i64 capacity_;
  i64 used_ = 0;
  DeviceHandle next_ = 1;
  std::map<DeviceHandle, i64> live_;
};

Model cnn() { return parse_model(find_builtin_model("question_cnn")->text, "question_cnn.memfit"); }

std::vector<SegmentEvent> mallocs_of(const SimResult& s) {
  std::vector<SegmentEvent> v;
  for (const auto& x : s.segments)
    if (!x.is_free) v.push_back(x);
  return v;
}

std::string layer_of(const Estimate& e, int event) {
  int node = e.plan.events[static_cast<std::size_t>(event)].node;
  if (node < 0) return "";
  const Layer* l = e.graph.nodes[static_cast<std::size_t>(node)].layer;
  return l ? l->name : "";
}

void check_all_integers(const nlohmann::json& j) {
  if (j.is_number()) CHECK(j.is_number_integer());
  if (j.is_object() || j.is_array())
    for (const auto& x : j) check_all_integers(x);
}

}  // namespace

TEST_CASE("probe replay: fits, every segment allocated, touched and freed", "[probe]") {
  Model m = cnn();
  Options o;
  o.train.batch = 64;
  Estimate e = estimate(m, o);
  FakeDevice dev(8 * GiB);
  ReplayResult r = replay_plan(dev, e, {});
  REQUIRE(r.ok());
  CHECK_FALSE(r.failed);
  auto mallocs = mallocs_of(e.sim);
  CHECK(r.segments == static_cast<int>(mallocs.size()));
  CHECK(dev.malloc_calls == r.segments);
  CHECK(dev.touch_calls == r.segments);
  // the fake device is exact: the measured peak is the estimate's reserved peak
  CHECK(r.peak_bytes == e.peak_reserved_bytes);
  CHECK(r.planned_peak_bytes == e.peak_reserved_bytes);
  CHECK(dev.peak_used == e.peak_reserved_bytes);
  CHECK(r.budget_bytes == 8 * GiB - kSafetyMarginBytes);
  CHECK(dev.live_count() == 0);
  CHECK(dev.bad_handles == 0);
  CHECK(dev.over_margin_requests == 0);
}

TEST_CASE("probe replay: the device refuses an allocation -> that segment's phase, layer and bytes", "[probe]") {
  Model m = cnn();
  Options o;
  o.train.batch = 32;
  Estimate e = estimate(m, o);
  auto mallocs = mallocs_of(e.sim);
  REQUIRE(mallocs.size() >= 3);
  for (std::size_t k : {std::size_t{0}, mallocs.size() / 2, mallocs.size() - 1}) {
    INFO("segment " << k);
    FakeDevice dev(8 * GiB);
    dev.oom_malloc_at = static_cast<int>(k);
    ReplayResult r = replay_plan(dev, e, {});
    REQUIRE(r.outcome == ReplayOutcome::does_not_fit);
    REQUIRE(r.failed);
    const SegmentEvent& s = mallocs[k];
    const PlanEvent& ev = e.plan.events[static_cast<std::size_t>(s.event)];
    CHECK(r.failed->event == s.event);
    CHECK(r.failed->phase == ev.phase);
    CHECK(r.failed->iteration == ev.iteration);
    CHECK(r.failed->layer == layer_of(e, s.event));
    CHECK(r.failed->bytes == s.bytes);
    CHECK(r.failed->request_bytes == e.plan.tensors[static_cast<std::size_t>(ev.tensor)].bytes);
    i64 before = 0;
    for (std::size_t i = 0; i < k; ++i) before += mallocs[i].bytes;
    CHECK(r.failed->free_bytes == 8 * GiB - before);  // free memory at that moment
    CHECK(r.segments == static_cast<int>(k));
    CHECK(dev.live_count() == 0);
  }
}

TEST_CASE("probe replay: the plan runs out of the budget -> the allocator model's failing request", "[probe]") {
  Model m = cnn();
  Options o;
  o.train.batch = 256;
  Estimate e = estimate(m, o);
  // Capacity: half the peak as the budget, plus the margin the replay keeps free.
  const i64 budget = e.peak_reserved_bytes / 2;
  FakeDevice dev(budget + kSafetyMarginBytes);
  ReplayResult r = replay_plan(dev, e, {});

  AllocatorConfig cfg = e.options.allocator;
  cfg.capacity_bytes = budget;
  SimResult capped = simulate(e.plan, cfg);
  REQUIRE(capped.oom);
  REQUIRE(r.outcome == ReplayOutcome::does_not_fit);
  REQUIRE(r.failed);
  const PlanEvent& ev = e.plan.events[static_cast<std::size_t>(capped.oom_event)];
  CHECK(r.failed->event == capped.oom_event);
  CHECK(r.failed->phase == ev.phase);
  CHECK(r.failed->layer == layer_of(e, capped.oom_event));
  CHECK(r.failed->request_bytes == capped.oom_request_bytes);
  CHECK(r.failed->bytes == segment_size_for(cfg, round_request(cfg, capped.oom_request_bytes)));
  CHECK(r.failed->reason.find("not requested") != std::string::npos);
  CHECK(dev.over_margin_requests == 0);                   // never asked beyond free - margin
  CHECK(dev.peak_used <= budget);
  CHECK(dev.live_count() == 0);
}

TEST_CASE("probe replay: a device that gives less than it reports trips the safety margin", "[probe]") {
  Model m = cnn();
  Options o;
  o.train.batch = 64;
  Estimate e = estimate(m, o);
  // The allocator model plans with free - margin; each allocation secretly costs 64 MiB more, so free
  // memory shrinks faster than planned and the replay must stop before it eats into the margin.
  const i64 capacity = e.peak_reserved_bytes + kSafetyMarginBytes;
  FakeDevice dev(capacity);
  dev.overhead_per_malloc = 64 * MiB;
  ReplayResult r = replay_plan(dev, e, {});
  REQUIRE(r.outcome == ReplayOutcome::does_not_fit);
  REQUIRE(r.failed);
  CHECK(r.failed->reason.find("safety margin") != std::string::npos);
  CHECK(dev.over_margin_requests == 0);
  CHECK(dev.live_count() == 0);
}

TEST_CASE("probe replay: everything is freed on interruption, time-out, device errors and exceptions", "[probe]") {
  Model m = cnn();
  Options o;
  o.train.batch = 64;
  Estimate e = estimate(m, o);
  REQUIRE(mallocs_of(e.sim).size() >= 4);

  SECTION("SIGINT flag raised after 3 allocations") {
    volatile std::sig_atomic_t stop = 0;
    FakeDevice dev(8 * GiB);
    dev.on_malloc = [&](int call) {
      if (call == 2) stop = 1;
    };
    ReplayLimits lim;
    lim.stop = &stop;
    ReplayResult r = replay_plan(dev, e, lim);
    CHECK(r.outcome == ReplayOutcome::interrupted);
    CHECK(r.segments == 3);
    CHECK(dev.live_count() == 0);
  }
  SECTION("flag already raised: nothing is allocated") {
    volatile std::sig_atomic_t stop = 1;
    FakeDevice dev(8 * GiB);
    ReplayLimits lim;
    lim.stop = &stop;
    CHECK(replay_plan(dev, e, lim).outcome == ReplayOutcome::interrupted);
    CHECK(dev.malloc_calls == 0);
  }
  SECTION("time limit passes mid-replay") {
    FakeDevice dev(8 * GiB);
    ReplayLimits lim;
    lim.deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
    dev.on_malloc = [&](int call) {
      if (call == 1) std::this_thread::sleep_until(lim.deadline + std::chrono::milliseconds(10));
    };
    ReplayResult r = replay_plan(dev, e, lim);
    CHECK(r.outcome == ReplayOutcome::timed_out);
    CHECK(r.segments == 2);
    CHECK(dev.live_count() == 0);
  }
  SECTION("cudaMalloc error other than out-of-memory") {
    FakeDevice dev(8 * GiB);
    dev.error_malloc_at = 2;
    ReplayResult r = replay_plan(dev, e, {});
    CHECK(r.outcome == ReplayOutcome::device_error);
    CHECK(r.error.find("injected fault") != std::string::npos);
    CHECK(dev.live_count() == 0);
  }
  SECTION("cudaMemset error") {
    FakeDevice dev(8 * GiB);
    dev.error_touch_at = 1;
    CHECK(replay_plan(dev, e, {}).outcome == ReplayOutcome::device_error);
    CHECK(dev.live_count() == 0);
  }
  SECTION("an exception in the middle") {
    FakeDevice dev(8 * GiB);
    dev.on_malloc = [](int call) {
      if (call == 3) throw std::runtime_error("boom");
    };
    CHECK_THROWS_AS(replay_plan(dev, e, {}), std::runtime_error);
    CHECK(dev.live_count() == 0);
  }
  SECTION("the margin is larger than the device") {
    FakeDevice dev(100 * MiB);
    ReplayResult r = replay_plan(dev, e, {});
    CHECK(r.outcome == ReplayOutcome::does_not_fit);
    CHECK(dev.malloc_calls == 0);
    CHECK(dev.live_count() == 0);
  }
}

TEST_CASE("probe --max-batch by replay agrees with core's max_batch", "[probe]") {
  Model m = cnn();
  struct Case {
    const char* gpu;
    Optimizer opt;
    i64 context;
  };
  for (Case c : {Case{"8GiB", Optimizer::sgd, 426 * MiB}, Case{"3GB", Optimizer::adam, 600 * MiB}}) {
    INFO(c.gpu << " " << optimizer_name(c.opt));
    Options o;
    o.gpu = parse_gpu(c.gpu);
    o.train.optimizer = c.opt;
    o.context_bytes = c.context;
    // Core's max_batch fits a batch when the allocator model's cudaMallocs stay within the usable memory,
    // usable = the GPU's CUDA total - the context. The replay's budget is the device's free memory minus
    // the safety margin. So a fake device of capacity usable + margin gives the replay exactly core's
    // usable memory, and the two searches must agree.
    const i64 usable = o.gpu->cuda_total_bytes - o.context_bytes;
    FakeDevice dev(usable + kSafetyMarginBytes);
    ReplayMaxBatch r = max_batch_by_replay(dev, m, o, {});
    MaxBatch core = max_batch(m, o);
    REQUIRE(core.max_batch >= 1);
    CHECK(r.outcome == ReplayOutcome::fits);
    CHECK(r.estimate_max_batch == core.max_batch);
    CHECK(r.max_batch == core.max_batch);
    CHECK(r.n_replays == 2);  // the seed fits, the next batch does not
    REQUIRE(r.at_max);
    CHECK(r.at_max->ok());
    CHECK(r.at_max->batch == core.max_batch);
    REQUIRE(r.above);
    CHECK(r.above->batch == core.max_batch + 1);
    CHECK(r.above->failed);
    CHECK(dev.live_count() == 0);
    CHECK(dev.over_margin_requests == 0);
  }
}

TEST_CASE("probe --max-batch: a device that gives less than the model walks down", "[probe]") {
  Model m = cnn();
  Options o;
  o.gpu = parse_gpu("4GiB");
  const i64 usable = o.gpu->cuda_total_bytes - o.context_bytes;
  FakeDevice dev(usable + kSafetyMarginBytes);
  dev.overhead_per_malloc = 8 * MiB;
  ReplayMaxBatch r = max_batch_by_replay(dev, m, o, {});
  REQUIRE(r.outcome == ReplayOutcome::fits);
  CHECK(r.max_batch < r.estimate_max_batch);
  REQUIRE(r.at_max);
  CHECK(r.at_max->ok());
  REQUIRE(r.above);
  CHECK(r.above->batch == r.max_batch + 1);
  CHECK_FALSE(r.above->ok());
  CHECK(dev.live_count() == 0);
}

TEST_CASE("probe --max-batch: 0 when batch 1 does not fit", "[probe]") {
  Model m = cnn();
  Options o;
  FakeDevice dev(kSafetyMarginBytes + 2 * MiB);
  ReplayMaxBatch r = max_batch_by_replay(dev, m, o, {});
  CHECK(r.outcome == ReplayOutcome::fits);
  CHECK(r.max_batch == 0);
  CHECK(r.estimate_max_batch == 0);
  CHECK(dev.live_count() == 0);
}

TEST_CASE("probe report: JSON keys, integers only, exit status", "[probe]") {
  Model m = cnn();
  Options o;
  o.train.batch = 64;
  SECTION("fits: exit 0, difference 0 on an exact device") {
    FakeDevice dev(8 * GiB);
    ProbeSettings s;
    s.json = true;
    std::ostringstream out, err;
    int rc = run_probe(m, o, s, dev, out, err);
    CHECK(rc == kProbeFits);
    auto j = nlohmann::json::parse(out.str());
    CHECK(j["device"]["name"] == "Fake GPU");
    CHECK(j["device"]["total_bytes"] == 8 * GiB);
    CHECK(j["context_bytes_measured"].is_null());  // the fake device cannot measure one: null, not a guess
    CHECK(j["replay"]["ok"] == true);
    CHECK(j["replay"]["failed"].is_null());
    CHECK(j["replay"]["segments"].get<i64>() > 0);
    CHECK(j["estimate"]["peak_reserved_bytes"] == j["replay"]["peak_bytes"]);
    CHECK(j["estimate"]["device_bytes"].get<i64>() ==
          j["estimate"]["peak_reserved_bytes"].get<i64>() + o.context_bytes);
    CHECK(j["difference_bytes"] == 0);
    check_all_integers(j);
    CHECK(dev.live_count() == 0);
  }
  SECTION("does not fit: exit 1, the failure named") {
    Estimate e = estimate(m, o);
    FakeDevice dev(e.peak_reserved_bytes / 2 + kSafetyMarginBytes);
    ProbeSettings s;
    s.json = true;
    std::ostringstream out, err;
    int rc = run_probe(m, o, s, dev, out, err);
    CHECK(rc == kProbeDoesNotFit);
    auto j = nlohmann::json::parse(out.str());
    CHECK(j["replay"]["ok"] == false);
    REQUIRE(j["replay"]["failed"].is_object());
    for (const char* k : {"phase", "layer", "bytes", "free_bytes"}) CHECK(j["replay"]["failed"].contains(k));
    CHECK(j["difference_bytes"].is_null());
    check_all_integers(j);
    CHECK(dev.live_count() == 0);
  }
  SECTION("interrupted: exit 130, a message on stderr") {
    volatile std::sig_atomic_t stop = 1;
    FakeDevice dev(8 * GiB);
    ProbeSettings s;
    s.stop = &stop;
    std::ostringstream out, err;
    CHECK(run_probe(m, o, s, dev, out, err) == kProbeInterrupted);
    CHECK(err.str().find("interrupted") != std::string::npos);
    CHECK(dev.malloc_calls == 0);
  }
  SECTION("text, with --max-batch") {
    FakeDevice dev(2 * GiB);
    ProbeSettings s;
    s.max_batch = true;
    std::ostringstream out, err;
    CHECK(run_probe(m, o, s, dev, out, err) == kProbeFits);
    CHECK(out.str().find("FITS") != std::string::npos);
    CHECK(out.str().find("Largest batch by replay: ") != std::string::npos);
    CHECK(out.str().find("does not fit: cudaMalloc of") != std::string::npos);
    CHECK(dev.live_count() == 0);
  }
}

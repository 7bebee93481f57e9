// The caching-allocator model on small hand-built timelines: rounding and segment sizes (numbers from
// c10/cuda/CUDACachingAllocator.cpp, see docs/pytorch-behaviour.md s1), reuse, splitting, merging,
// the out-of-memory retry, and properties on random timelines (no two live blocks overlap, every
// block lies in a live segment, reserved >= allocated).
#include <catch2/catch.hpp>
#include <map>
#include <random>

#include "memfit/allocator.hpp"

using namespace memfit;

namespace {

struct Timeline {
  Plan plan;
  int alloc(i64 bytes) {
    int id = static_cast<int>(plan.tensors.size());
    plan.tensors.push_back({bytes, Category::activation, -1});
    plan.events.push_back({id, false, Phase::forward, 1, -1});
    return id;
  }
  void free(int id) { plan.events.push_back({id, true, Phase::forward, 1, -1}); }
};

SimResult run(const Timeline& t, i64 capacity = 0) {
  AllocatorConfig c;
  c.capacity_bytes = capacity;
  SimOptions o;
  o.record_blocks = true;
  return simulate(t.plan, c, o);
}

const BlockRecord& block_of(const SimResult& r, int tensor) {
  for (const auto& b : r.blocks)
    if (b.tensor == tensor) return b;
  FAIL("no block for tensor " << tensor);
  throw 0;
}

}  // namespace

TEST_CASE("requests round up to 512 B and small ones share a 2 MiB segment", "[allocator]") {
  AllocatorConfig c;
  CHECK(round_request(c, 1) == 512);
  CHECK(round_request(c, 512) == 512);
  CHECK(round_request(c, 513) == 1024);
  CHECK(segment_size_for(c, 512) == 2 * MiB);       // <= 1 MiB: kSmallBuffer
  CHECK(segment_size_for(c, 1 * MiB) == 2 * MiB);   // exactly 1 MiB is still small
  CHECK(segment_size_for(c, 1 * MiB + 512) == 20 * MiB);  // (1 MiB, 10 MiB): kLargeBuffer
  CHECK(segment_size_for(c, 10 * MiB - 512) == 20 * MiB);
  CHECK(segment_size_for(c, 10 * MiB) == 10 * MiB);       // >= 10 MiB: rounded to 2 MiB
  CHECK(segment_size_for(c, 11 * MiB) == 12 * MiB);

  Timeline t;
  int a = t.alloc(100), b = t.alloc(1000);
  SimResult r = run(t);
  CHECK(r.peak_allocated_bytes == 512 + 1024);
  CHECK(r.peak_reserved_bytes == 2 * MiB);  // one small segment holds both
  CHECK(r.n_cuda_malloc == 1);
  CHECK(block_of(r, b).address == block_of(r, a).address + 512);
}

TEST_CASE("large pool: split only when more than 1 MiB remains", "[allocator]") {
  Timeline t;
  int a = t.alloc(2 * MiB);  // 20 MiB segment, remainder 18 MiB > 1 MiB: split
  int b = t.alloc(18 * MiB - 512);  // fits the 18 MiB remainder; 512 B left (< 1 MiB): not split
  SimResult r = run(t);
  CHECK(r.n_cuda_malloc == 1);
  CHECK(block_of(r, a).size == 2 * MiB);
  CHECK(block_of(r, b).size == 18 * MiB);  // the unsplit remainder counts as allocated
  CHECK(r.peak_allocated_bytes == 20 * MiB);
}

TEST_CASE("freed blocks are cached and reused by best fit; neighbours merge", "[allocator]") {
  Timeline t;
  int a = t.alloc(4 * MiB), b = t.alloc(4 * MiB), c = t.alloc(4 * MiB);  // one 20 MiB segment
  t.free(a);
  t.free(b);  // a and b merge into one free 8 MiB block
  int d = t.alloc(6 * MiB);  // two free 8 MiB blocks (a+b merged, and the tail after c): the lower address wins
  SimResult r = run(t);
  CHECK(r.n_cuda_malloc == 1);
  CHECK(r.peak_reserved_bytes == 20 * MiB);
  CHECK(block_of(r, d).address == block_of(r, a).address);
  // 8 MiB - 6 MiB = 2 MiB remains, more than 1 MiB: split, so d takes exactly 6 MiB
  CHECK(block_of(r, d).size == 6 * MiB);
  (void)c;
}

TEST_CASE("out of memory: cached segments are released and the request retried", "[allocator]") {
  Timeline t;
  int a = t.alloc(30 * MiB);  // own 30 MiB segment
  t.free(a);                 // cached, still reserved
  int b = t.alloc(40 * MiB); // needs a new 40 MiB segment: 70 MiB > 64 MiB capacity -> release a's
  SimResult r = run(t, 64 * MiB);
  CHECK_FALSE(r.oom);
  CHECK(r.n_oom_retries == 1);
  CHECK(block_of(r, b).size == 40 * MiB);

  Timeline u;
  u.alloc(30 * MiB);
  u.alloc(40 * MiB);  // the 30 MiB block is live: nothing to release
  SimResult s = run(u, 64 * MiB);
  CHECK(s.oom);
  CHECK(s.oom_request_bytes == 40 * MiB);
}

TEST_CASE("random timelines keep the allocator's invariants", "[allocator][property]") {
  std::mt19937_64 rng(12345);
  for (int trial = 0; trial < 40; ++trial) {
    Timeline t;
    std::vector<int> live;
    std::uniform_int_distribution<int> op(0, 99);
    std::uniform_int_distribution<i64> small(1, 1 * MiB), large(1 * MiB + 1, 40 * MiB);
    for (int step = 0; step < 400; ++step) {
      if (!live.empty() && op(rng) < 45) {
        std::size_t k = static_cast<std::size_t>(rng() % live.size());
        t.free(live[k]);
        live.erase(live.begin() + static_cast<long>(k));
      } else {
        live.push_back(t.alloc(op(rng) < 70 ? small(rng) : large(rng)));
      }
    }
    SimResult r = run(t);
    REQUIRE_FALSE(r.oom);
    // Sweep the events: live blocks and live segments at every step.
    std::map<int, std::vector<const BlockRecord*>> born, died;
    for (const auto& b : r.blocks) {
      born[b.alloc_event].push_back(&b);
      if (b.free_event >= 0) died[b.free_event].push_back(&b);
    }
    std::map<i64, i64> segs;  // address -> size
    std::size_t next_seg = 0;
    std::map<i64, const BlockRecord*> live_blocks;  // address -> block
    i64 allocated = 0, reserved = 0;
    for (int e = 0; e < static_cast<int>(t.plan.events.size()); ++e) {
      for (; next_seg < r.segments.size() && r.segments[next_seg].event == e; ++next_seg) {
        const auto& s = r.segments[next_seg];
        if (s.is_free) {
          segs.erase(s.address);
          reserved -= s.bytes;
        } else {
          segs[s.address] = s.bytes;
          reserved += s.bytes;
        }
      }
      for (const auto* b : died[e]) {
        live_blocks.erase(b->address);
        allocated -= b->size;
      }
      for (const auto* b : born[e]) {
        // no overlap with the neighbours by address
        auto it = live_blocks.lower_bound(b->address);
        if (it != live_blocks.end()) REQUIRE(b->address + b->size <= it->first);
        if (it != live_blocks.begin()) {
          auto pv = std::prev(it);
          REQUIRE(pv->first + pv->second->size <= b->address);
        }
        // inside a live segment
        auto sg = segs.upper_bound(b->address);
        REQUIRE(sg != segs.begin());
        --sg;
        REQUIRE(b->address + b->size <= sg->first + sg->second);
        REQUIRE(b->size % 512 == 0);
        REQUIRE(b->size >= t.plan.tensors[static_cast<std::size_t>(b->tensor)].bytes);
        live_blocks[b->address] = b;
        allocated += b->size;
      }
      REQUIRE(reserved >= allocated);
      REQUIRE(allocated <= r.peak_allocated_bytes);
    }
  }
}

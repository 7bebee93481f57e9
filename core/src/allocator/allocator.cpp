// The caching allocator model. Whole algorithm: for each plan event, malloc or free a block.
//   malloc(n): size = round(n); pool = small if size <= 1 MiB else large
//              block = smallest free block in pool with block.size >= size (ties: lowest address)
//              if none: cudaMalloc a segment of segment_size_for(size); over capacity ->
//                       release every wholly free segment and retry; still over -> OOM
//              split the block if the remainder is >= 512 B (small pool) or > 1 MiB (large pool)
//   free(b):   mark free, merge with free neighbours in the same segment, return to its pool.
// Sources: CUDACachingAllocator.cpp round_size, get_allocation_size, get_free_block, should_split,
// free_block/try_merge_blocks, release_cached_blocks (docs/pytorch-behaviour.md section 1).
#include "memfit/allocator.hpp"

#include <limits>
#include <set>
#include <stdexcept>
#include <string_view>

namespace memfit {

namespace {
// v rounded up to a multiple of m (v >= 0, m > 0) without forming v + m - 1, which overflows for
// requests near 2^63 (a wrapped segment size once sent malloc_block past its block table).
i64 round_up(i64 v, i64 m, std::string_view what) {
  return checked_mul(v / m + (v % m != 0 ? 1 : 0), m, what);
}
}  // namespace

i64 round_request(const AllocatorConfig& c, i64 bytes) {
  if (bytes < c.min_block_bytes) return c.min_block_bytes;
  return round_up(bytes, c.min_block_bytes, "a rounded block");
}

i64 segment_size_for(const AllocatorConfig& c, i64 rounded) {
  if (rounded <= c.small_size_bytes) return c.small_buffer_bytes;
  if (rounded < c.min_large_alloc_bytes) return c.large_buffer_bytes;
  return round_up(rounded, c.round_large_bytes, "a segment");
}

namespace {

struct Block {
  i64 addr = 0, size = 0;
  int segment = 0;
  int prev = -1, next = -1;  // neighbours in the same segment
  bool free = true;
  bool small = true;
  int tensor = -1;
};

struct Segment {
  i64 addr = 0, size = 0;
  int first = -1;
  bool live = true;
};

class Sim {
 public:
  Sim(const Plan& plan, const AllocatorConfig& c, const SimOptions& o, SimResult& r)
      : plan_(plan), c_(c), o_(o), r_(r), small_(Cmp{&blocks_}), large_(Cmp{&blocks_}) {}

  void run() {
    tensor_block_.assign(plan_.tensors.size(), -1);
    cat_.fill(0);
    std::uint8_t iter = 0;
    r_.iterations.push_back({0, 0, 0, -1});
    for (std::size_t e = 0; e < plan_.events.size(); ++e) {
      const PlanEvent& ev = plan_.events[e];
      if (ev.iteration != iter) {  // reset_peak_memory_stats() at the start of each iteration
        iter = ev.iteration;
        r_.iterations.push_back({iter, allocated_, reserved_, static_cast<int>(e)});
      }
      const PlanTensor& t = plan_.tensors[static_cast<std::size_t>(ev.tensor)];
      if (!ev.is_free) {
        if (t.bytes == 0) continue;  // the allocator hands out no block for 0 bytes
        if (!malloc_block(ev.tensor, t.bytes, static_cast<int>(e))) {
          r_.oom = true;
          r_.oom_event = static_cast<int>(e);
          r_.oom_request_bytes = t.bytes;
          return;
        }
        cat_[static_cast<int>(t.category)] += blocks_[static_cast<std::size_t>(tensor_block_[static_cast<std::size_t>(ev.tensor)])].size;
        if (allocated_ > r_.peak_allocated_bytes) {
          r_.peak_allocated_bytes = allocated_;
          r_.peak_event = static_cast<int>(e);
          r_.peak_breakdown = cat_;
        }
        IterationPeak& ip = r_.iterations.back();
        if (allocated_ > ip.allocated_bytes) {
          ip.allocated_bytes = allocated_;
          ip.event = static_cast<int>(e);
        }
        if (reserved_ > ip.reserved_bytes) ip.reserved_bytes = reserved_;
      } else {
        int b = tensor_block_[static_cast<std::size_t>(ev.tensor)];
        if (b < 0) continue;
        cat_[static_cast<int>(t.category)] -= blocks_[static_cast<std::size_t>(b)].size;
        if (o_.record_blocks) r_.blocks[static_cast<std::size_t>(block_record_[static_cast<std::size_t>(b)])].free_event = static_cast<int>(e);
        free_block(b);
        tensor_block_[static_cast<std::size_t>(ev.tensor)] = -1;
      }
      if (o_.record_timeline) note_timeline(ev);
    }
  }

 private:
  struct Cmp {
    const std::vector<Block>* blocks;
    bool operator()(int a, int b) const {
      const Block& x = (*blocks)[static_cast<std::size_t>(a)];
      const Block& y = (*blocks)[static_cast<std::size_t>(b)];
      return x.size != y.size ? x.size < y.size : x.addr < y.addr;
    }
  };

  const Plan& plan_;
  const AllocatorConfig& c_;
  const SimOptions& o_;
  SimResult& r_;
  std::vector<Block> blocks_;
  std::vector<int> spare_;  // reusable block slots
  std::vector<Segment> segments_;
  std::set<int, Cmp> small_, large_;
  std::vector<int> tensor_block_;
  std::vector<int> block_record_;
  std::array<i64, n_categories> cat_{};
  i64 allocated_ = 0, reserved_ = 0, next_addr_ = 0;

  int new_block(const Block& b) {
    if (!spare_.empty()) {
      int id = spare_.back();
      spare_.pop_back();
      blocks_[static_cast<std::size_t>(id)] = b;
      return id;
    }
    blocks_.push_back(b);
    block_record_.push_back(-1);
    return static_cast<int>(blocks_.size()) - 1;
  }

  std::set<int, Cmp>& pool(bool small) { return small ? small_ : large_; }

  // Best fit: the free block with the smallest size >= request, lowest address first.
  int find_free(bool small, i64 size) {
    auto& p = pool(small);
    // a probe block for lower_bound
    Block key;
    key.size = size;
    key.addr = -1;
    blocks_.push_back(key);
    int probe = static_cast<int>(blocks_.size()) - 1;
    auto it = p.lower_bound(probe);
    blocks_.pop_back();
    return it == p.end() ? -1 : *it;
  }

  bool new_segment(i64 seg_size, bool small, int event) {
    // Compared as seg_size > capacity - reserved: reserved + seg_size can overflow for a huge request.
    if (c_.capacity_bytes > 0 && seg_size > c_.capacity_bytes - reserved_) {
      // release_cached_blocks(): cudaFree every segment that is one free block, then retry once
      release_cached(event);
      ++r_.n_oom_retries;
      if (seg_size > c_.capacity_bytes - reserved_) return false;
    }
    Segment s{next_addr_, seg_size, -1, true};
    next_addr_ = checked_add(next_addr_, seg_size, "simulated addresses");
    int seg = static_cast<int>(segments_.size());
    Block b;
    b.addr = s.addr;
    b.size = seg_size;
    b.segment = seg;
    b.small = small;
    int id = new_block(b);
    s.first = id;
    segments_.push_back(s);
    pool(small).insert(id);
    reserved_ = checked_add(reserved_, seg_size, "reserved bytes");
    if (reserved_ > r_.peak_reserved_bytes) r_.peak_reserved_bytes = reserved_;
    ++r_.n_cuda_malloc;
    r_.segments.push_back({event, s.addr, seg_size, false});
    return true;
  }

  void release_cached(int event) {
    for (auto* p : {&small_, &large_}) {
      for (auto it = p->begin(); it != p->end();) {
        Block& b = blocks_[static_cast<std::size_t>(*it)];
        if (b.prev < 0 && b.next < 0) {
          Segment& s = segments_[static_cast<std::size_t>(b.segment)];
          s.live = false;
          reserved_ -= s.size;
          r_.segments.push_back({event, s.addr, s.size, true});
          spare_.push_back(*it);
          it = p->erase(it);
        } else {
          ++it;
        }
      }
    }
  }

  bool malloc_block(int tensor, i64 bytes, int event) {
    // Rounding can only fail within 2 MiB of 2^63; say so with the request's size (the allocator knows no
    // layer names: the pipeline may add the layer of plan_.events[event].node).
    if (bytes > std::numeric_limits<i64>::max() - c_.round_large_bytes)
      throw Error({}, "", "one tensor of " + format_bytes_exact(bytes) +
                              " is too large to model: rounded up to the allocator's 2 MiB segments it overflows 64 bits",
                  "use a smaller batch or smaller layers");
    i64 size = round_request(c_, bytes);
    bool small = size <= c_.small_size_bytes;
    int b = find_free(small, size);
    if (b < 0) {
      if (!new_segment(segment_size_for(c_, size), small, event)) return false;
      b = find_free(small, size);
      // A new segment is never smaller than the request; if it were, blocks_[-1] below would corrupt memory.
      if (b < 0) throw std::logic_error("allocator model: a new segment does not hold its request");
    }
    pool(small).erase(b);
    Block& blk = blocks_[static_cast<std::size_t>(b)];
    i64 remaining = blk.size - size;
    bool split = small ? remaining >= c_.min_block_bytes : remaining > c_.small_size_bytes;
    if (split) {
      Block rest;
      rest.addr = blk.addr + size;
      rest.size = remaining;
      rest.segment = blk.segment;
      rest.small = small;
      rest.prev = b;
      rest.next = blk.next;
      int rid = new_block(rest);  // may reallocate blocks_: re-fetch below
      Block& cur = blocks_[static_cast<std::size_t>(b)];
      if (cur.next >= 0) blocks_[static_cast<std::size_t>(cur.next)].prev = rid;
      cur.next = rid;
      cur.size = size;
      pool(small).insert(rid);
    }
    Block& cur = blocks_[static_cast<std::size_t>(b)];
    cur.free = false;
    cur.tensor = tensor;
    allocated_ = checked_add(allocated_, cur.size, "allocated bytes");
    tensor_block_[static_cast<std::size_t>(tensor)] = b;
    if (o_.record_blocks) {
      block_record_[static_cast<std::size_t>(b)] = static_cast<int>(r_.blocks.size());
      r_.blocks.push_back({tensor, cur.addr, cur.size, cur.segment, event, -1});
    }
    return true;
  }

  void free_block(int b) {
    Block& blk = blocks_[static_cast<std::size_t>(b)];
    allocated_ -= blk.size;
    blk.free = true;
    blk.tensor = -1;
    auto& p = pool(blk.small);
    // merge with the previous free neighbour
    if (blk.prev >= 0 && blocks_[static_cast<std::size_t>(blk.prev)].free) {
      int pv = blk.prev;
      p.erase(pv);
      Block& prev = blocks_[static_cast<std::size_t>(pv)];
      prev.size += blk.size;
      prev.next = blk.next;
      if (blk.next >= 0) blocks_[static_cast<std::size_t>(blk.next)].prev = pv;
      spare_.push_back(b);
      b = pv;
    }
    Block& cur = blocks_[static_cast<std::size_t>(b)];
    if (cur.next >= 0 && blocks_[static_cast<std::size_t>(cur.next)].free) {
      int nx = cur.next;
      p.erase(nx);
      Block& next = blocks_[static_cast<std::size_t>(nx)];
      cur.size += next.size;
      cur.next = next.next;
      if (next.next >= 0) blocks_[static_cast<std::size_t>(next.next)].prev = b;
      spare_.push_back(nx);
    }
    p.insert(b);
  }

  void note_timeline(const PlanEvent& ev) {
    auto& tl = r_.timeline;
    if (tl.empty() || tl.back().iteration != ev.iteration || tl.back().phase != ev.phase || tl.back().node != ev.node)
      tl.push_back({ev.iteration, ev.phase, ev.node, allocated_, reserved_});
    TimelinePoint& p = tl.back();
    if (allocated_ > p.allocated_bytes) p.allocated_bytes = allocated_;
    if (reserved_ > p.reserved_bytes) p.reserved_bytes = reserved_;
  }
};

}  // namespace

SimResult simulate(const Plan& plan, const AllocatorConfig& config, const SimOptions& options) {
  SimResult r;
  Sim(plan, config, options, r).run();
  return r;
}

}  // namespace memfit

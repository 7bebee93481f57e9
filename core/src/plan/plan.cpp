// The training loop memfit models (the same loop tools/memfit_torch.py runs on a GPU):
//
//   model.cuda(); opt = Optimizer(model.parameters()); x, y = batch on the GPU     (setup)
//   for it in 1..n:
//     opt.zero_grad(set_to_none)          (zero_grad)
//     out = model(x)                       (forward; autograd saves tensors for backward)
//     loss = cross_entropy(out, y)         (loss)
//     loss.backward()                      (backward, nodes in reverse creation order)
//     opt.step()                           (optimizer; state created on the first step)
//
// build_schedule() writes that loop as steps over the graph (with gradient accumulation, K forward/
// backward passes per optimizer step); Planner executes the steps. Every storage carries a reference count; the holders are the loop's variables, autograd's saved
// tensors, the engine's gradient buffers and .grad. A storage is freed when its count reaches zero.
// Facts relied on, with citations: docs/pytorch-behaviour.md sections 2 (optimizers) and 3 (engine).
#include "memfit/plan.hpp"

#include <algorithm>
#include <unordered_map>

namespace memfit {

const char* optimizer_name(Optimizer o) {
  switch (o) {
    case Optimizer::sgd: return "sgd";
    case Optimizer::sgd_momentum: return "sgd-momentum";
    case Optimizer::adam: return "adam";
    case Optimizer::adamw: return "adamw";
    case Optimizer::adagrad: return "adagrad";
    case Optimizer::rmsprop: return "rmsprop";
    case Optimizer::adamw8bit: return "adamw8bit";
    case Optimizer::paged_adamw: return "paged_adamw";
    case Optimizer::paged_adamw8bit: return "paged_adamw8bit";
  }
  return "?";
}

const char* checkpoint_impl_name(CheckpointImpl c) {
  return c == CheckpointImpl::reentrant ? "reentrant" : "non-reentrant";
}

const char* optimizer_impl_name(OptimizerImpl i) {
  switch (i) {
    case OptimizerImpl::foreach: return "foreach";
    case OptimizerImpl::fused: return "fused";
    case OptimizerImpl::for_loop: return "for-loop";
  }
  return "?";
}

namespace {

// A 0-dim float32 tensor: the fused/capturable optimizers' per-parameter `step` on the device.
constexpr i64 kScalarF32Bytes = 4;
// torch/amp/grad_scaler.py unscale_: `inv_scale = self._scale.double().reciprocal().float()`.
constexpr i64 kScalarF64Bytes = 8;

// bitsandbytes optim/optimizer.py (bitsandbytes-foundation/bitsandbytes):
// Optimizer2State(min_8bit_size=4096): `if p.numel() < config["min_8bit_size"]: dtype = torch.float32`.
constexpr i64 kBnbMin8bitSize = 4096;
// Optimizer2State.init_state, block_wise: `blocks = n // 256; blocks += 1 if n % 256 > 0` float32
// absmax1 and absmax2.
constexpr i64 kBnbStateBlockSize = 256;
// Optimizer8bit.get_state_buffer: `if not self.is_paged or p.numel() < 1e5: torch.zeros_like(...)`
// else F.get_paged (cudaMallocManaged).
constexpr i64 kBnbPagedMinNumel = 100000;
// fill_qmap: create_dynamic_map(signed=True) and (signed=False), 256 float32 entries each, moved to the
// device once (`self.name2qmap["dynamic"].to(p.device)`).
constexpr i64 kBnbQmapBytes = 256 * 4;

struct Param {
  int node;
  int index;      // within the node's params
  i64 bytes;      // its storage (float32, or the model's dtype)
  i64 numel = 0;
  int storage = -1;
  int grad = -1;  // .grad storage, -1 = None
  std::vector<int> state;  // optimizer state storages
  // A parameter several layers use (a tied lm_head and its embedding): its AccumulateGrad node has
  // one input edge per use, so the engine sums their gradients in its input buffer first
  // (input_buffer.cpp) and accumulates into .grad once, after the last use's backward.
  int users = 1;
  int received = 0;
  int buffer = -1;
};

// What autograd's engine does that differs between the PyTorch versions memfit follows.
struct EngineRules {
  // InputBuffer::accumulate adds a later gradient into the first one in place when that buffer is
  // dense and the only reference (input_buffer.cpp can_accumulate_inplace, PyTorch 2.x source,
  // docs/pytorch-behaviour.md section 3). torch 1.13 always summed into a new tensor (measured:
  // tests/reference/cpu_live_densenet.json, and by data_ptr in docs/pytorch-behaviour.md 4a).
  bool input_buffer_in_place = true;
};
EngineRules engine_rules(TorchRules r) { return {.input_buffer_in_place = r != TorchRules::v1_13}; }

class Planner {
 public:
  Planner(const Graph& g, const TrainSettings& s, Plan& p) : g_(g), s_(s), p_(p), engine_(engine_rules(s.rules)) {}

  void run(const std::vector<Step>& steps) {
    const std::size_t n = g_.nodes.size();
    p_.node_grad_bytes.assign(n, 0);
    p_.node_optimizer_bytes.assign(n, 0);
    const std::size_t nv = static_cast<std::size_t>(g_.n_values);
    value_.assign(nv, -1);
    grad_.assign(nv, -1);
    grad_slice_.assign(nv, false);
    uses_.assign(nv, 0);
    saved_.assign(n, {});
    value_type_.assign(nv, nullptr);
    for (std::size_t i = 0; i < n; ++i)
      for (int k = 0; k < g_.nodes[i].n_outputs(); ++k) value_type_[vid(i, k)] = &g_.nodes[i].out_type(k);
    seg_held_.assign(p_.checkpoints.size(), {});
    seg_input_st_.assign(p_.checkpoints.size(), {});
    for (const Step& st : steps) {
      iter_ = st.iteration;
      switch (st.kind) {
        case Step::Kind::setup: setup(); break;
        case Step::Kind::zero_grad: zero_grad(); break;
        case Step::Kind::begin_forward: begin_forward(); break;
        case Step::Kind::forward:
          forward_node(static_cast<std::size_t>(st.node), st.segment >= 0 ? Run::keep_nothing : Run::normal);
          break;
        case Step::Kind::end_forward: end_forward(); break;
        case Step::Kind::begin_backward: begin_backward(); break;
        case Step::Kind::backward: backward_node(static_cast<std::size_t>(st.node), st.segment); break;
        case Step::Kind::checkpoint_forward: checkpoint_forward(st.segment); break;
        case Step::Kind::recompute_begin: recompute_begin(st.segment); break;
        case Step::Kind::recompute: forward_node(static_cast<std::size_t>(st.node), Run::recompute); break;
        case Step::Kind::recompute_end: recompute_end(st.segment); break;
        case Step::Kind::checkpoint_release: checkpoint_release(st.segment); break;
        case Step::Kind::end_backward: end_backward(); break;
        case Step::Kind::end_micro_batch:
          node_ = -1;
          for (int t : loop_held_) unref(t);  // `out`, `loss` rebound by the next forward
          loop_held_.clear();
          break;
        case Step::Kind::optimizer:
          optimizer_step();
          break;
      }
    }
  }

 private:
  const Graph& g_;
  const TrainSettings& s_;
  Plan& p_;
  const EngineRules engine_;
  std::vector<int> refs_;
  Phase phase_ = Phase::setup;
  std::uint8_t iter_ = 0;
  int node_ = -1;
  std::vector<Param> params_;
  std::vector<std::vector<int>> node_params_;  // node -> index into params_ (trainable), -1 for buffers
  int x_ = -1, y_ = -1;
  std::vector<int> value_, grad_, uses_;
  std::vector<bool> grad_slice_;  // the buffered gradient is a slice of a bigger one (cat backward)
  std::vector<std::vector<int>> param_storage_;  // node -> storage of each parameter and buffer
  std::unordered_map<int, int> weight_cache_;    // autocast's cached casts: param index -> storage
  std::vector<int> casts_in_order_;
  std::vector<std::vector<int>> saved_;
  std::vector<int> loop_held_;
  bool fwd_blas_ready_ = false, bwd_blas_ready_ = false, fwd_lt_ready_ = false, bwd_lt_ready_ = false;
  std::unordered_map<int, int> first_saver_;
  // Activation checkpointing: per call, the storages it holds (its inputs; reentrant: the rerun's
  // outputs and the output gradients its backward received), its inputs' storages (parallel to the
  // segment's `inputs`), and the reentrant inner backward's gradients of the detached inputs.
  std::vector<const TensorType*> value_type_;
  std::vector<std::vector<int>> seg_held_, seg_input_st_;
  std::unordered_map<int, int> inner_grad_;  // value id -> .grad storage of the detached input
  const CheckpointSegment& seg(int k) const { return p_.checkpoints[static_cast<std::size_t>(k)]; }
  bool reentrant() const { return s_.checkpoint_impl == CheckpointImpl::reentrant; }
  std::vector<bool> held_done_;  // per node: its held_by_forward outputs were released in this forward
  std::vector<std::size_t> held_nodes_;  // the nodes whose rule is held_by_forward
  bool recorded_ = false;  // the first micro-batch of iteration 1 has been recorded
  int scale_ = -1, scaled_loss_ = -1;  // GradScaler's _scale; this backward's scaled loss
  bool qmaps_ready_ = false;           // bitsandbytes' quantization maps are on the device

  int alloc(i64 bytes, Category c) {
    int id = static_cast<int>(p_.tensors.size());
    p_.tensors.push_back({bytes, c, node_});
    refs_.push_back(1);
    p_.events.push_back({id, false, phase_, iter_, node_});
    return id;
  }
  void ref(int t) { ++refs_[t]; }
  void unref(int t) {
    if (--refs_[t] == 0) p_.events.push_back({t, true, phase_, iter_, node_});
  }

  void setup() {
    phase_ = Phase::setup;
    node_params_.resize(g_.nodes.size());
    param_storage_.resize(g_.nodes.size());
    // model.cuda(): each parameter and buffer is moved one by one, in registration order.
    for (std::size_t i = 0; i < g_.nodes.size(); ++i) {
      node_ = static_cast<int>(i);
      const auto& ps = g_.nodes[i].shape.params;
      for (std::size_t k = 0; k < ps.size(); ++k) {
        if (ps[k].tied_node >= 0) {  // the owner's storage and Param (owners come earlier in the graph)
          const auto tn = static_cast<std::size_t>(ps[k].tied_node), ti = static_cast<std::size_t>(ps[k].tied_index);
          param_storage_[i].push_back(param_storage_[tn][ti]);
          node_params_[i].push_back(node_params_[tn][ti]);
          if (node_params_[tn][ti] >= 0) params_[static_cast<std::size_t>(node_params_[tn][ti])].users++;
          continue;
        }
        i64 bytes = checked_mul(ps[k].numel(), dtype_size(ps[k].dtype), "parameter bytes");
        int t = alloc(bytes, ps[k].is_buffer ? Category::buffer : Category::parameter);
        param_storage_[i].push_back(t);
        if (ps[k].trainable) {
          node_params_[i].push_back(static_cast<int>(params_.size()));
          params_.push_back({static_cast<int>(i), static_cast<int>(k), bytes, ps[k].numel(), t, -1, {}});
        } else {
          node_params_[i].push_back(-1);
        }
      }
    }
    node_ = -1;
    // torch.optim.Adagrad creates its `sum` state in __init__ (torch/optim/adagrad.py).
    if (s_.optimizer == Optimizer::adagrad)
      for (auto& pr : params_) {
        node_ = pr.node;
        pr.state.push_back(alloc(pr.bytes, Category::optimizer_state));
        p_.node_optimizer_bytes[pr.node] += pr.bytes;
      }
    node_ = 0;
    x_ = alloc(g_.nodes[0].shape.out.bytes(), Category::input);
    y_ = alloc(g_.target.bytes(), Category::input);
    node_ = -1;
  }

  void zero_grad() {
    phase_ = Phase::zero_grad;
    if (!s_.set_to_none) return;  // grads are zeroed in place: no memory change
    for (auto& pr : params_)
      if (pr.grad >= 0) {
        node_ = pr.node;
        unref(pr.grad);
        pr.grad = -1;
      }
    node_ = -1;
  }

  // cuBLAS/cuBLASLt workspaces are created by the first matmul on each thread and then kept
  // (aten/src/ATen/cuda/CublasHandlePool.cpp; docs/pytorch-behaviour.md section 5).
  void blas_workspaces(bool backward_thread, bool uses_lt) {
    bool& ready = backward_thread ? bwd_blas_ready_ : fwd_blas_ready_;
    bool& lt_ready = backward_thread ? bwd_lt_ready_ : fwd_lt_ready_;
    if (!ready) {
      ready = true;
      if (s_.workspaces.cublas_bytes > 0) alloc(s_.workspaces.cublas_bytes, Category::workspace);
    }
    if (uses_lt && !lt_ready) {
      lt_ready = true;
      if (s_.workspaces.cublaslt_bytes > 0) alloc(s_.workspaces.cublaslt_bytes, Category::workspace);
    }
  }

  // The op's library workspaces (rule data): handle workspaces once per thread, cuDNN's per call
  // (returned, to be freed when the call ends).
  std::vector<int> workspaces(const std::vector<Workspace>& ws, bool backward_thread) {
    std::vector<int> per_call;
    bool cublas = false, lt = false;
    for (Workspace w : ws) {
      if (w == Workspace::cublas) cublas = true;
      if (w == Workspace::cublaslt) lt = true;
      if (w == Workspace::cudnn_conv && s_.workspaces.cudnn_conv_bytes > 0)
        per_call.push_back(alloc(s_.workspaces.cudnn_conv_bytes, Category::workspace));
    }
    if (cublas || lt) blas_workspaces(backward_thread, lt);
    return per_call;
  }

  // Value ids: output k of node i is g_.nodes[i].first_value + k.
  std::size_t vid(std::size_t node, int k) const {
    return static_cast<std::size_t>(g_.nodes[node].first_value + k);
  }
  std::size_t vid(int node, int k) const { return vid(static_cast<std::size_t>(node), k); }
  std::size_t in_vid(const Node& nd, std::size_t j) const { return vid(nd.in[j], nd.in_out[j]); }

  int resolve(const Node& nd, const TensorRef& r, const std::vector<int>& in_st, int out, const std::vector<int>& extras,
              const std::vector<int>& param_st) {
    switch (r.kind) {
      case TensorRef::input: return in_st[static_cast<std::size_t>(r.index)];
      case TensorRef::output: return out;
      case TensorRef::extra: return extras[static_cast<std::size_t>(r.index)];
      case TensorRef::param: return param_st[static_cast<std::size_t>(r.index)];
      case TensorRef::target: return y_;
    }
    (void)nd;
    return out;
  }

  void begin_forward() {
    phase_ = Phase::forward;
    const std::size_t n = g_.nodes.size();
    std::fill(value_.begin(), value_.end(), -1);
    for (std::size_t i = 0; i < n; ++i)
      for (int k = 0; k < g_.nodes[i].n_outputs(); ++k) uses_[vid(i, k)] = g_.nodes[i].out_consumers[static_cast<std::size_t>(k)];
    if (g_.model_output >= 0) uses_[vid(g_.model_output, g_.model_output_out)]++;  // `out` held by the loop
    held_done_.assign(n, false);
    held_nodes_.clear();
    for (std::size_t i = 0; i < n; ++i)  // held until their module's forward returns (release_held_by_forward)
      if (g_.nodes[i].rule->held_by_forward) {
        held_nodes_.push_back(i);
        for (int k = 0; k < g_.nodes[i].n_outputs(); ++k) uses_[vid(i, k)]++;
      }
    value_[0] = x_;
    ref(x_);  // the forward's reference; the loop keeps its own
    weight_cache_.clear();
    casts_in_order_.clear();
  }

  // normal: the op under grad mode, autograd saving what its backward needs; keep_nothing: inside a
  // checkpointed call's forward (no_grad for reentrant, pack hooks keeping nothing for non-reentrant);
  // recompute: the rerun in backward (on the engine's thread, enable_grad: it saves).
  enum class Run : std::uint8_t { normal, keep_nothing, recompute };

  void forward_node(std::size_t i, Run run = Run::normal) {
    const Node& nd = g_.nodes[i];
    node_ = static_cast<int>(i);
    phase_ = run == Run::recompute ? Phase::backward : nd.rule->is_loss ? Phase::loss : Phase::forward;
    if (run != Run::recompute) release_held_by_forward(i);  // the rerun is inside backward: every module forward has returned
    std::vector<int> temps = workspaces(nd.mem.fwd_workspaces, run == Run::recompute);
    // autocast casts of inputs: a new storage when the dtype changes, held for the call
    std::vector<int> in_st, call_held;
    for (std::size_t j = 0; j < nd.in.size(); ++j) {
      int src = value_[in_vid(nd, j)];
      if (nd.in_types[j].dtype != g_.nodes[static_cast<std::size_t>(nd.in[j])].out_type(nd.in_out[j]).dtype) {
        int c = alloc(nd.in_types[j].bytes(), Category::activation);
        call_held.push_back(c);
        src = c;
      }
      in_st.push_back(src);
    }
    // parameters as the op sees them: the storage itself, autocast's cached low-precision copy
    // (trainable weights), or a copy made for this call (frozen weights: not cached)
    std::vector<int> param_st;
    for (std::size_t k = 0; k < nd.shape.params.size(); ++k) {
      int own = param_storage_[i][k];
      if (!nd.param_cast[k]) {
        param_st.push_back(own);
        continue;
      }
      i64 cast_bytes = nd.shape.params[k].numel() * dtype_size(g_.compute);
      if (!nd.param_cached[k]) {
        int c = alloc(cast_bytes, Category::temporary);
        call_held.push_back(c);
        param_st.push_back(c);
        continue;
      }
      int pi = node_params_[i][k];
      auto cached = weight_cache_.find(pi);
      int cast;
      if (cached != weight_cache_.end()) {
        cast = cached->second;
      } else {
        cast = alloc(cast_bytes, Category::temporary);
        weight_cache_.emplace(pi, cast);
        casts_in_order_.push_back(cast);  // freed in creation order on every platform
      }
      param_st.push_back(cast);
    }
    for (const auto& t : nd.mem.fwd_temps) temps.push_back(alloc(t.bytes(), Category::temporary));
    int out;
    if (nd.mem.output == OpMemory::Output::fresh) {
      out = alloc(nd.shape.out.bytes(), Category::activation);
    } else if (nd.mem.output == OpMemory::Output::parameter) {
      out = param_st[0];  // the nn.Parameter itself: nothing allocated
      ref(out);
    } else {
      out = in_st[0];
      ref(out);
    }
    std::vector<int> extras;
    for (const auto& e : nd.mem.extras) extras.push_back(alloc(e.type.bytes(), Category::activation));
    for (const auto& sv : nd.saved) {  // already filtered by requires_grad and each save condition
      if (run == Run::keep_nothing) break;
      int t = resolve(nd, sv.ref, in_st, out, extras, param_st);
      saved_[i].push_back(t);  // kept parallel to nd.saved (released_early is per entry)
      if (t < 0) continue;
      ref(t);
      if (run == Run::normal && iter_ == 1 && !recorded_) record_saved(i, sv, t, in_st, out, extras);
    }
    for (int t : temps) unref(t);
    for (int t : extras) unref(t);
    for (int t : call_held) unref(t);
    value_[vid(i, 0)] = out;
    // further outputs: views share input 0's storage (chunk), fresh ones get their own
    for (int k = 1; k < nd.n_outputs(); ++k) {
      int o;
      if (nd.mem.output == OpMemory::Output::fresh) {
        o = alloc(nd.out_type(k).bytes(), Category::activation);
      } else {
        o = in_st[0];
        ref(o);
      }
      value_[vid(i, k)] = o;
    }
    // an output nobody consumes (nor the loop) is released at once
    for (int k = 0; k < nd.n_outputs(); ++k)
      if (uses_[vid(i, k)] == 0 && i + 1 < g_.nodes.size()) {
        unref(value_[vid(i, k)]);
        value_[vid(i, k)] = -1;
      }
    for (std::size_t j = 0; j < nd.in.size(); ++j) {
      std::size_t v = in_vid(nd, j);
      if (--uses_[v] == 0) unref(value_[v]);
    }
  }

  // A held_by_forward output is a local of the module whose forward made it (LlamaModel.forward's
  // causal_mask: the layer `model.mask` of the top-level module `model`); that forward returns when
  // the first layer outside the module runs (lm_head), or at the loss for a top-level layer. Those
  // are released as node `before` starts (every node up to the loss: all of them at the loss).
  void release_held_by_forward(std::size_t before) {
    for (std::size_t h : held_nodes_) {
      if (h >= before || held_done_[h]) continue;
      const std::string& name = g_.nodes[h].layer->name;
      const std::size_t dot = name.find('.');
      const bool left = g_.nodes[before].rule->is_loss ||
                        (dot != std::string::npos && g_.nodes[before].layer->name.compare(0, dot + 1, name, 0, dot + 1) != 0);
      if (!left) continue;
      held_done_[h] = true;
      for (int k = 0; k < g_.nodes[h].n_outputs(); ++k) {
        const std::size_t v = vid(h, k);
        if (--uses_[v] == 0 && value_[v] >= 0) unref(value_[v]);
      }
    }
  }

  void end_forward() {
    // autocast exits: its weight-cast cache is cleared (saved copies live on until their backward)
    node_ = -1;
    for (int c : casts_in_order_) unref(c);
    casts_in_order_.clear();
    weight_cache_.clear();
    const std::size_t last = g_.nodes.size() - 1;
    if (g_.model_output >= 0) loop_held_.push_back(value_[vid(g_.model_output, g_.model_output_out)]);
    loop_held_.push_back(value_[vid(last, 0)]);  // `loss`
  }

  void record_saved(std::size_t i, const SavedSpec& sv, int t, const std::vector<int>& in_st, int out,
                    const std::vector<int>& extras) {
    const Node& nd = g_.nodes[i];
    SavedRecord r;
    r.node = static_cast<int>(i);
    r.role = sv.role;
    r.tensor = t;
    r.storage_bytes = p_.tensors[static_cast<std::size_t>(t)].bytes;
    auto [it, inserted] = first_saver_.emplace(t, static_cast<int>(i));
    r.owner = it->second;  // the first node that saved this storage counts its bytes
    switch (sv.ref.kind) {
      case TensorRef::input: {
        std::size_t j = static_cast<std::size_t>(sv.ref.index);
        r.type = nd.in_types[j];
        r.producer = in_st[j] == value_[in_vid(nd, j)] ? nd.in[j] : -1;
        r.is_input = (in_st[j] == x_);
        // a `parameter` layer's output is the parameter itself: listed, not counted as an activation
        r.is_param = p_.tensors[static_cast<std::size_t>(in_st[j])].category == Category::parameter;
        break;
      }
      case TensorRef::output:
        r.type = nd.shape.out;
        r.producer = static_cast<int>(i);
        break;
      case TensorRef::extra:
        r.type = nd.mem.extras[static_cast<std::size_t>(sv.ref.index)].type;
        break;
      case TensorRef::param: {
        const auto& ps = nd.shape.params[static_cast<std::size_t>(sv.ref.index)];
        r.type = {ps.shape, nd.param_cast[static_cast<std::size_t>(sv.ref.index)] ? g_.compute : ps.dtype};
        r.is_param = !nd.param_cast[static_cast<std::size_t>(sv.ref.index)];
        break;
      }
      case TensorRef::target:
        r.type = g_.target;
        r.is_input = true;
        break;
    }
    (void)out;
    (void)extras;
    p_.saved.push_back(std::move(r));
  }

  // Hands a gradient to a producer's input buffer (torch/csrc/autograd/input_buffer.cpp): the first
  // one is kept; a later one is added in place when the buffer holds the only reference and is
  // dense (can_accumulate_inplace), else both are summed into a new tensor of the producer's size
  // (not of the storage: a slice of cat's gradient shares a bigger one).
  void deliver(std::size_t value, const TensorType& type, int g, bool slice) {
    int& buf = grad_[value];
    if (buf < 0) {
      buf = g;
      grad_slice_[value] = slice;
      return;
    }
    if (engine_.input_buffer_in_place && refs_[static_cast<std::size_t>(buf)] == 1 && !grad_slice_[value]) {
      unref(g);
      return;
    }
    int sum = alloc(type.bytes(), Category::activation_grad);
    unref(buf);
    unref(g);
    buf = sum;
    grad_slice_[value] = false;
  }

  void begin_backward() {
    phase_ = Phase::backward;
    const std::size_t n = g_.nodes.size();
    std::fill(grad_.begin(), grad_.end(), -1);
    std::fill(grad_slice_.begin(), grad_slice_.end(), false);
    node_ = static_cast<int>(n - 1);
    const i64 loss_bytes = g_.nodes[n - 1].shape.out.bytes();
    if (!s_.grad_scaler) {
      // loss.backward(): torch.ones_like(loss)
      grad_[vid(n - 1, 0)] = alloc(loss_bytes, Category::activation_grad);
      return;
    }
    // scaler.scale(loss).backward() (torch/amp/grad_scaler.py): the first call creates
    // `_scale = torch.full((), init_scale, dtype=float32)` and `_growth_tracker = torch.full((), 0,
    // dtype=int32)`, kept for the run; `loss * self._scale` is a new tensor (MulBackward saves the
    // scale, already held); backward seeds it with ones and hands the loss grad * scale, a new tensor.
    if (scale_ < 0) {
      scale_ = alloc(kScalarF32Bytes, Category::optimizer_state);
      alloc(kScalarF32Bytes, Category::optimizer_state);  // _growth_tracker (int32)
    }
    scaled_loss_ = alloc(loss_bytes, Category::activation);
    int seed = alloc(loss_bytes, Category::activation_grad);
    grad_[vid(n - 1, 0)] = alloc(loss_bytes, Category::activation_grad);
    unref(seed);
  }

  // A checkpointed call starts (torch/utils/checkpoint.py, docs/checkpointing.md): reentrant,
  // CheckpointFunction.forward keeps its tensor inputs by ctx.save_for_backward (saved tensors the
  // outer graph's hooks see); non-reentrant, the rerun's closure holds `args` until the last hook dies.
  void checkpoint_forward(int k) {
    const CheckpointSegment& sg = seg(k);
    phase_ = Phase::forward;
    node_ = sg.first;
    auto& held = seg_input_st_[static_cast<std::size_t>(k)];
    held.clear();
    for (int v : sg.inputs) {
      int t = value_[static_cast<std::size_t>(v)];
      held.push_back(t);
      if (t < 0) continue;
      ref(t);
      seg_held_[static_cast<std::size_t>(k)].push_back(t);
      if (reentrant() && iter_ == 1 && !recorded_) {
        SavedRecord r;
        r.node = sg.first;
        r.role = "checkpoint input (ctx.save_for_backward)";
        r.tensor = t;
        r.owner = first_saver_.emplace(t, sg.first).first->second;
        for (std::size_t n = 0; n < g_.nodes.size(); ++n)
          if (v >= g_.nodes[n].first_value && v < g_.nodes[n].first_value + g_.nodes[n].n_outputs()) r.producer = static_cast<int>(n);
        r.type = *value_type_[static_cast<std::size_t>(v)];
        r.storage_bytes = p_.tensors[static_cast<std::size_t>(t)].bytes;
        r.is_input = t == x_;
        p_.saved.push_back(std::move(r));
      }
    }
  }

  // The rerun starts. Values inside the call get their uses within the rerun; its inputs are the held
  // storages; its outputs get one more use (reentrant: `outputs` in CheckpointFunction.backward holds
  // them until it returns; non-reentrant: dropped when the rerun returns).
  void recompute_begin(int k) {
    const CheckpointSegment& sg = seg(k);
    phase_ = Phase::backward;
    node_ = sg.last;
    if (reentrant())  // the engine's grads for the call's outputs: `args`, held until backward returns
      for (int v : sg.outputs) {
        int gv = grad_[static_cast<std::size_t>(v)];
        if (gv < 0) continue;
        ref(gv);
        seg_held_[static_cast<std::size_t>(k)].push_back(gv);
      }
    const int stop = sg.recompute_last;
    for (int n = sg.first; n <= stop; ++n)
      for (int o = 0; o < g_.nodes[static_cast<std::size_t>(n)].n_outputs(); ++o) uses_[vid(n, o)] = 0;
    for (int v : sg.inputs) uses_[static_cast<std::size_t>(v)] = 0;
    for (int n = sg.first; n <= stop; ++n) {
      const Node& nd = g_.nodes[static_cast<std::size_t>(n)];
      for (std::size_t j = 0; j < nd.in.size(); ++j) uses_[in_vid(nd, j)]++;
    }
    for (int v : sg.outputs)
      if (produced_by_rerun(sg, v)) uses_[static_cast<std::size_t>(v)]++;
    const auto& in_st = seg_input_st_[static_cast<std::size_t>(k)];
    for (std::size_t j = 0; j < sg.inputs.size(); ++j) {
      std::size_t v = static_cast<std::size_t>(sg.inputs[j]);
      value_[v] = in_st[j];
      if (uses_[v] > 0 && in_st[j] >= 0) ref(in_st[j]);  // the rerun's own reference, dropped after its last use
    }
    // autocast is entered again for the rerun (CheckpointFunction.backward / the recompute closure):
    // its weight-cast cache starts empty and is cleared when the rerun's autocast exits
    weight_cache_.clear();
    casts_in_order_.clear();
  }

  bool produced_by_rerun(const CheckpointSegment& sg, int v) const {
    return v >= g_.nodes[static_cast<std::size_t>(sg.first)].first_value &&
           v < g_.nodes[static_cast<std::size_t>(sg.recompute_last)].first_value +
                   g_.nodes[static_cast<std::size_t>(sg.recompute_last)].n_outputs();
  }

  void recompute_end(int k) {
    const CheckpointSegment& sg = seg(k);
    node_ = sg.recompute_last;
    for (int c : casts_in_order_) unref(c);  // autocast exits: nesting back to 0 clears its cache
    casts_in_order_.clear();
    weight_cache_.clear();
    for (int v : sg.outputs) {
      if (!produced_by_rerun(sg, v)) continue;
      int t = value_[static_cast<std::size_t>(v)];
      if (reentrant()) seg_held_[static_cast<std::size_t>(k)].push_back(t);  // `outputs`, until backward returns
      else unref(t);  // `_unused = function(*args)`: the rerun's result is dropped
    }
  }

  // The call's backward is done (reentrant: CheckpointFunction.backward returns and the engine releases
  // its ctx; non-reentrant: the last saved-tensor hook holding the closure is gone).
  void checkpoint_release(int k) {
    const CheckpointSegment& sg = seg(k);
    node_ = sg.first;
    for (int t : seg_held_[static_cast<std::size_t>(k)]) unref(t);
    seg_held_[static_cast<std::size_t>(k)].clear();
    for (int v : sg.inputs) {  // reentrant: the detached inputs' .grad, returned to the outer engine
      auto it = inner_grad_.find(v);
      if (it == inner_grad_.end()) continue;
      int gr = it->second;
      inner_grad_.erase(it);
      deliver(static_cast<std::size_t>(v), *value_type_[static_cast<std::size_t>(v)], gr, false);
    }
  }

  bool is_segment_input(int k, std::size_t v) const {
    for (int u : seg(k).inputs)
      if (static_cast<std::size_t>(u) == v) return true;
    return false;
  }

  // Reentrant inner backward: a gradient for one of the call's inputs goes to the detached input's
  // input buffer in the inner engine (summed like any other, input_buffer.cpp), then its AccumulateGrad
  // steals it as .grad once every contribution is in (measured: its AccumulateGrad runs after fc1's
  // AddmmBackward0, not after the residual's AddBackward0; tests/reference/cpu_live_checkpoint.json).
  void accumulate_inner(std::size_t v, int g) {
    auto [it, fresh] = inner_grad_.emplace(static_cast<int>(v), g);
    if (fresh) return;
    if (engine_.input_buffer_in_place && refs_[static_cast<std::size_t>(it->second)] == 1) {
      unref(g);
      return;
    }
    int sum = alloc(value_type_[v]->bytes(), Category::activation_grad);
    unref(it->second);
    unref(g);
    it->second = sum;
  }

  void backward_node(std::size_t i, int segment = -1) {
    const Node& nd = g_.nodes[i];
    node_ = static_cast<int>(i);
    // The node runs once the gradients of its outputs are in (any of them: PyTorch passes undefined
    // ones for unused outputs).
    bool any_grad = false;
    for (int k = 0; k < nd.n_outputs(); ++k) any_grad = any_grad || grad_[vid(i, k)] >= 0;
    if (!any_grad || !nd.requires_grad) return;
    const std::size_t g0 = vid(i, 0);
    std::vector<int> temps = workspaces(nd.mem.bwd_workspaces, true);
    for (const auto& t : nd.mem.bwd_temps) temps.push_back(alloc(t.bytes(), Category::temporary));
    for (std::size_t q = 0; q < nd.saved.size() && q < saved_[i].size(); ++q)
      if (nd.saved[q].released_early && saved_[i][q] >= 0) {
        unref(saved_[i][q]);
        saved_[i][q] = -1;
      }
    struct Pending {
      std::size_t value;
      const TensorType* type;
      int grad;
      bool slice;
    };
    std::vector<Pending> pending;
    for (std::size_t j = 0; j < nd.in.size(); ++j) {
      std::size_t prod = static_cast<std::size_t>(nd.in[j]);
      if (!g_.nodes[prod].requires_grad) continue;
      int gi;
      bool slice = false;
      if (nd.mem.grad_in[j] == OpMemory::GradIn::fresh || nd.grad_copies[j]) {
        gi = alloc(nd.in_types[j].bytes(), Category::activation_grad);
      } else {
        gi = grad_[g0];  // single-output ops only (graph.cpp checks)
        ref(gi);
        slice = nd.mem.grad_in[j] == OpMemory::GradIn::slice || grad_slice_[g0];
        // the engine casts a gradient to its input's dtype (validate_outputs): add of bf16 and fp32
        // hands the bf16 input a bfloat16 copy of the float32 gradient
        if (nd.in_types[j].dtype != nd.shape.out.dtype) {
          int cast = alloc(nd.in_types[j].bytes(), Category::activation_grad);
          unref(gi);
          gi = cast;
          slice = false;
        }
      }
      const TensorType& prod_type = g_.nodes[prod].out_type(nd.in_out[j]);
      if (nd.in_types[j].dtype != prod_type.dtype) {  // ToCopyBackward of an autocast cast
        int up = alloc(prod_type.bytes(), Category::activation_grad);
        unref(gi);
        gi = up;
        slice = false;
      }
      pending.push_back({in_vid(nd, j), &prod_type, gi, slice});
    }
    for (std::size_t k = 0; k < nd.shape.params.size(); ++k) {
      int pi = node_params_[i][k];
      if (pi < 0) continue;  // a buffer or a frozen parameter: no gradient
      Param& pr = params_[static_cast<std::size_t>(pi)];
      if (nd.mem.output == OpMemory::Output::parameter) {
        parameter_grad(pr, nd, g0);
        if (iter_ == 1 && !recorded_) p_.node_grad_bytes[i] += pr.bytes;
        continue;
      }
      int gw;
      if (nd.param_cast[k]) {  // grad of the low-precision copy, then ToCopyBackward to float32
        int low = alloc(checked_mul(pr.numel, dtype_size(g_.compute), "gradient bytes"), Category::temporary);
        gw = alloc(pr.bytes, Category::gradient);
        unref(low);
      } else {
        gw = alloc(pr.bytes, Category::gradient);
      }
      if (pr.users > 1) {
        buffer_param_grad(pr, gw);
      } else {
        accumulate_grad(pr, gw);
      }
      if (iter_ == 1 && !recorded_ && nd.shape.params[k].tied_node < 0) p_.node_grad_bytes[i] += pr.bytes;
    }
    for (int t : temps) unref(t);
    // Engine: saved variables are released right after the node runs (release_variables).
    for (int t : saved_[i])
      if (t >= 0) unref(t);
    saved_[i].clear();
    for (int k = 0; k < nd.n_outputs(); ++k) {
      int& gk = grad_[vid(i, k)];
      if (gk >= 0) unref(gk);
      gk = -1;
    }
    for (const auto& pd : pending) {
      if (segment >= 0 && is_segment_input(segment, pd.value)) accumulate_inner(pd.value, pd.grad);
      else deliver(pd.value, *pd.type, pd.grad, pd.slice);
    }
  }

  // The AccumulateGrad of a `parameter` layer (an nn.Parameter used as an operand) receives the
  // gradient its consumers handed back (value g0's input buffer), not one the op computes
  // (torch/csrc/autograd/functions/accumulate_grad.h accumulateGrad). With no .grad yet it steals it
  // when the buffer holds the only reference (`new_grad.use_count() <= num_expected_refs`) and its
  // strides obey the layout contract (Node::param_grad_strided), else stores a clone; an existing
  // .grad gets an in-place add (grad accumulation) and the incoming gradient is released with the
  // buffer. A stolen tensor was allocated as an activation gradient (expand's sum_to); it is .grad
  // from now on, and a stolen slice keeps its whole storage (torch 1.13, measured at batch 1: ViT's
  // cls_token.grad is a [1, 1, D] view of cat's [1, T, D] gradient; position_embeddings, whose
  // gradient add also handed to cat, gets a clone). AccumulateGrad has the engine's highest priority,
  // so it runs as soon as its input is ready: right after its consumer's backward, which is where a
  // parameter declared just before its use (ViTEmbeddings) is reached in reverse order here.
  void parameter_grad(Param& pr, const Node& nd, std::size_t g0) {
    const int in = grad_[g0];
    if (in < 0) return;
    if (pr.grad >= 0) return;  // `variable_grad += new_grad`: in place, nothing new
    if (refs_[static_cast<std::size_t>(in)] == 1 && !nd.param_grad_strided) {
      ref(in);
      p_.tensors[static_cast<std::size_t>(in)].category = Category::gradient;
      pr.grad = in;
      return;
    }
    pr.grad = alloc(pr.bytes, Category::gradient);  // clone_obey_contract
  }

  // AccumulateGrad steals a fresh gradient as .grad; an existing .grad gets an in-place add
  // (torch/csrc/autograd/functions/accumulate_grad.h).
  void accumulate_grad(Param& pr, int gw) {
    if (pr.grad < 0) {
      pr.grad = gw;
    } else {
      p_.tensors[static_cast<std::size_t>(gw)].category = Category::temporary;
      unref(gw);
    }
  }
  // One use's gradient of a shared parameter into its AccumulateGrad's input buffer, summed as
  // deliver() sums activation gradients (in place in 2.x when the buffer is the only reference;
  // torch 1.13 into a new tensor); after the last use, AccumulateGrad runs on the sum.
  void buffer_param_grad(Param& pr, int gw) {
    if (pr.buffer < 0) {
      pr.buffer = gw;
    } else if (engine_.input_buffer_in_place && refs_[static_cast<std::size_t>(pr.buffer)] == 1) {
      p_.tensors[static_cast<std::size_t>(gw)].category = Category::temporary;
      unref(gw);
    } else {
      int sum = alloc(pr.bytes, Category::gradient);
      p_.tensors[static_cast<std::size_t>(pr.buffer)].category = Category::temporary;
      p_.tensors[static_cast<std::size_t>(gw)].category = Category::temporary;
      unref(pr.buffer);
      unref(gw);
      pr.buffer = sum;
    }
    if (++pr.received == pr.users) flush_param_buffer(pr);
  }
  void flush_param_buffer(Param& pr) {
    if (pr.buffer >= 0) accumulate_grad(pr, pr.buffer);
    pr.buffer = -1;
    pr.received = 0;
  }

  void end_backward() {
    // The graph is freed when backward returns: anything not reached is released now.
    node_ = -1;
    for (auto& pr : params_) flush_param_buffer(pr);  // a use whose backward never ran
    for (std::size_t i = 0; i < g_.nodes.size(); ++i) {
      for (int t : saved_[i])
        if (t >= 0) unref(t);
      saved_[i].clear();
      for (int k = 0; k < g_.nodes[i].n_outputs(); ++k) {
        int& gk = grad_[vid(i, k)];
        if (gk >= 0) unref(gk);
        gk = -1;
      }
    }
    if (scaled_loss_ >= 0) unref(scaled_loss_);  // the scaled loss was a temporary of the statement
    scaled_loss_ = -1;
    for (auto& held : seg_held_) {  // calls whose backward never ran
      for (int t : held) unref(t);
      held.clear();
    }
    for (auto& [v, t] : inner_grad_) unref(t);
    inner_grad_.clear();
    if (iter_ == 1) recorded_ = true;  // the per-layer report reads the first micro-batch only
  }

  void add_state(Param& pr, i64 bytes) {
    pr.state.push_back(alloc(bytes, Category::optimizer_state));
    if (iter_ == 1) p_.node_optimizer_bytes[pr.node] += bytes;
  }

  // The for-loop (_single_tensor_*) steps: per parameter, a result bound to a local (`denom`, `std`,
  // `avg`) that stays alive until the next parameter's replaces it; with `intermediate`, an
  // expression temporary before it (Adam's exp_avg_sq.sqrt() before the division) freed at once.
  void per_param_loop(bool intermediate) {
    int prev = -1;
    for (auto& pr : params_) {
      node_ = pr.node;
      int t1 = intermediate ? alloc(pr.bytes, Category::temporary) : -1;
      int bound = alloc(pr.bytes, Category::temporary);
      if (t1 >= 0) unref(t1);
      if (prev >= 0) unref(prev);
      prev = bound;
    }
    if (prev >= 0) unref(prev);
  }

  // torch/optim/*.py (docs/pytorch-behaviour.md section 2). foreach: one temporary per parameter for
  // each _foreach_* call that returns new tensors, all alive until the step returns.
  // bitsandbytes Optimizer2State.init_state (optim/optimizer.py): two state buffers per parameter,
  // uint8 with float32 absmax per 256-element block for 8-bit (parameters under min_8bit_size keep
  // float32 state), float32 for 32-bit; get_state_buffer makes them paged (managed memory, outside the
  // caching allocator) for paged optimizers and parameters of at least 1e5 elements. The update kernels
  // (optimizer_update_8bit_blockwise / _32bit) work in place: no temporaries.
  void bnb_init_state(Param& pr) {
    const bool paged = s_.optimizer == Optimizer::paged_adamw || s_.optimizer == Optimizer::paged_adamw8bit;
    const bool eight = s_.optimizer != Optimizer::paged_adamw && pr.numel >= kBnbMin8bitSize;
    auto buffer = [&](i64 bytes) {
      if (paged && pr.numel >= kBnbPagedMinNumel) {
        p_.managed_bytes = checked_add(p_.managed_bytes, bytes, "paged optimizer bytes");
        p_.node_optimizer_bytes[pr.node] += bytes;
      } else {
        add_state(pr, bytes);
      }
    };
    if (!eight) {
      buffer(checked_mul(pr.numel, dtype_size(DType::f32), "optimizer state bytes"));  // state1
      buffer(checked_mul(pr.numel, dtype_size(DType::f32), "optimizer state bytes"));  // state2
      return;
    }
    if (!qmaps_ready_) {
      qmaps_ready_ = true;
      alloc(kBnbQmapBytes, Category::optimizer_state);  // name2qmap["dynamic"]
      alloc(kBnbQmapBytes, Category::optimizer_state);  // name2qmap["udynamic"]
      p_.node_optimizer_bytes[pr.node] += 2 * kBnbQmapBytes;
    }
    const i64 blocks = pr.numel / kBnbStateBlockSize + (pr.numel % kBnbStateBlockSize > 0 ? 1 : 0);
    buffer(pr.numel);                                          // state1, uint8
    buffer(pr.numel);                                          // state2, uint8
    add_state(pr, checked_mul(blocks, dtype_size(DType::f32), "optimizer state bytes"));  // absmax1
    add_state(pr, checked_mul(blocks, dtype_size(DType::f32), "optimizer state bytes"));  // absmax2
  }

  // scaler.step(optimizer) -> unscale_ (torch/amp/grad_scaler.py): inv_scale =
  // _scale.double().reciprocal().float() and found_inf = torch.full((), 0.0); _unscale_grads_ copies
  // both to the device through _MultiDeviceReplicator (`.to(device, copy=True)`) and unscales the
  // gradients in place (_amp_foreach_non_finite_check_and_unscale_). The found_inf copy stays in
  // found_inf_per_device until update() resets the per-optimizer state; update works in place.
  int unscale_grads() {
    int d = alloc(kScalarF64Bytes, Category::temporary);
    int r = alloc(kScalarF64Bytes, Category::temporary);
    unref(d);
    int inv = alloc(kScalarF32Bytes, Category::temporary);
    unref(r);
    int found = alloc(kScalarF32Bytes, Category::temporary);
    int inv_copy = alloc(kScalarF32Bytes, Category::temporary);
    int found_copy = alloc(kScalarF32Bytes, Category::temporary);
    unref(inv_copy);  // _unscale_grads_ returns only the found_inf copies
    unref(inv);
    unref(found);
    return found_copy;
  }

  void optimizer_step() {
    phase_ = Phase::optimizer;
    bool first = iter_ == 1;
    std::vector<int> temps;
    const int found_inf = s_.grad_scaler ? unscale_grads() : -1;
    auto temp_all = [&] {
      for (auto& pr : params_)
        if (pr.grad >= 0) {
          node_ = pr.node;
          temps.push_back(alloc(pr.bytes, Category::temporary));
        }
    };
    switch (s_.optimizer) {
      case Optimizer::sgd:
        break;
      case Optimizer::sgd_momentum:
        if (first)  // momentum_buffer = torch.clone(grad).detach()
          for (auto& pr : params_) {
            node_ = pr.node;
            add_state(pr, pr.bytes);
          }
        break;
      case Optimizer::adam:
      case Optimizer::adamw:
        if (first)
          for (auto& pr : params_) {
            node_ = pr.node;
            if (s_.impl == OptimizerImpl::fused) add_state(pr, kScalarF32Bytes);  // `step` on the device
            add_state(pr, pr.bytes);                                              // exp_avg
            add_state(pr, pr.bytes);                                              // exp_avg_sq
          }
        if (s_.impl == OptimizerImpl::foreach) {
          temp_all();  // exp_avg_sq_sqrt = torch._foreach_sqrt(exp_avg_sqs)
          // torch 1.13: denom = torch._foreach_add(exp_avg_sq_sqrt, eps), a second list (2.x adds in
          // place); measured, tests/reference/cpu_live_bytes.json
          if (s_.rules == TorchRules::v1_13) temp_all();
        } else if (s_.impl == OptimizerImpl::for_loop) {
          // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps): two temporaries; `denom`
          // stays bound until the next parameter's replaces it.
          per_param_loop(true);
        }
        break;
      case Optimizer::adagrad:
        if (s_.impl == OptimizerImpl::foreach) {
          temp_all();  // std = torch._foreach_sqrt(state_sums)
          temp_all();  // numerator = torch._foreach_mul(grads, minus_clr)
        } else {
          per_param_loop(false);  // std = state_sum.sqrt().add_(eps)
        }
        break;
      case Optimizer::rmsprop:
        if (first)
          for (auto& pr : params_) {
            node_ = pr.node;
            add_state(pr, pr.bytes);  // square_avg
          }
        if (s_.impl == OptimizerImpl::foreach) {
          temp_all();  // avg = torch._foreach_sqrt(square_avgs)
        } else {
          per_param_loop(false);  // avg = square_avg.sqrt().add_(eps)
        }
        break;
      case Optimizer::adamw8bit:
      case Optimizer::paged_adamw:
      case Optimizer::paged_adamw8bit:
        if (first)
          for (auto& pr : params_) {
            node_ = pr.node;
            bnb_init_state(pr);
          }
        break;
    }
    for (int t : temps) unref(t);
    node_ = -1;
    if (found_inf >= 0) unref(found_inf);  // scaler.update()
  }
};

}  // namespace

GraphSettings graph_settings(const TrainSettings& s) {
  return {.batch = s.batch,
          .compute = s.precision,
          .rules = s.rules,
          .freeze = s.freeze,
          .train = s.train,
          .param_dtype = s.param_dtype};
}

const char* step_kind_name(Step::Kind k) {
  switch (k) {
    case Step::Kind::setup: return "setup";
    case Step::Kind::zero_grad: return "zero_grad";
    case Step::Kind::begin_forward: return "begin_forward";
    case Step::Kind::forward: return "forward";
    case Step::Kind::end_forward: return "end_forward";
    case Step::Kind::begin_backward: return "begin_backward";
    case Step::Kind::backward: return "backward";
    case Step::Kind::end_backward: return "end_backward";
    case Step::Kind::end_micro_batch: return "end_micro_batch";
    case Step::Kind::optimizer: return "optimizer";
    case Step::Kind::checkpoint_forward: return "checkpoint_forward";
    case Step::Kind::recompute_begin: return "recompute_begin";
    case Step::Kind::recompute: return "recompute";
    case Step::Kind::recompute_end: return "recompute_end";
    case Step::Kind::checkpoint_release: return "checkpoint_release";
  }
  return "?";
}

std::vector<CheckpointSegment> checkpoint_segments(const Graph& g, const TrainSettings& s) {
  std::vector<CheckpointSegment> out;
  if (s.checkpoint.empty()) return out;
  const std::size_t nr = g.regions.size();
  std::vector<bool> chosen(nr, false);
  for (const auto& glob : s.checkpoint) {
    bool any = false;
    for (std::size_t r = 0; r < nr; ++r)
      if (glob_match(glob, g.regions[r].name)) chosen[r] = any = true;
    if (!any)
      throw Error({}, "", "--checkpoint '" + glob + "' matches no region of '" + g.model_name + "'",
                  "give region names, the dotted prefixes of layer names (e.g. layer1, 'layer*', 'model.layers.*'); "
                  "`memfit model MODEL --json` lists the layer names");
  }
  std::vector<int> top;
  for (std::size_t r = 0; r < nr; ++r) {
    if (!chosen[r]) continue;
    bool inside_chosen = false;  // parents come before children: a chosen ancestor makes this one part of its call
    for (int a = g.regions[r].parent; a >= 0; a = g.regions[static_cast<std::size_t>(a)].parent)
      inside_chosen = inside_chosen || chosen[static_cast<std::size_t>(a)];
    if (!inside_chosen) top.push_back(static_cast<int>(r));
  }
  std::sort(top.begin(), top.end(), [&](int a, int b) {
    return g.regions[static_cast<std::size_t>(a)].first_node < g.regions[static_cast<std::size_t>(b)].first_node;
  });
  const int n_nodes = static_cast<int>(g.nodes.size());
  for (int r : top) {
    const Region& rg = g.regions[static_cast<std::size_t>(r)];
    const Layer* first_layer = g.nodes[static_cast<std::size_t>(rg.first_node)].layer;
    const SourcePos pos = first_layer ? first_layer->pos : SourcePos{};
    if (rg.n_nodes != rg.last_node - rg.first_node + 1)
      throw Error(pos, rg.name, "region '" + rg.name + "' is not one run of consecutive layers, so it is not one module call",
                  "checkpoint a region whose layers are written together");
    CheckpointSegment sg;
    sg.region = r;
    sg.first = rg.first_node;
    sg.last = rg.last_node;
    for (int n = sg.first; n <= sg.last; ++n)
      if (g.nodes[static_cast<std::size_t>(n)].rule->is_loss || n == n_nodes - 1)
        throw Error(pos, rg.name, "region '" + rg.name + "' holds the loss; torch.utils.checkpoint wraps a part of the model",
                    "checkpoint the blocks before the loss (e.g. --checkpoint 'layer*')");
    auto add_unique = [](std::vector<int>& v, int x) {
      if (std::find(v.begin(), v.end(), x) == v.end()) v.push_back(x);
    };
    bool input_requires_grad = false, inside_requires_grad = false;
    for (int n = sg.first; n <= sg.last; ++n) {
      const Node& nd = g.nodes[static_cast<std::size_t>(n)];
      inside_requires_grad = inside_requires_grad || nd.requires_grad;
      if (!nd.saved.empty()) {
        sg.last_saver = n;
      }
      for (std::size_t j = 0; j < nd.in.size(); ++j)
        if (nd.in[j] < sg.first) {
          add_unique(sg.inputs, g.nodes[static_cast<std::size_t>(nd.in[j])].first_value + nd.in_out[j]);
          input_requires_grad = input_requires_grad || g.nodes[static_cast<std::size_t>(nd.in[j])].requires_grad;
        }
    }
    for (int m = sg.last + 1; m < n_nodes; ++m) {
      const Node& nd = g.nodes[static_cast<std::size_t>(m)];
      for (std::size_t j = 0; j < nd.in.size(); ++j)
        if (nd.in[j] >= sg.first && nd.in[j] <= sg.last)
          add_unique(sg.outputs, g.nodes[static_cast<std::size_t>(nd.in[j])].first_value + nd.in_out[j]);
    }
    if (g.model_output >= sg.first && g.model_output <= sg.last)
      add_unique(sg.outputs, g.nodes[static_cast<std::size_t>(g.model_output)].first_value + g.model_output_out);
    // CheckpointFunction's outputs require grad only if one of its tensor inputs does (parameters are
    // not inputs): PyTorch warns "None of the inputs have requires_grad=True. Gradients will be None"
    // (checkpoint.py check_backward_validity) and the region's parameters get no gradient.
    if (s.checkpoint_impl == CheckpointImpl::reentrant && inside_requires_grad && !input_requires_grad)
      throw Error(pos, rg.name,
                  "reentrant checkpoint of '" + rg.name + "': none of its inputs requires grad, so PyTorch warns "
                  "\"None of the inputs have requires_grad=True. Gradients will be None\" and its parameters get no gradient",
                  "use --checkpoint-impl non-reentrant, leave this region out of --checkpoint, or (transformers) call "
                  "model.enable_input_require_grads() and model it with an input that requires grad");
    // PyTorch 2.x's non-reentrant rerun stops once it has every tensor it needs (checkpoint.py, "Rule 5",
    // _StopRecomputationError); torch 1.13's _checkpoint_without_reentrant reruns the whole function.
    sg.recompute_last = (s.checkpoint_impl == CheckpointImpl::non_reentrant && s.rules == TorchRules::v2)
                            ? (sg.last_saver >= 0 ? sg.last_saver : sg.first - 1)
                            : sg.last;
    out.push_back(std::move(sg));
  }
  return out;
}

// for it in 1..n: zero_grad; K x (forward nodes in order, backward nodes in reverse); step.
// Checkpointed calls: their forward steps keep nothing; reentrant, the call's backward is one node of
// the outer graph at its place in reverse order: rerun, inner backward, release; non-reentrant, the
// outer graph's nodes run as usual and the rerun happens at the first one that unpacks a saved tensor.
std::vector<Step> build_schedule(const Graph& g, const TrainSettings& s, const std::vector<CheckpointSegment>& segs) {
  const int n_nodes = static_cast<int>(g.nodes.size());
  std::vector<int> seg_of(g.nodes.size(), -1);
  for (std::size_t k = 0; k < segs.size(); ++k)
    for (int n = segs[k].first; n <= segs[k].last; ++n) seg_of[static_cast<std::size_t>(n)] = static_cast<int>(k);
  const bool reentrant = s.checkpoint_impl == CheckpointImpl::reentrant;
  std::vector<Step> steps;
  steps.reserve(static_cast<std::size_t>(s.n_iterations) * static_cast<std::size_t>(s.grad_accumulation) *
                    (2 * static_cast<std::size_t>(n_nodes) + 6) + 1);
  steps.push_back({Step::Kind::setup, -1, 0});
  for (int it = 1; it <= s.n_iterations; ++it) {
    auto iter = static_cast<std::uint8_t>(it);
    steps.push_back({Step::Kind::zero_grad, -1, iter});
    for (int micro = 0; micro < s.grad_accumulation; ++micro) {
      steps.push_back({Step::Kind::begin_forward, -1, iter});
      for (int i = 1; i < n_nodes; ++i) {
        const int k = seg_of[static_cast<std::size_t>(i)];
        if (k >= 0 && i == segs[static_cast<std::size_t>(k)].first) steps.push_back({Step::Kind::checkpoint_forward, i, iter, k});
        steps.push_back({Step::Kind::forward, i, iter, k});
        // non-reentrant with nothing saved inside: no hook holds the closure past the forward
        if (k >= 0 && i == segs[static_cast<std::size_t>(k)].last && !reentrant && segs[static_cast<std::size_t>(k)].last_saver < 0)
          steps.push_back({Step::Kind::checkpoint_release, i, iter, k});
      }
      steps.push_back({Step::Kind::end_forward, -1, iter});
      steps.push_back({Step::Kind::begin_backward, -1, iter});
      auto rerun = [&](int k) {
        const CheckpointSegment& sg = segs[static_cast<std::size_t>(k)];
        steps.push_back({Step::Kind::recompute_begin, sg.last, iter, k});
        for (int n = sg.first; n <= sg.recompute_last; ++n) steps.push_back({Step::Kind::recompute, n, iter, k});
        steps.push_back({Step::Kind::recompute_end, sg.recompute_last, iter, k});
      };
      for (int i = n_nodes - 1; i >= 1; --i) {
        const int k = seg_of[static_cast<std::size_t>(i)];
        if (k < 0) {
          steps.push_back({Step::Kind::backward, i, iter});
          continue;
        }
        const CheckpointSegment& sg = segs[static_cast<std::size_t>(k)];
        if (reentrant) {  // CheckpointFunction.backward: rerun, torch.autograd.backward over it, return
          rerun(k);
          for (int n = sg.last; n >= sg.first; --n) steps.push_back({Step::Kind::backward, n, iter, k});
          steps.push_back({Step::Kind::checkpoint_release, sg.first, iter, k});
          i = sg.first;
          continue;
        }
        if (i == sg.last_saver) rerun(k);  // the first unpack (nodes after the last saver unpack nothing)
        steps.push_back({Step::Kind::backward, i, iter});
        // the closure goes with the last saved-tensor hook: after the first saver's backward
        bool first_saver = sg.last_saver >= 0 && !g.nodes[static_cast<std::size_t>(i)].saved.empty();
        for (int n = sg.first; n < i && first_saver; ++n) first_saver = g.nodes[static_cast<std::size_t>(n)].saved.empty();
        if (first_saver) steps.push_back({Step::Kind::checkpoint_release, i, iter, k});
      }
      steps.push_back({Step::Kind::end_backward, -1, iter});
      // The loop's `out` and `loss` live until its body ends: after the step for the last
      // micro-batch (tools/memfit_torch.py training_step), after backward for the others.
      if (micro + 1 < s.grad_accumulation) steps.push_back({Step::Kind::end_micro_batch, -1, iter});
    }
    steps.push_back({Step::Kind::optimizer, -1, iter});
    steps.push_back({Step::Kind::end_micro_batch, -1, iter});
  }
  return steps;
}

std::vector<Step> build_schedule(const Graph& g, const TrainSettings& s) {
  return build_schedule(g, s, checkpoint_segments(g, s));
}

// Limits on the work, checked before it: the plan holds about 12 events per node and micro-batch.
inline constexpr int kMaxIterations = 250;
inline constexpr int kMaxGradAccumulation = 1024;
inline constexpr i64 kMaxPlanNodeSteps = i64{2} * 1000 * 1000;  // nodes x iterations x micro-batches (~16 B x 12 events each)

Plan plan_training(const Graph& g, const TrainSettings& s) {
  if (s.impl == OptimizerImpl::fused && (s.optimizer == Optimizer::adagrad || s.optimizer == Optimizer::rmsprop))
    throw Error({}, "", std::string("memfit does not model a fused ") + optimizer_name(s.optimizer),
                "use --optimizer-impl foreach or for-loop");
  if (s.n_iterations < 2 || s.n_iterations > kMaxIterations)
    throw Error({}, "", "iterations must be between 2 and " + std::to_string(kMaxIterations),
                "the default (3) is the first plus steady state");
  if (s.grad_accumulation < 1 || s.grad_accumulation > kMaxGradAccumulation)
    throw Error({}, "", "gradient accumulation must be between 1 and " + std::to_string(kMaxGradAccumulation) + " micro-batches",
                "give e.g. --grad-accum 4");
  i64 work = checked_mul(checked_mul(static_cast<i64>(g.nodes.size()), s.n_iterations, "plan size"), s.grad_accumulation,
                         "plan size");
  if (work > kMaxPlanNodeSteps)
    throw Error({}, "", "the plan would have " + format_count(work) + " node steps (layers x iterations x micro-batches), over " +
                            format_count(kMaxPlanNodeSteps),
                "use fewer --iterations (3 shows the first and the steady state) or fewer micro-batches");
  const bool bnb = s.optimizer == Optimizer::adamw8bit || s.optimizer == Optimizer::paged_adamw ||
                   s.optimizer == Optimizer::paged_adamw8bit;
  if (bnb && s.impl != OptimizerImpl::foreach)
    throw Error({}, "", std::string("--optimizer-impl ") + optimizer_impl_name(s.impl) + " does not apply to bitsandbytes' " +
                            optimizer_name(s.optimizer) + " (one CUDA kernel per parameter, in place)",
                "leave out --optimizer-impl");
  if (s.precision != DType::f32 && s.param_dtype != DType::f32)
    throw Error({}, "", "autocast and a half model (model.to(dtype)) together",
                "give one --dtype: fp16/bf16 (autocast, float32 parameters) or bf16-true/fp16-true");
  if (s.grad_scaler)
    for (const auto& nd : g.nodes)
      for (const auto& p : nd.shape.params)
        if (p.trainable && p.dtype == DType::f16)
          throw Error(nd.layer->pos, nd.layer->name,
                      "GradScaler cannot unscale its float16 gradients: PyTorch raises \"Attempting to unscale FP16 "
                      "gradients.\" (torch/amp/grad_scaler.py _unscale_grads_)",
                      "use --no-grad-scaler with a float16 model, or --dtype bf16-true, or fp16 autocast (--dtype fp16)");
  Plan p;
  p.checkpoints = checkpoint_segments(g, s);
  p.events.reserve(g.nodes.size() * 12 * static_cast<std::size_t>(s.n_iterations) *
                       static_cast<std::size_t>(s.grad_accumulation) + 64);
  Planner(g, s, p).run(build_schedule(g, s, p.checkpoints));
  return p;
}

}  // namespace memfit

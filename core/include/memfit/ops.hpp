// The op registry: the only place that knows a layer kind. Each rule is a pure function of its inputs:
// its attributes, output shape and parameters, and what its forward and backward do to memory
// (what autograd saves, what is allocated). Adding a layer kind = one rule in ops.cpp + one test.
// Registering a kind or alias twice is an error (as in torch/utils/flop_counter.py's registry).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "memfit/common.hpp"
#include "memfit/model.hpp"

namespace memfit {

struct TensorType {
  std::vector<i64> shape;  // batch first, PyTorch order (N, C, H, W)
  DType dtype = DType::f32;
  // Element strides of a view that is not row-major contiguous (transpose, permute, slice); empty
  // for a contiguous tensor, which is what every op that allocates returns. Only layout decisions
  // read them: whether a reshape is a view or a copy (PyTorch's computeStride), what contiguous()
  // copies. Elementwise ops keep their input's layout, as TensorIterator does.
  std::vector<i64> strides;
  i64 numel() const;  // checked
  i64 bytes() const;  // checked
  std::vector<i64> layout() const;  // the strides, row-major ones when `strides` is empty
  bool is_contiguous() const;       // at::TensorImpl::compute_contiguous: size-1 dims ignored
};

// aten/src/ATen/TensorUtils.cpp computeStride: the strides `new_shape` gets as a view of a tensor
// with `shape` and `strides`, or nothing when no view exists (reshape then copies, view() throws).
bool view_strides(const std::vector<i64>& shape, const std::vector<i64>& strides, const std::vector<i64>& new_shape,
                  std::vector<i64>& out);

struct ParamSpec {
  std::string name;  // PyTorch's attribute name: weight, bias, running_mean, ...
  std::vector<i64> shape;
  DType dtype = DType::f32;
  // A module buffer (BatchNorm's running stats): never a gradient, never optimizer state. Frozen
  // parameters (requires_grad=False) are parameters with trainable=false, not buffers.
  bool is_buffer = false;
  // requires_grad: set by the graph from --freeze/--train after the shape rule ran; always false
  // for buffers. Only trainable parameters get a .grad, optimizer state and autocast's weight cache.
  bool trainable = true;
  // A parameter that is another layer's (GPT-2's lm_head shares wte.weight: `linear tied_to=`): one
  // storage, one .grad that both uses accumulate into, optimizer state once, counted once. Set by the
  // graph from the rule's `tied_to` layer name; tied_node < 0 for an own parameter.
  std::string tied_to;
  int tied_node = -1, tied_index = -1;
  // The model weights a packed parameter stands for (a 4-bit Linear4bit weight: out x in, stored two
  // per uint8): what "parameters" counts, as model.num_parameters() of the unquantized model would.
  // -1: the parameter's own element count. Bytes always come from numel() and the dtype.
  i64 logical_numel = -1;
  i64 numel() const;
  i64 count() const { return logical_numel >= 0 ? logical_numel : numel(); }
};

// How torch.autocast treats the op (aten/src/ATen/autocast_mode.cpp lists).
enum class Autocast : std::uint8_t {
  keep,     // not in any list: runs in its input dtype (max_pool2d, relu, batch_norm, dropout)
  lower,    // cast floating inputs and weights to the autocast dtype (conv2d, linear)
  fp32,     // cast inputs to float32 (AT_FORALL_FP32: layer_norm)
  promote,  // cast inputs to the widest input dtype (add, cat)
  // AT_FORALL_FP32_SET_OPT_DTYPE (softmax, log_softmax; cross_entropy through its log_softmax): the
  // op is called with dtype=float32 (set_opt_dtype, an explicit dtype wins). SoftMax.cpp softmax /
  // log_softmax then convert a bfloat16 input (input_.toType(dtype): a float32 copy), but a CUDA
  // float16 input goes uncopied to the half_to_float kernel, which writes a float32 result and whose
  // backward returns a float16 gradient. OpCall::half_to_float says which case a rule is in.
  fp32_set_opt_dtype,
};

// A tensor an op touches: one of its inputs, its output, an op-internal tensor (`extras`), one of its
// parameters (as the op sees it: autocast's low-precision copy where there is one), or the loop's
// targets.
struct TensorRef {
  enum Kind : std::uint8_t { input, output, extra, param, target } kind = input;
  int index = 0;
};

// When autograd keeps a saved tensor. Codegen saves some tensors only when the gradient that needs
// them will be computed (derivatives.yaml + gen_autograd_functions.py `should_compute_output`):
// addmm keeps mat1 only if mat2 requires grad and mat2 only if mat1 does.
struct SaveIf {
  enum Kind : std::uint8_t { always, input_needs_grad, param_needs_grad } kind = always;
  int index = 0;  // which input / parameter
};

struct SavedSpec {
  TensorRef ref;
  const char* role = "";  // derivatives.yaml name: "self", "result", "indices", "mask", ...
  SaveIf when = {};
  // Released after the node's bwd_temps are allocated and before its input gradients: a composite
  // whose first autograd node frees it (ForCausalLMLoss: NllLossBackward0 drops the shifted labels
  // before LogSoftmaxBackward0 allocates the logits' gradient; measured, cpu_live_transformers.json).
  bool released_early = false;
};

struct ExtraSpec {
  const char* name;  // e.g. "indices": allocated with the output, kept only if saved
  TensorType type;
};

// Library workspaces an op's kernels take through the caching allocator. cuBLAS and cuBLASLt
// workspaces belong to the calling thread's handle and are kept once created; a cuDNN convolution
// workspace is allocated for the call and freed after it (sizes: device.hpp, Workspaces).
enum class Workspace : std::uint8_t { cublas, cublaslt, cudnn_conv };
const char* workspace_name(Workspace w);

struct OpMemory {
  // fresh: a new storage; in_place: writes into input 0 (relu_); view: shares input 0 (flatten);
  // parameter: the op's parameter 0 itself (an nn.Parameter used as an operand: `parameter`), whose
  // incoming gradient becomes its .grad. For an op with several outputs it holds for each of them
  // (chunk: every output a view).
  enum class Output : std::uint8_t { fresh, in_place, view, parameter } output = Output::fresh;
  std::vector<ExtraSpec> extras;
  std::vector<TensorType> fwd_temps;
  std::vector<SavedSpec> saved;  // only recorded when the output requires grad
  // Per input: fresh = backward allocates a gradient of the input's size; pass = hands the incoming
  // gradient on unchanged (add); view = hands on a view of the whole of it (flatten); slice = hands
  // on a narrow() of it (cat): not dense, so input_buffer.cpp never accumulates into it in place.
  // An op with several outputs gets one gradient per output, so its inputs' are always fresh.
  enum class GradIn : std::uint8_t { fresh, pass, view, slice };
  std::vector<GradIn> grad_in;
  std::vector<TensorType> bwd_temps;  // live while the node's backward runs
  // How a `view` input gradient is formed, for the gradient-layout pass in graph.cpp. reshape:
  // grad.reshape(input's shape) (ViewBackward, UnsafeViewBackward), a copy when the incoming
  // gradient's strides allow no view (a transpose's backward makes it non-contiguous: channel
  // shuffle). permute: the inverse of `permutation` (output dim k is input dim permutation[k]),
  // always a view.
  enum class GradView : std::uint8_t { reshape, permute } grad_view = GradView::reshape;
  std::vector<int> permutation;
  std::vector<Workspace> fwd_workspaces, bwd_workspaces;
  // Said once in the estimate's notes (with the number of layers that say it): what the rule chose
  // and what it could not check (sdpa's backend, from the source only); empty: nothing to say.
  std::string note;
};

struct OpShape {
  TensorType out;                      // output 0
  std::vector<ParamSpec> params;       // trainable ones and buffers, in registration order
  std::map<std::string, Value> attrs;  // attributes resolved (e.g. padding "same" -> (1, 1))
  std::vector<TensorType> extra_outs;  // outputs 1.. of an op with several (chunk); consumers name them `layer:K`
};

// What a rule sees: a pure function of these. Version and backend differences are inputs here
// (`rules`), never ifs in the planner.
struct OpCall {
  const Layer& layer;
  std::vector<TensorType> in;  // after autocast casts
  std::vector<bool> in_requires_grad;
  std::vector<bool> param_requires_grad;  // per OpShape::params; empty while the shape rule runs
  i64 batch = 0;
  TorchRules rules = TorchRules::v2;
  // The dtype a linear layer's output has in this run: autocast's dtype, else the model's parameter
  // dtype (model.to(dtype)). HF's eager attention casts back to it: `.to(query.dtype)` (`to dtype=compute`).
  DType compute_dtype = DType::f32;
  DType autocast = DType::f32;  // torch.autocast's dtype around forward and loss; f32: no autocast
  // A float16 input read by softmax's half_to_float kernel (Autocast::fp32_set_opt_dtype, or an explicit
  // dtype=float32): the result is float32 while the input (and its gradient) stay float16.
  bool half_to_float = false;
};

struct AttrSpec {
  const char* key;
  Value::Type type;
  const char* default_text;  // nullptr: required
};

// Rule families: the files of core/src/ops/ (and the sections of the docs' layer table).
enum class OpFamily : std::uint8_t { shape, conv_pool, norm, activation, loss, transformer };
const char* op_family_name(OpFamily f);

struct OpRule {
  const char* kind;
  std::vector<const char*> aliases = {};
  std::vector<AttrSpec> attrs = {};
  std::vector<const char*> positional = {};  // attribute keys that may be given by position, in order
  int min_inputs = 1, max_inputs = 1;        // max -1: any number
  Autocast autocast = Autocast::keep;
  // Where torch 1.13's autocast lists differ (TorchRules::v1_13): its policy for this op.
  std::optional<Autocast> autocast_1_13 = std::nullopt;
  bool is_loss = false;
  OpFamily family = OpFamily::shape;
  const char* pytorch = "";  // the PyTorch module or function it stands for, e.g. "nn.Conv2d"
  const char* summary = "";  // one line for the docs table and the web page's help
  const char* source = "";   // citation for the memory behaviour
  OpShape (*shape)(const OpCall&) = nullptr;
  OpMemory (*memory)(const OpCall&, const OpShape&) = nullptr;
  // The loss's target as the training loop holds it (nullptr: int64 class indices [N], what
  // nn.CrossEntropyLoss on [N, C] takes). A causal LM's labels are int64 [N, T].
  TensorType (*target)(const OpCall&) = nullptr;
  // Takes int64 indices as input 0 (embedding, the rotary tables' length): only such ops may consume
  // an int64 tensor; any other op gets a clear error rather than a float computation on token ids.
  bool takes_indices = false;
  // false: its output never requires grad, whatever its inputs do (the rotary cos/sin tables are
  // computed from positions and a buffer; the hidden states only give T and the dtype).
  bool differentiable = true;
  // Its outputs are locals of the model's forward (LlamaModel.forward's causal_mask and rotary
  // cos/sin, passed to every layer): alive until the forward returns, not just to their last consumer.
  bool held_by_forward = false;
  // Said in the estimate's notes when this op's output goes straight into the loss (softmax before
  // nn.CrossEntropyLoss applies softmax twice); nullptr: nothing to say.
  const char* before_loss_note = nullptr;
};

void register_op(OpRule rule);  // throws std::logic_error on a duplicate kind or alias
const OpRule* find_op(std::string_view kind_or_alias);  // nullptr if unknown
const std::vector<const OpRule*>& all_ops();
std::string known_kinds();  // "input, conv2d, ..." for error messages
// The registry as JSON (`memfit ops --json`, docs/ops.json): what docs, the web help and tools read.
std::string ops_json();
std::string ops_markdown_table();  // docs/model-format.md's layer table

// Attribute readers for rules; errors name the layer's file, line and column.
i64 attr_int(const Layer& l, const char* key);
std::pair<i64, i64> attr_pair(const Layer& l, const char* key);
bool attr_bool(const Layer& l, const char* key);
double attr_real(const Layer& l, const char* key);
const Value& attr(const Layer& l, const char* key);
[[noreturn]] void fail(const Layer& l, const std::string& problem, const std::string& fix);

}  // namespace memfit

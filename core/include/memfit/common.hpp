// Shared vocabulary of the core: byte arithmetic that cannot silently overflow, dtypes, the one
// category enum used by planner, allocator model and report, phases, and the user-facing error type.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace memfit {

using i64 = std::int64_t;

// Where a model element came from, so every user-facing error can name file, line and column.
struct SourcePos {
  std::string file;
  int line = 0;    // 1-based; 0 = unknown
  int column = 0;  // 1-based; 0 = unknown
};

// The only exception type that leaves the core. Front ends print message() and exit 2 (CLI) or return
// it as a value (wasm). `layer` is empty when the error is not about one layer.
class Error : public std::runtime_error {
 public:
  Error(SourcePos pos, std::string layer, std::string problem, std::string fix);
  const SourcePos& pos() const { return pos_; }
  const std::string& layer() const { return layer_; }
  const std::string& problem() const { return problem_; }
  const std::string& fix() const { return fix_; }

 private:
  SourcePos pos_;
  std::string layer_, problem_, fix_;
};

// Checked int64 arithmetic. Overflow throws Error with the given context; byte counts never wrap.
i64 checked_add(i64 a, i64 b, std::string_view what);
i64 checked_mul(i64 a, i64 b, std::string_view what);

// Binary units for memory (the allocator and the driver think in MiB), decimal only where a vendor does.
inline constexpr i64 KiB = 1024;
inline constexpr i64 MiB = 1024 * KiB;
inline constexpr i64 GiB = 1024 * MiB;
inline constexpr i64 kB = 1000;
inline constexpr i64 MB = 1000 * kB;
inline constexpr i64 GB = 1000 * MB;

// "19.53 MiB" (binary, 2 decimals) and "20,480,000 B". Units are only produced at the edges.
std::string format_mib(i64 bytes);
std::string format_bytes_exact(i64 bytes);
std::string format_count(i64 n);  // 1,234,567

// The largest size a user may give (GPU memory, context, workspaces): 1 PiB, about 7,000 times the
// largest GPU in the catalog. Bounding every user size keeps their sums (reserved + context,
// workspace x calls) far from 2^63, so no result can wrap into a "smaller peak".
inline constexpr i64 kMaxSizeBytes = i64{1} << 50;

// Parses "8GiB", "12GB", "12000MiB", "512 KiB", "1234" (bytes). GB and GiB are different and both
// exact; fractional values ("1.5GiB") are allowed when the result is a whole number of bytes.
// Commas are refused ("1,5GiB" is ambiguous between 1.5 and 15), underscores group digits (1_000MiB).
// Throws Error (with `what` as context) on anything else, and on sizes above kMaxSizeBytes.
i64 parse_size(std::string_view text, std::string_view what);

// u8: torch.uint8, the storage of bitsandbytes' packed 4-bit weights (two 4-bit codes per byte), of
// their quantized absmax and of 8-bit optimizer states (bitsandbytes/functional.py quantize_4bit,
// optim/optimizer.py Optimizer2State.init_state).
enum class DType : std::uint8_t { f32, f16, bf16, i64, b8, u8 };
i64 dtype_size(DType t);
const char* dtype_name(DType t);
// A floating dtype as written in a model (float32/fp32/float, float16/fp16/half, bfloat16/bf16); false otherwise.
bool parse_dtype_name(const std::string& text, DType& out);  // PyTorch's names: float32, float16, bfloat16, int64, bool, uint8

// One documented category enum (after PyTorch's mem_tracker.py _MemRefType), shared by plan,
// allocator model and report.
enum class Category : std::uint8_t {
  parameter,        // model weights and biases (leaf tensors with requires_grad)
  buffer,           // module buffers: BatchNorm running stats, num_batches_tracked
  gradient,         // .grad of parameters, persistent across the step
  optimizer_state,  // momentum buffers, Adam moments, Adagrad sums
  input,            // the batch and its targets, held by the training loop
  activation,       // forward tensors: saved for backward or still in use
  activation_grad,  // gradients flowing backward through activations
  workspace,        // library workspaces through the caching allocator (cuBLAS)
  temporary,        // short-lived op temporaries (optimizer foreach results, casts in backward)
};
inline constexpr int n_categories = 9;
const char* category_name(Category c);

// Which PyTorch's autograd and optimizer code memfit follows where versions differ. v2 (default):
// PyTorch 2.x as read in its source (docs/pytorch-behaviour.md); v1_13: torch 1.13, the version of
// Debian's python3-torch that the CPU references in tests/reference/ were recorded with.
enum class TorchRules : std::uint8_t { v2, v1_13 };
const char* torch_rules_name(TorchRules r);  // "2", "1.13"

enum class Phase : std::uint8_t { setup, zero_grad, forward, loss, backward, optimizer };
inline constexpr int n_phases = 6;
const char* phase_name(Phase p);

}  // namespace memfit

// The GPU side of the verdict: a catalog of training GPUs (memory as the driver reports it, with
// sources in docs/gpu-catalog.md), memory outside the caching allocator, and workspace defaults.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "memfit/common.hpp"
#include "memfit/plan.hpp"

namespace memfit {

struct Gpu {
  std::string name;
  i64 memory_bytes = 0;      // nvidia-smi "Total" (MiB x 2^20), or the size the user gave
  i64 cuda_total_bytes = 0;  // what CUDA reports (cudaMemGetInfo / total_memory): memory_bytes minus
                             // the driver's reservation. Observed value, or the default estimate below
  bool cuda_total_observed = false;
  int cc_major = 0, cc_minor = 0;  // 0.0 = unknown (a custom size)
  std::string source;
};

// nvidia-smi's Total minus CUDA's total, where both were published for the same card: 303, 422,
// 454, 479, 556 and 763 MiB (docs/gpu-catalog.md). The median, used when a card's CUDA total is unknown.
inline constexpr i64 kDriverReservedDefaultBytes = 466 * MiB;

// The CUDA context and the kernels PyTorch loads (lazy module loading): not in memory_reserved but in
// what the GPU shows. 426 MiB observed on an RTX 6000 Ada with PyTorch 2.10+cu130; PR #86509
// measured ~287 MB lazy / ~667 MB eager; maintainers quote 300-400 MB (docs/pytorch-behaviour.md s7).
inline constexpr i64 kCudaContextDefaultBytes = 426 * MiB;

// cuBLAS workspace per (handle, stream): CublasHandlePool.cpp parseChosenWorkspaceSize default
// ":4096:2:16:8" = 4096 KiB * 2 + 16 KiB * 8, and 4096 KiB * 8 on sm_90.
inline constexpr i64 kCublasWorkspaceBytes = 4096 * KiB * 2 + 16 * KiB * 8;
inline constexpr i64 kCublasWorkspaceSm90Bytes = 4096 * KiB * 8;
// cuBLASLt workspace: CUBLASLT_WORKSPACE_SIZE default 1024 KiB (CublasHandlePool.cpp, #73328).
inline constexpr i64 kCublasLtWorkspaceBytes = 1024 * KiB;

// cuDNN convolution workspace per conv call (forward and backward), through the caching allocator.
// PyTorch's cuDNN v8 path (aten/src/ATen/native/cudnn/Conv_v8.cpp) takes the heuristics' plans and
// skips those whose workspace cannot be allocated; the size depends on cuDNN version, GPU and layer,
// and nothing has been measured for memfit yet. Default 0 (not modelled); --cudnn-workspace sets it.
inline constexpr i64 kCudnnConvWorkspaceDefaultBytes = 0;

const std::vector<Gpu>& gpu_catalog();
// A catalog name or alias ("rtx3090", "A100 80GB") or a size ("24GiB", "12GB", "12000MiB").
Gpu parse_gpu(std::string_view text);

// Workspace defaults for a GPU (unknown GPU: the non-sm_90 defaults).
Workspaces default_workspaces(const std::optional<Gpu>& gpu);

}  // namespace memfit

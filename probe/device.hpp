// The GPU as `memfit probe` sees it: a small interface, so the replay logic (replay.hpp) runs the same
// against the CUDA backend (cuda_device.cpp) and against the fake device of tests/probe_test.cpp.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "memfit/common.hpp"

namespace memfit::probe {

// What the backend measured when it opened the device (before any replay).
struct DeviceInfo {
  std::string name;
  int cc_major = 0, cc_minor = 0;
  std::string pci_bus_id;
  i64 total_bytes = 0;                      // cudaMemGetInfo total (what CUDA can hand out at most)
  i64 free_bytes = 0;                       // cudaMemGetInfo free, after the context was created
  std::optional<i64> free_before_context;   // NVML free before the context (nullopt: not measurable)
  std::optional<i64> free_after_context_nvml;  // NVML free after it (same API both sides)
  std::optional<i64> nvml_total_bytes;      // NVML total (nvidia-smi's "Total")
  std::optional<i64> context_bytes;         // free_before_context - free_after_context_nvml
  std::string context_note;                 // why the context is not measurable, when it is not
  int driver_version = 0;                   // cudaDriverGetVersion: 13000 = CUDA 13.0
  int runtime_version = 0;                  // cudaRuntimeGetVersion
};

enum class DeviceStatus { ok, out_of_memory, error };

using DeviceHandle = std::uint64_t;

class Device {
 public:
  virtual ~Device() = default;
  virtual DeviceInfo info() const = 0;
  // Free device memory now (cudaMemGetInfo); -1 when the query fails.
  virtual i64 free_memory() = 0;
  // Plain device memory (cudaMalloc, never managed memory). out_of_memory leaves no error behind.
  virtual DeviceStatus malloc(i64 bytes, DeviceHandle& handle) = 0;
  // Writes every byte (cudaMemset + synchronize) so the pages are really resident.
  virtual DeviceStatus touch(DeviceHandle handle, i64 bytes) = 0;
  virtual void free(DeviceHandle handle) = 0;
  // Text of the last error (for DeviceStatus::error).
  virtual std::string last_error() const = 0;
};

// Opening the machine's CUDA device: the device, or why there is none (exit status 3).
struct OpenResult {
  std::unique_ptr<Device> device;
  std::string why;  // set when device is null: "no NVIDIA driver ...", "no CUDA device ..."
};

// Defined by the backend linked into the `memfit` binary: cuda_device.cpp with the CUDA toolkit,
// no_cuda_device.cpp without it.
OpenResult open_cuda_device();

}  // namespace memfit::probe

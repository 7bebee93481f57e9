// The CUDA backend of `memfit probe`: the CUDA runtime API (cudart linked statically, so the binary
// starts on machines without a driver and says why it cannot probe), and NVML opened at run time with
// dlopen for the free memory before the CUDA context exists (NVML is part of the driver, not the toolkit).
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <set>
#include <string>
#include <vector>

#include "device.hpp"

namespace memfit::probe {

namespace {

// ---- NVML, declared here (nvml.h is not part of every toolkit install); stable ABI since NVML 7.
typedef struct nvmlDevice_st* nvmlDevice_t;
struct NvmlMemory {
  unsigned long long total, free, used;
};
struct NvmlPciInfo {  // nvmlPciInfo_t
  char busIdLegacy[16];
  unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
  char busId[32];
};

struct NvmlSnapshot {
  unsigned domain = 0, bus = 0, device = 0;
  i64 total = 0, free = 0;
};

class Nvml {
 public:
  Nvml() {
    lib_ = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib_) {
      why_ = "NVML (libnvidia-ml.so.1) is not available";
      return;
    }
    init_ = reinterpret_cast<int (*)()>(dlsym(lib_, "nvmlInit_v2"));
    shutdown_ = reinterpret_cast<int (*)()>(dlsym(lib_, "nvmlShutdown"));
    count_ = reinterpret_cast<int (*)(unsigned*)>(dlsym(lib_, "nvmlDeviceGetCount_v2"));
    by_index_ = reinterpret_cast<int (*)(unsigned, nvmlDevice_t*)>(dlsym(lib_, "nvmlDeviceGetHandleByIndex_v2"));
    memory_ = reinterpret_cast<int (*)(nvmlDevice_t, NvmlMemory*)>(dlsym(lib_, "nvmlDeviceGetMemoryInfo"));
    pci_ = reinterpret_cast<int (*)(nvmlDevice_t, NvmlPciInfo*)>(dlsym(lib_, "nvmlDeviceGetPciInfo_v3"));
    if (!init_ || !shutdown_ || !count_ || !by_index_ || !memory_ || !pci_) {
      why_ = "NVML lacks a needed function";
      return;
    }
    if (init_() != 0) {
      why_ = "NVML failed to initialise";
      return;
    }
    ok_ = true;
  }
  ~Nvml() {
    if (ok_) shutdown_();
    if (lib_) dlclose(lib_);
  }
  Nvml(const Nvml&) = delete;
  Nvml& operator=(const Nvml&) = delete;

  bool ok() const { return ok_; }
  const std::string& why() const { return why_; }

  std::vector<NvmlSnapshot> snapshot() const {
    std::vector<NvmlSnapshot> out;
    unsigned n = 0;
    if (!ok_ || count_(&n) != 0) return out;
    for (unsigned i = 0; i < n; ++i) {
      nvmlDevice_t d = nullptr;
      NvmlMemory m{};
      NvmlPciInfo p{};
      if (by_index_(i, &d) != 0 || memory_(d, &m) != 0 || pci_(d, &p) != 0) continue;
      out.push_back({p.domain, p.bus, p.device, static_cast<i64>(m.total), static_cast<i64>(m.free)});
    }
    return out;
  }

 private:
  void* lib_ = nullptr;
  bool ok_ = false;
  std::string why_;
  int (*init_)() = nullptr;
  int (*shutdown_)() = nullptr;
  int (*count_)(unsigned*) = nullptr;
  int (*by_index_)(unsigned, nvmlDevice_t*) = nullptr;
  int (*memory_)(nvmlDevice_t, NvmlMemory*) = nullptr;
  int (*pci_)(nvmlDevice_t, NvmlPciInfo*) = nullptr;
};

const NvmlSnapshot* find(const std::vector<NvmlSnapshot>& s, const cudaDeviceProp& p) {
  for (const auto& x : s)
    if (x.domain == static_cast<unsigned>(p.pciDomainID) && x.bus == static_cast<unsigned>(p.pciBusID) &&
        x.device == static_cast<unsigned>(p.pciDeviceID))
      return &x;
  return nullptr;
}

std::string err_text(cudaError_t e) { return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e); }

std::string version_text(int v) { return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10); }

// Why cudaGetDeviceCount (the first CUDA call) failed, in words.
std::string no_device_reason(cudaError_t e) {
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  std::string rt = "CUDA " + version_text(runtime);
  switch (e) {
    case cudaErrorNoDevice:
      return "no CUDA-capable device is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES) [" + err_text(e) + "]";
    case cudaErrorInsufficientDriver:
      if (driver == 0)
        return "no NVIDIA driver is installed (libcuda.so.1 was not found), so there is no GPU to probe [" +
               err_text(e) + "]";
      return "the NVIDIA driver is too old for this memfit's CUDA runtime: the driver supports CUDA " +
             version_text(driver) + ", memfit was built with " + rt + "; update the driver or rebuild memfit with an "
             "older CUDA toolkit [" + err_text(e) + "]";
    case cudaErrorStubLibrary:
      return "the CUDA driver library found is the toolkit's stub (lib64/stubs/libcuda.so), not a real driver: no "
             "NVIDIA driver is installed [" + err_text(e) + "]";
    case cudaErrorInitializationError:
      return "the CUDA driver failed to initialise (is the nvidia kernel module loaded and /dev/nvidia* accessible?) [" +
             err_text(e) + "]";
    case cudaErrorSystemDriverMismatch:
      return "the NVIDIA kernel module and the user-space driver have different versions (reboot or reinstall the "
             "driver) [" + err_text(e) + "]";
    case cudaErrorDevicesUnavailable:
      return "every CUDA device is busy or unavailable (exclusive-process compute mode?) [" + err_text(e) + "]";
    case cudaErrorCompatNotSupportedOnDevice:
      return "the CUDA forward-compatibility package does not support this device [" + err_text(e) + "]";
    default:
      return "CUDA could not enumerate devices [" + err_text(e) + "]";
  }
}

class CudaDevice final : public Device {
 public:
  explicit CudaDevice(DeviceInfo info) : info_(std::move(info)) {}
  ~CudaDevice() override {
    // Belt and braces: the replay frees everything it allocated; anything still here goes now.
    for (void* p : live_) cudaFree(p);
  }

  DeviceInfo info() const override { return info_; }

  i64 free_memory() override {
    size_t f = 0, t = 0;
    cudaError_t e = cudaMemGetInfo(&f, &t);
    if (e != cudaSuccess) {
      last_ = err_text(e);
      return -1;
    }
    return static_cast<i64>(f);
  }

  DeviceStatus malloc(i64 bytes, DeviceHandle& handle) override {
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, static_cast<size_t>(bytes));  // plain device memory, never managed
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear it: out-of-memory is not sticky
      last_ = err_text(e);
      return DeviceStatus::out_of_memory;
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      last_ = err_text(e);
      return DeviceStatus::error;
    }
    live_.insert(p);
    handle = reinterpret_cast<DeviceHandle>(p);
    return DeviceStatus::ok;
  }

  DeviceStatus touch(DeviceHandle handle, i64 bytes) override {
    void* p = reinterpret_cast<void*>(handle);
    cudaError_t e = cudaMemset(p, 0, static_cast<size_t>(bytes));
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    if (e != cudaSuccess) {
      cudaGetLastError();
      last_ = err_text(e);
      return DeviceStatus::error;
    }
    return DeviceStatus::ok;
  }

  void free(DeviceHandle handle) override {
    void* p = reinterpret_cast<void*>(handle);
    if (live_.erase(p)) cudaFree(p);
  }

  std::string last_error() const override { return last_; }

 private:
  DeviceInfo info_;
  std::set<void*> live_;
  std::string last_;
};

}  // namespace

OpenResult open_cuda_device() {
  // NVML first, before any CUDA call: the free memory of every GPU before this process has a context.
  Nvml nvml;
  std::vector<NvmlSnapshot> before = nvml.snapshot();

  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) return {nullptr, no_device_reason(e)};
  if (n == 0) return {nullptr, "no CUDA-capable device is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)"};

  const int dev = 0;  // the first visible device; choose another with CUDA_VISIBLE_DEVICES
  cudaDeviceProp prop{};
  e = cudaGetDeviceProperties(&prop, dev);
  if (e != cudaSuccess) return {nullptr, "cannot read the properties of device 0 [" + err_text(e) + "]"};

  DeviceInfo info;
  info.name = prop.name;
  info.cc_major = prop.major;
  info.cc_minor = prop.minor;
  char bus[32] = {};
  if (cudaDeviceGetPCIBusId(bus, sizeof bus, dev) == cudaSuccess) info.pci_bus_id = bus;
  cudaDriverGetVersion(&info.driver_version);
  cudaRuntimeGetVersion(&info.runtime_version);
  const NvmlSnapshot* b = find(before, prop);

  // The context: cudaFree(0) creates the primary context of the current device.
  e = cudaSetDevice(dev);
  if (e == cudaSuccess) e = cudaFree(nullptr);
  if (e != cudaSuccess)
    return {nullptr, "cannot create a CUDA context on " + info.name + " (device busy, out of memory or in an "
                     "exclusive compute mode?) [" + err_text(e) + "]"};
  size_t f = 0, t = 0;
  e = cudaMemGetInfo(&f, &t);
  if (e != cudaSuccess) return {nullptr, "cudaMemGetInfo failed [" + err_text(e) + "]"};
  info.free_bytes = static_cast<i64>(f);
  info.total_bytes = static_cast<i64>(t);

  if (!nvml.ok()) {
    info.context_note = nvml.why() + ", so the free memory before the context cannot be read";
  } else if (!b) {
    info.context_note = "NVML does not list this device (PCI " + info.pci_bus_id + ")";
  } else {
    std::vector<NvmlSnapshot> after = nvml.snapshot();
    const NvmlSnapshot* a = find(after, prop);
    info.free_before_context = b->free;
    info.nvml_total_bytes = b->total;
    if (a) {
      info.free_after_context_nvml = a->free;
      info.context_bytes = b->free - a->free;  // same API on both sides of the context
    } else {
      info.context_note = "NVML lost the device after the context was created";
    }
  }
  return {std::make_unique<CudaDevice>(std::move(info)), ""};
}

}  // namespace memfit::probe

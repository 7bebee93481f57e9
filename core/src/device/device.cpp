#include "memfit/device.hpp"

#include <algorithm>
#include <cctype>

namespace memfit {

namespace {
struct GpuSpec {
  const char* name;
  const char* aliases;
  i64 memory_mib;
  i64 cuda_total_bytes;
  int cc_major, cc_minor;
  const char* source;
};
constexpr GpuSpec kCatalog[] = {
#include "gpu_catalog.inc"
};

std::string squash(std::string_view s) {  // lower case, no spaces/dashes/underscores
  std::string o;
  for (char c : s)
    if (std::isalnum(static_cast<unsigned char>(c))) o += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return o;
}
}  // namespace

const std::vector<Gpu>& gpu_catalog() {
  static const std::vector<Gpu> list = [] {
    std::vector<Gpu> v;
    for (const auto& s : kCatalog) {
      Gpu g;
      g.name = s.name;
      g.memory_bytes = s.memory_mib * MiB;
      g.cuda_total_observed = s.cuda_total_bytes > 0;
      g.cuda_total_bytes = g.cuda_total_observed ? s.cuda_total_bytes : g.memory_bytes - kDriverReservedDefaultBytes;
      g.cc_major = s.cc_major;
      g.cc_minor = s.cc_minor;
      g.source = s.source;
      v.push_back(std::move(g));
    }
    return v;
  }();
  return list;
}

Gpu parse_gpu(std::string_view text) {
  std::string key = squash(text);
  for (std::size_t i = 0; i < gpu_catalog().size(); ++i) {
    const auto& spec = kCatalog[i];
    if (squash(spec.name) == key) return gpu_catalog()[i];
    std::string_view al = spec.aliases;
    std::size_t start = 0;
    while (start <= al.size()) {
      std::size_t c = al.find(',', start);
      if (squash(al.substr(start, c == std::string_view::npos ? std::string_view::npos : c - start)) == key)
        return gpu_catalog()[i];
      if (c == std::string_view::npos) break;
      start = c + 1;
    }
  }
  if (!text.empty() && std::isdigit(static_cast<unsigned char>(text[0]))) {
    Gpu g;
    g.memory_bytes = parse_size(text, "the GPU memory size");
    if (g.memory_bytes <= 0) throw Error({}, "", "GPU memory must be positive", "give e.g. --gpu 24GiB");
    // A size the user gives is taken as what CUDA can use (no driver reservation subtracted).
    g.cuda_total_bytes = g.memory_bytes;
    g.name = std::string(text);
    g.source = "size given by the user";
    return g;
  }
  throw Error({}, "", "unknown GPU '" + std::string(text) + "'",
              "run 'memfit gpus' for the catalog, or give a size such as 24GiB or 16GB");
}

Workspaces default_workspaces(const std::optional<Gpu>& gpu) {
  Workspaces w;
  bool sm90 = gpu && gpu->cc_major == 9 && gpu->cc_minor == 0;
  w.cublas_bytes = sm90 ? kCublasWorkspaceSm90Bytes : kCublasWorkspaceBytes;
  w.cublaslt_bytes = kCublasLtWorkspaceBytes;
  w.cudnn_conv_bytes = kCudnnConvWorkspaceDefaultBytes;
  return w;
}

}  // namespace memfit

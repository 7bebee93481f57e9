// The backend of a build without CUDA (MEMFIT_CUDA=OFF, or no CUDA toolkit found at configure time).
#include "device.hpp"

namespace memfit::probe {

OpenResult open_cuda_device() {
  return {nullptr,
          "this memfit was built without CUDA (MEMFIT_CUDA=OFF, or CMake found no CUDA toolkit); rebuild on a "
          "machine with the CUDA toolkit (nvcc) to use 'memfit probe'"};
}

}  // namespace memfit::probe

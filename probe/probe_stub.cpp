// Placeholder until the probe backend lands: reports that no CUDA device can be used.
#include <iostream>

#include "probe.hpp"

namespace memfit {
int run_probe_command(const Model&, const Options&, bool, bool) {
  std::cerr << "memfit probe: this build has no CUDA probe backend\n";
  return 3;
}
}  // namespace memfit

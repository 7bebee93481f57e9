// `memfit probe`: replays the estimate's allocation plan on a real CUDA device (see probe.cpp).
#pragma once

#include "memfit/estimate.hpp"

namespace memfit {

// Exit status: 0 fits, 1 does not fit, 2 bad input, 3 no usable CUDA device.
int run_probe_command(const Model& model, const Options& options, bool json, bool max_batch);

}  // namespace memfit

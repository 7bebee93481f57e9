// `memfit probe`: replays the estimate's allocation plan on a real CUDA device (replay.hpp, docs/probe.md).
#pragma once

#include <csignal>
#include <iosfwd>

#include "device.hpp"
#include "memfit/estimate.hpp"
#include "replay.hpp"

namespace memfit {

// Exit status: 0 fits, 1 does not fit, 2 bad input, 3 no usable CUDA device (no driver, driver too old,
// no device, a CUDA error, or the time limit passed: nothing could be measured), 130 interrupted.
inline constexpr int kProbeFits = 0, kProbeDoesNotFit = 1, kProbeBadInput = 2, kProbeNoDevice = 3,
                     kProbeInterrupted = 130;

struct ProbeSettings {
  bool json = false;
  bool max_batch = false;
  double time_limit_s = probe::kDefaultTimeLimitSeconds;
  i64 margin_bytes = probe::kSafetyMarginBytes;
  const volatile std::sig_atomic_t* stop = nullptr;  // set by SIGINT / SIGTERM
};

// The CLI entry: validates the model, installs the signal handlers, opens the CUDA device and runs the
// probe. Throws memfit::Error for bad input (the CLI maps it to exit 2).
int run_probe_command(const Model& model, const Options& options, bool json, bool max_batch,
                      double time_limit_s = probe::kDefaultTimeLimitSeconds);

namespace probe {
// The probe on an opened device: the replay (or the --max-batch search), printed as text or JSON on
// `out`; problems that end it early on `err`. Returns the exit status.
int run_probe(const Model& model, const Options& options, const ProbeSettings& settings, Device& device,
              std::ostream& out, std::ostream& err);
}  // namespace probe

}  // namespace memfit

// The CLI side of `memfit probe`: checks the input, installs SIGINT/SIGTERM handlers for the replay and
// opens the CUDA device (cuda_device.cpp, or no_cuda_device.cpp in a build without CUDA).
#include <cmath>
#include <signal.h>

#include <csignal>
#include <iostream>

#include "probe.hpp"

namespace memfit {

namespace {

volatile std::sig_atomic_t g_stop = 0;

extern "C" void on_stop_signal(int) { g_stop = 1; }

// Installs the handlers for the probe's lifetime and restores the previous ones. The handler only sets
// a flag; the replay checks it between allocations, stops and frees everything (RAII). A second signal
// gets the default action (SA_RESETHAND): the process ends and the driver reclaims its memory.
class StopSignals {
 public:
  StopSignals() {
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND;
    sigaction(SIGINT, &sa, &old_int_);
    sigaction(SIGTERM, &sa, &old_term_);
  }
  ~StopSignals() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  struct sigaction old_int_ {}, old_term_ {};
};

}  // namespace

int run_probe_command(const Model& model, const Options& options, bool json, bool max_batch, double time_limit_s) {
  if (!(time_limit_s > 0) || !std::isfinite(time_limit_s))
    throw Error({}, "", "the time limit must be a positive number of seconds", "e.g. --time-limit 60");
  // Bad input is found before the device is touched (the estimate throws memfit::Error: exit 2).
  (void)estimate(model, options);

  StopSignals signals;
  g_stop = 0;
  probe::OpenResult opened = probe::open_cuda_device();
  if (!opened.device) {
    std::cerr << "memfit probe: no usable CUDA device: " << opened.why << "\n";
    return kProbeNoDevice;
  }
  ProbeSettings s;
  s.json = json;
  s.max_batch = max_batch;
  s.time_limit_s = time_limit_s;
  s.stop = &g_stop;
  return probe::run_probe(model, options, s, *opened.device, std::cout, std::cerr);
}

}  // namespace memfit

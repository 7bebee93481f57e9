// `memfit probe` on an opened device: the replay or the --max-batch search, printed beside the estimate.
#include <cstdio>
#include <nlohmann/json.hpp>
#include <ostream>

#include "probe.hpp"

namespace memfit::probe {

namespace {

using ojson = nlohmann::ordered_json;

// The Gpu the estimate is computed for: this device, with the memory CUDA reports.
Gpu device_gpu(const DeviceInfo& d) {
  Gpu g;
  g.name = d.name;
  g.memory_bytes = d.nvml_total_bytes.value_or(d.total_bytes);
  g.cuda_total_bytes = d.total_bytes;
  g.cuda_total_observed = true;
  g.cc_major = d.cc_major;
  g.cc_minor = d.cc_minor;
  g.source = "measured by memfit probe";
  return g;
}

std::string signed_mib(i64 b) {
  std::string s = format_mib(b);
  if (b > 0) s.insert(s.begin(), '+');
  return s;
}

std::string cuda_version(int v) {
  if (v <= 0) return "unknown";
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

ojson opt_int(const std::optional<i64>& v) { return v ? ojson(*v) : ojson(nullptr); }

int exit_status(ReplayOutcome o) {
  switch (o) {
    case ReplayOutcome::fits: return kProbeFits;
    case ReplayOutcome::does_not_fit: return kProbeDoesNotFit;
    case ReplayOutcome::interrupted: return kProbeInterrupted;
    case ReplayOutcome::timed_out:
    case ReplayOutcome::device_error: return kProbeNoDevice;
  }
  return kProbeNoDevice;
}

std::string failure_text(const ReplayFailure& f) {
  std::string where = std::string(phase_name(f.phase));
  if (!f.layer.empty()) where += " of layer '" + f.layer + "'";
  where += f.iteration == 0 ? " (setup)" : " (iteration " + std::to_string(f.iteration) + ")";
  return "cudaMalloc of " + format_mib(f.bytes) + " (for a " + format_bytes_exact(f.request_bytes) + " tensor) in " +
         where + ", free memory then " + format_mib(f.free_bytes) + ": " + f.reason;
}

ojson failure_json(const std::optional<ReplayFailure>& f) {
  if (!f) return nullptr;
  ojson j;
  j["phase"] = phase_name(f->phase);
  j["layer"] = f->layer;
  j["bytes"] = f->bytes;
  j["free_bytes"] = f->free_bytes;
  j["iteration"] = f->iteration;
  j["request_bytes"] = f->request_bytes;
  j["reason"] = f->reason;
  return j;
}

ojson replay_json(const ReplayResult& r) {
  ojson j;
  j["ok"] = r.ok();
  j["outcome"] = outcome_name(r.outcome);
  j["batch"] = r.batch;
  j["free_before_bytes"] = r.free_before;
  j["budget_bytes"] = r.budget_bytes;
  j["min_free_bytes"] = r.min_free;
  j["peak_bytes"] = r.peak_bytes;
  j["planned_peak_bytes"] = r.planned_peak_bytes;
  j["segments"] = r.segments;
  j["planned_segments"] = r.planned_segments;
  j["frees"] = r.frees;
  j["failed"] = failure_json(r.failed);
  if (!r.error.empty()) j["error"] = r.error;
  return j;
}

void row(std::ostream& out, const std::string& what, const std::string& est, const std::string& meas,
         const std::string& diff) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "  %-30s %16s %16s %16s\n", what.c_str(), est.c_str(), meas.c_str(), diff.c_str());
  out << buf;
}

}  // namespace

int run_probe(const Model& model, const Options& options_in, const ProbeSettings& settings, Device& device,
              std::ostream& out, std::ostream& err) {
  const DeviceInfo info = device.info();
  Options options = options_in;
  const bool user_gave_gpu = options.gpu.has_value();
  options.gpu = device_gpu(info);
  options.timeline = false;

  ReplayLimits limits;
  limits.margin_bytes = settings.margin_bytes;
  limits.stop = settings.stop;
  limits.deadline = std::chrono::steady_clock::now() +
                    std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                        std::chrono::duration<double>(settings.time_limit_s));

  std::optional<ReplayMaxBatch> mb;
  ReplayResult replay;
  if (settings.max_batch) {
    mb = max_batch_by_replay(device, model, options, limits);
    if (mb->at_max) replay = *mb->at_max;
    else if (mb->above) replay = *mb->above;
    else {
      replay.batch = options.train.batch;
      replay.outcome = mb->outcome;
      replay.error = mb->error;
    }
  } else {
    Estimate e0 = estimate(model, options);
    replay = replay_plan(device, e0, limits);
  }
  Options shown = options;
  shown.train.batch = replay.batch > 0 ? replay.batch : options.train.batch;
  Estimate est = estimate(model, shown);

  int status;
  std::string problem;  // why nothing (complete) could be measured
  if (mb) {
    if (mb->outcome == ReplayOutcome::fits) status = mb->max_batch >= 1 ? kProbeFits : kProbeDoesNotFit;
    else {
      status = exit_status(mb->outcome);
      problem = mb->error;
    }
  } else {
    status = exit_status(replay.outcome);
    if (replay.outcome != ReplayOutcome::fits && replay.outcome != ReplayOutcome::does_not_fit) problem = replay.error;
  }
  if (replay.outcome == ReplayOutcome::timed_out || (mb && mb->outcome == ReplayOutcome::timed_out))
    problem += " (time limit " + std::to_string(static_cast<long long>(settings.time_limit_s)) +
               " s; --time-limit SECONDS to change it). Everything allocated was freed";
  else if (!problem.empty())
    problem += ". Everything allocated was freed";

  // Measured minus estimated allocator peak, only when the whole plan was replayed. The estimate is the
  // replayed plan's peak: the estimate's own peak, unless the allocator model had to release its cache
  // to stay within this device's budget (then the plan PyTorch would follow here peaks lower).
  const bool has_diff = replay.ok();
  const i64 planned = has_diff ? replay.planned_peak_bytes : est.peak_reserved_bytes;
  const i64 diff = replay.peak_bytes - planned;

  if (settings.json) {
    ojson j;
    ojson d;
    d["name"] = info.name;
    d["cc_major"] = info.cc_major;
    d["cc_minor"] = info.cc_minor;
    d["pci_bus_id"] = info.pci_bus_id;
    d["total_bytes"] = info.total_bytes;
    d["free_bytes"] = info.free_bytes;
    d["free_before_context_bytes"] = opt_int(info.free_before_context);
    d["nvml_total_bytes"] = opt_int(info.nvml_total_bytes);
    d["driver_version"] = info.driver_version;
    d["runtime_version"] = info.runtime_version;
    j["device"] = d;
    j["context_bytes_measured"] = opt_int(info.context_bytes);
    ojson e;
    e["model"] = est.model_name;
    e["batch"] = est.options.train.batch;
    e["peak_reserved_bytes"] = est.peak_reserved_bytes;
    e["device_bytes"] = est.device_bytes;
    e["context_bytes"] = est.options.context_bytes;
    e["fits"] = est.fits.value_or(false);
    e["replayed_plan_peak_bytes"] = planned;  // what difference_bytes compares against
    j["estimate"] = e;
    j["safety_margin_bytes"] = settings.margin_bytes;
    j["replay"] = replay_json(replay);
    j["difference_bytes"] = has_diff ? ojson(diff) : ojson(nullptr);
    if (mb) {
      ojson m;
      m["estimate"] = mb->estimate_max_batch;
      m["replay"] = mb->max_batch;
      m["replays"] = mb->n_replays;
      m["complete"] = mb->outcome == ReplayOutcome::fits;
      m["above"] = mb->above ? replay_json(*mb->above) : ojson(nullptr);
      j["max_batch"] = m;
    }
    // invalid UTF-8 in names becomes U+FFFD rather than a type_error (core/src/report/report.cpp dump)
    out << j.dump(2, ' ', false, ojson::error_handler_t::replace) << "\n";
  } else {
    out << "memfit probe: " << est.model_name << ", batch " << est.options.train.batch << " ("
        << dtype_name(est.options.train.precision) << ", " << optimizer_name(est.options.train.optimizer) << ")\n\n";
    out << "Device: " << info.name << ", compute capability " << info.cc_major << "." << info.cc_minor;
    if (!info.pci_bus_id.empty()) out << ", PCI " << info.pci_bus_id;
    out << "\n  driver supports CUDA " << cuda_version(info.driver_version) << ", runtime CUDA "
        << cuda_version(info.runtime_version) << "\n";
    out << "  total memory (CUDA)           " << format_mib(info.total_bytes);
    if (info.nvml_total_bytes) out << "  (nvidia-smi: " << format_mib(*info.nvml_total_bytes) << ")";
    out << "\n  free before the CUDA context  "
        << (info.free_before_context ? format_mib(*info.free_before_context) + " (NVML)" : "not measurable") << "\n";
    out << "  free after the CUDA context   " << format_mib(info.free_bytes) << "\n";
    out << "  CUDA context, measured        "
        << (info.context_bytes ? format_mib(*info.context_bytes) + " (this process; PyTorch's kernels add more)"
                               : "not measurable: " + info.context_note)
        << "\n";
    if (user_gave_gpu) out << "  (--gpu is ignored: the probe uses this device)\n";

    out << "\nReplay of the allocation plan at batch " << replay.batch << ": budget " << format_mib(replay.budget_bytes)
        << " = free " << format_mib(replay.free_before) << " - safety margin " << format_mib(settings.margin_bytes)
        << "\n";
    switch (replay.outcome) {
      case ReplayOutcome::fits:
        out << "  FITS: all " << replay.segments << " cudaMalloc calls succeeded and were touched";
        if (replay.frees) out << "; " << replay.frees << " cudaFree by the allocator's cache release";
        out << "; all freed\n";
        break;
      case ReplayOutcome::does_not_fit:
        out << "  DOES NOT FIT after " << replay.segments
            << " successful cudaMalloc calls; the first allocation that failed (or was not asked for):\n    "
            << failure_text(*replay.failed) << "\n";
        break;
      default:
        out << "  NOT MEASURED: " << replay.error << "\n";
    }
    out << "\n";
    row(out, "", "estimate", "measured", "difference");
    row(out, "allocator peak (reserved)", format_mib(planned),
        has_diff ? format_mib(replay.peak_bytes) : "-", has_diff ? signed_mib(diff) : "-");
    row(out, "CUDA context", format_mib(est.options.context_bytes),
        info.context_bytes ? format_mib(*info.context_bytes) : "-",
        info.context_bytes ? signed_mib(*info.context_bytes - est.options.context_bytes) : "-");
    if (replay.ok() && info.context_bytes) {
      i64 meas = replay.peak_bytes + *info.context_bytes;
      i64 planned_total = planned + est.options.context_bytes;
      row(out, "device total", format_mib(planned_total), format_mib(meas), signed_mib(meas - planned_total));
    } else {
      row(out, "device total", format_mib(planned + est.options.context_bytes), "-", "-");
    }
    if (has_diff && replay.planned_peak_bytes != est.peak_reserved_bytes)
      out << "  (the estimate peaks at " << format_mib(est.peak_reserved_bytes)
          << " reserved; within this device's budget the allocator model releases its cache (" << replay.frees
          << " cudaFree) and peaks at " << format_mib(replay.planned_peak_bytes) << ": that plan was replayed)\n";
    out << "  the estimate's verdict for this device: "
        << (est.fits.value_or(false) ? "fits" : "does not fit") << " (usable = CUDA total - context "
        << format_mib(est.options.context_bytes) << " = " << format_mib(est.usable_bytes) << ")\n";
    if (mb) {
      out << "\nLargest batch by replay: ";
      if (mb->outcome != ReplayOutcome::fits) out << "not found (" << mb->error << ")";
      else out << mb->max_batch;
      out << "; the allocator model predicted " << mb->estimate_max_batch << " for the same budget; "
          << mb->n_replays << " replays\n";
      if (mb->above && mb->above->failed)
        out << "  batch " << mb->above->batch << " does not fit: " << failure_text(*mb->above->failed) << "\n";
    }
  }
  if (!problem.empty()) err << "memfit probe: " << problem << "\n";
  return status;
}

}  // namespace memfit::probe

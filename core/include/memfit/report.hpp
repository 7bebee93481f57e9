// Front-end contract: the JSON result (identical bytes from the CLI and the WebAssembly module) and the
// human-readable text (with --explain: the arithmetic behind every number). Front ends only call these.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "memfit/estimate.hpp"

namespace memfit {

inline constexpr const char* kVersion = "0.1.0";

// A whole command's result as JSON text (2-space indent, keys in a fixed order, integers only).
// estimate: the estimate, plus remedies when a GPU is given and it does not fit.
std::string estimate_json(const Model& model, const Options& options);
std::string estimate_json(const Model& model, const Estimate& e);  // e = estimate(model, e.options)
// max-batch: the estimate at the largest batch that fits (batch 1 when none does), plus "max_batch".
std::string max_batch_json(const Model& model, const Options& options);
std::string max_batch_json(const Model& model, const Options& options, const MaxBatch& mb);  // mb = max_batch(...)
// max_batch()'s doubling stops at 2^40 (core/src/pipeline/estimate.cpp kBatchLimit): a result equal
// to it means "everything up to the cap fits", which the outputs say instead of presenting it as a limit.
inline constexpr i64 kMaxBatchSearchCap = kBatchSearchLimit;  // estimate.hpp: the search stops there
inline bool max_batch_capped(const MaxBatch& mb) { return mb.capped; }
// The model as the flat JSON form (docs/model-format.md#json), attributes resolved.
std::string model_json(const Model& model);
// max-seq: the estimate at the longest sequence that fits (T = 1 when none does), plus "max_seq",
// "max_seq_capped", "max_seq_search_cap", "max_seq_probes".
std::string max_seq_json(const SeqModelFactory& factory, const Options& options, const MaxSeq& ms);
std::string render_max_seq_text(const SeqModelFactory& factory, const Options& options, const MaxSeq& ms);
// The plan the allocator model replays, one line per event (docs/json-output.md "Events"):
//   alloc ID BYTES CATEGORY LAYER PHASE ITERATION   (LAYER "-" for none)
//   free ID
std::string events_text(const Estimate& e);
std::string gpus_json();
// Peak memory for each batch size in [1, up to] (for the memory-vs-batch chart), n_points samples.
std::string batch_sweep_json(const Model& model, const Options& options, i64 up_to, int n_points);

std::string render_text(const Model& model, const Options& options, bool explain);
std::string render_text(const Model& model, const Estimate& e, bool explain);
std::string render_max_batch_text(const Model& model, const Options& options);
std::string render_max_batch_text(const Model& model, const Options& options, const MaxBatch& mb);
std::string render_gpus_text();

// Error as JSON: {"error": {"message", "file", "line", "column", "layer", "problem", "fix"}}.
std::string error_json(const Error& e);


}  // namespace memfit

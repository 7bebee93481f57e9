// Shared by the text and JSON readers: attribute values are parsed and defaulted in one place, and the
// limits that keep a hostile model from costing unbounded time or memory are named here.
#pragma once

#include <cstddef>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>

#include "memfit/model.hpp"
#include "memfit/ops.hpp"

namespace memfit {

// JSON nesting: a model needs 4 levels (document, "layers", a layer, a size list). 64 leaves room for
// any reasonable writer and keeps every recursive step after parsing (printing a value in an error,
// destroying the document) far from the stack limit; nlohmann's dump() recurses once per level.
inline constexpr int kMaxJsonDepth = 64;
// One token after $param substitution. Real tokens are names and from= lists of a few hundred bytes;
// the cap stops `$p$p$p$p` passed down 32 block levels (4^32 bytes) at the first call that exceeds it.
inline constexpr std::size_t kMaxTokenBytes = 64 * 1024;
// A full layer name (prefixes of nested block calls included). torchvision's longest are ~40 bytes.
inline constexpr std::size_t kMaxNameBytes = 4096;
// Everything the text expansion reads and writes: substituted tokens, names and input names stored,
// names tried while resolving from=. Bounds time and memory together: kMaxLayers small layers use a
// few tens of MiB; a model that needs more is made of huge tokens, not layers.
inline constexpr std::size_t kMaxExpandedBytes = 256 * 1024 * 1024;

// What the readers hold before any layer is built, so memory stays a small multiple of the 16 MiB
// source: a stored word costs ~60 bytes (a 4-byte "a a\n" line ~30x its size), a JSON value 16-100.
// Both allow 10+ per layer at kMaxLayers; a 16 MiB flood of "a a" or [0,0,...] used ~1 GB without them.
inline constexpr std::size_t kMaxWords = 2'000'000;       // text: tokens in the file
inline constexpr std::size_t kMaxJsonValues = 4'000'000;  // JSON: values in the document

// Parses `text` as the attribute `spec` ("3x3", "3", "same", "true", "0.5"). Errors name pos + layer.
Value parse_attr_text(const AttrSpec& spec, const std::string& text, const SourcePos& pos, const std::string& layer);
// Adds every attribute the rule declares but the layer does not set; a missing required one is an error.
void fill_defaults(const OpRule& rule, Layer& layer);
// The rule's option named `key` (nullptr if none), and "a, b, c" for the error that names them.
const AttrSpec* find_attr(const OpRule& rule, std::string_view key);
std::string attr_keys(const OpRule& rule);

// A UTF-8 byte-order mark (EF BB BF) at the start is an editor's marker, not content: both readers skip it.
std::string_view strip_bom(std::string_view src);
// Offset of the first byte that does not start or continue a well-formed UTF-8 sequence (overlong
// forms, surrogates and code points over U+10FFFF are ill-formed, as in RFC 3629), or npos. Names
// and values end up in JSON output, and nlohmann refuses to write ill-formed UTF-8 (type_error 316).
std::size_t invalid_utf8_at(std::string_view s);
// The default model name comes from the file name, which the user did not write as model text and
// may be in any encoding: ill-formed bytes become '?' rather than failing the model (or its JSON).
std::string utf8_or_question_marks(std::string_view s);

// The JSON reader with the Hugging Face settings: a config.json goes to build_hf_model, a memfit model
// (with "layers") is read as parse_model_json does and refuses settings meant for a config.
Model parse_model_json_with(std::string_view src, std::string_view file, const HfOptions& hf);
// hf_config.cpp: a memfit Model from a parsed config.json; `key_pos` holds where each top-level
// field's value starts, so errors name the field's line.
Model build_hf_model(const nlohmann::json& config, const std::map<std::string, SourcePos>& key_pos,
                     std::string_view file, const HfOptions& hf);
// The same layers before the op registry checks them (kinds may not be registered yet, attributes stay
// text): for tests that read a config's layers without estimating it.
Model parse_hf_config_unresolved(std::string_view source, std::string_view file, const HfOptions& hf);

}  // namespace memfit

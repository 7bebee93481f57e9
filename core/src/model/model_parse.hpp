// Shared by the text and JSON readers: attribute values are parsed and defaulted in one place.
#pragma once

#include <string>

#include "memfit/model.hpp"
#include "memfit/ops.hpp"

namespace memfit {

// Parses `text` as the attribute `spec` ("3x3", "3", "same", "true", "0.5"). Errors name pos + layer.
Value parse_attr_text(const AttrSpec& spec, const std::string& text, const SourcePos& pos, const std::string& layer);
// Adds every attribute the rule declares but the layer does not set; a missing required one is an error.
void fill_defaults(const OpRule& rule, Layer& layer);

}  // namespace memfit

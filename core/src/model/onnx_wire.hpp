// The protobuf wire format (https://protobuf.dev/programming-guides/encoding/) as far as ONNX needs it,
// and the ONNX messages memfit reads (field numbers from onnx/onnx.proto, IR version 9). Unknown
// fields are skipped by length, never descended into, so nesting depth is fixed by this code and a
// "recursion bomb" (a graph attribute inside a graph inside ...) costs one skip.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "memfit/onnx.hpp"

namespace memfit::onnx {

// TensorProto.DataType (onnx.proto).
enum DataType : int { kFloat = 1, kUint8 = 2, kInt8 = 3, kInt32 = 6, kInt64 = 7, kBool = 9, kFloat16 = 10,
                      kDouble = 11, kBfloat16 = 16 };
// AttributeProto.AttributeType (onnx.proto).
enum AttrType : int { kAttrFloat = 1, kAttrInt = 2, kAttrString = 3, kAttrTensor = 4, kAttrGraph = 5,
                      kAttrFloats = 6, kAttrInts = 7 };

struct Tensor {
  std::string name;
  std::vector<i64> dims;
  int data_type = 0;
  bool external = false;  // data_location = EXTERNAL (1): the weights are in another file
  // The values, only for small tensors (at most kMaxValueElements): shape tensors, scalars, Clip
  // bounds. Larger ones (the weights) are skipped in the stream; `values_known` is false for them.
  bool values_known = false;
  std::vector<double> values;  // integers too (ONNX shape values fit a double's 53 bits; checked)
  i64 offset = 0;              // of the TensorProto in the file, for errors
};

struct Attribute {
  std::string name;
  int type = 0;
  i64 i = 0;
  double f = 0;
  std::string s;
  std::vector<i64> ints;
  std::vector<double> floats;
  std::optional<Tensor> t;
};

struct Node {
  std::string name, op_type, domain;
  std::vector<std::string> input, output;
  std::vector<Attribute> attribute;
  i64 offset = 0;
  const Attribute* attr(std::string_view key) const {
    for (const auto& a : attribute)
      if (a.name == key) return &a;
    return nullptr;
  }
};

struct Dim {
  bool known = false;
  i64 value = 0;
  std::string param;  // dim_param, the symbolic name ("batch", "seq"); empty: unnamed unknown
};

struct ValueInfo {
  std::string name;
  int elem_type = 0;
  bool has_shape = false;
  std::vector<Dim> dims;
};

struct Graph {
  std::vector<Node> node;
  std::vector<Tensor> initializer;
  std::vector<ValueInfo> input, output, value_info;
};

struct ModelProto {
  i64 ir_version = 0;
  std::vector<std::pair<std::string, i64>> opset_import;  // (domain, version)
  bool has_graph = false;
  Graph graph;
  i64 bytes_read = 0;  // how much of the file the reader pulled through the ByteSource
};

// Limits that bound what a hostile file can cost (each says why).
// Values kept per tensor: shape vectors and scalars have a handful; 4,096 covers any shape tensor.
inline constexpr i64 kMaxValueElements = 4096;
// A name (node, value, tensor): torch.onnx's longest are module paths of ~100 bytes.
inline constexpr i64 kMaxStringBytes = 4096;
// Rank: PyTorch tensors have at most 25 dims (c10 limits none, but ONNX Runtime's kernels 8); 64 is ample.
inline constexpr i64 kMaxRank = 64;
// Entries of one attribute list (ints/floats): pads/strides/perm have under 10.
inline constexpr i64 kMaxAttrList = 4096;
// Nodes, initializers and value infos in a graph: kMaxLayers (model.hpp) nodes, a few values each.
inline constexpr i64 kMaxGraphItems = 1'000'000;

// Reads the ModelProto from `src`. Throws Error(file, ...) on malformed or truncated input.
ModelProto read_model(ByteSource& src, const std::string& file);

}  // namespace memfit::onnx

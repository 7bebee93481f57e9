// The ONNX importer (docs/onnx.md): an .onnx file (a protobuf ModelProto) to a memfit::Model, read by a
// small hand-written protobuf wire-format reader (no libprotobuf: the WebAssembly bundle stays small).
// The reader pulls bytes from a ByteSource and skips the weights (TensorProto.raw_data) without
// reading them, so a 500 MB file costs a few KB of reads; external data files are never opened.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "memfit/common.hpp"
#include "memfit/model.hpp"

namespace memfit {

// Random access to the file's bytes. read() fills exactly n bytes at offset (0 <= offset, offset + n
// <= size()) or throws Error. The native one reads a file; the WebAssembly one calls back into JS
// (Blob.slice + FileReaderSync in the worker); tests use one over memory that counts what is read.
struct ByteSource {
  virtual ~ByteSource() = default;
  virtual i64 size() = 0;
  virtual void read(i64 offset, i64 n, char* out) = 0;
};

class MemoryByteSource : public ByteSource {
 public:
  explicit MemoryByteSource(std::string_view bytes) : bytes_(bytes) {}
  i64 size() override { return static_cast<i64>(bytes_.size()); }
  void read(i64 offset, i64 n, char* out) override;
  i64 bytes_read() const { return bytes_read_; }

 private:
  std::string_view bytes_;
  i64 bytes_read_ = 0;
};

// A file opened once and read with seeks (native front ends). Throws Error if it cannot be opened.
class FileByteSource : public ByteSource {
 public:
  explicit FileByteSource(const std::string& path);
  ~FileByteSource() override;
  FileByteSource(const FileByteSource&) = delete;
  FileByteSource& operator=(const FileByteSource&) = delete;
  i64 size() override { return size_; }
  void read(i64 offset, i64 n, char* out) override;
  i64 bytes_read() const { return bytes_read_; }

 private:
  std::string path_;
  void* file_ = nullptr;  // FILE*
  i64 size_ = 0;
  i64 bytes_read_ = 0;
};

// Values for the graph input's symbolic dimensions other than the batch (`--dim seq=128`).
using DimValues = std::map<std::string, i64>;

// Imports the model. `file` names the source in errors. Throws Error for a file that is not ONNX, is
// truncated or malformed, has a cycle, symbolic dims without a value, or nodes memfit cannot map (all
// of them listed at once). The model's notes say what the ONNX graph cannot say (Model::notes).
Model import_onnx(ByteSource& src, std::string_view file, const DimValues& dims = {});

// The file name ends in .onnx (case-insensitive).
bool has_onnx_extension(std::string_view path);
// The first bytes look like a serialized ModelProto (field 1 ir_version varint, or another ModelProto
// field's tag), and not like text or JSON: used when a file without the extension fails to parse.
bool looks_like_onnx(std::string_view head);

// "seq=128" -> {"seq", 128}; throws Error naming the option.
std::pair<std::string, i64> parse_dim_setting(std::string_view text);

}  // namespace memfit

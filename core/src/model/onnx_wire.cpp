// The protobuf wire-format reader behind the ONNX importer (onnx_wire.hpp). One cursor over the
// ByteSource with a small read-ahead window: fields memfit needs are decoded, every other field
// (and every large TensorProto.raw_data) is skipped by moving the offset, so the weights are never read.
#include "onnx_wire.hpp"

#include <cstdio>
#include <cstring>
#include <limits>

namespace memfit {

void MemoryByteSource::read(i64 offset, i64 n, char* out) {
  if (offset < 0 || n < 0 || offset > size() || n > size() - offset)
    throw Error({}, "", "read past the end of the data", "this is a bug in the ONNX reader; please report it");
  std::memcpy(out, bytes_.data() + offset, static_cast<std::size_t>(n));
  bytes_read_ += n;
}

FileByteSource::FileByteSource(const std::string& path) : path_(path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw Error({path, 0, 0}, "", "cannot open the ONNX file", "check the path and that the file is readable");
  file_ = f;
  if (std::fseek(f, 0, SEEK_END) != 0 || (size_ = static_cast<i64>(std::ftell(f))) < 0) {
    std::fclose(f);
    file_ = nullptr;
    throw Error({path, 0, 0}, "", "cannot find the size of the ONNX file (not a regular file?)", "give a regular .onnx file");
  }
}

FileByteSource::~FileByteSource() {
  if (file_) std::fclose(static_cast<std::FILE*>(file_));
}

void FileByteSource::read(i64 offset, i64 n, char* out) {
  auto* f = static_cast<std::FILE*>(file_);
  if (offset < 0 || n < 0 || offset > size_ || n > size_ - offset || std::fseek(f, static_cast<long>(offset), SEEK_SET) != 0 ||
      std::fread(out, 1, static_cast<std::size_t>(n), f) != static_cast<std::size_t>(n))
    throw Error({path_, 0, 0}, "", "reading the ONNX file failed at byte " + std::to_string(offset),
                "check that the file is not being written or truncated");
  bytes_read_ += n;
}

namespace onnx {
namespace {

// Bytes pulled per read: large enough that a graph's structure takes few reads, small enough that
// the bytes read around a skipped weight stay a few KB (tests/onnx_test.cpp counts them).
constexpr i64 kReadChunk = 4096;
// A varint is at most 10 bytes (64 bits, 7 per byte).
constexpr int kMaxVarintBytes = 10;

enum Wire : int { kVarint = 0, kFixed64 = 1, kLen = 2, kFixed32 = 5 };

class Cursor {
 public:
  Cursor(ByteSource& src, const std::string& file) : src_(src), file_(file), size_(src.size()), buf_(kReadChunk) {}
  i64 pos() const { return pos_; }
  i64 size() const { return size_; }
  i64 bytes_read() const { return bytes_read_; }

  [[noreturn]] void bad(const std::string& what, i64 at) const {
    throw Error({file_, 0, 0}, "", "not a valid ONNX file: " + what + " at byte " + std::to_string(at),
                "export the model again (torch.onnx.export), or check that the file was copied completely");
  }

  unsigned char byte(i64 end) {
    if (pos_ >= end) bad(end == size_ ? "the file ends in the middle of a field (truncated?)" : "a field runs past the end of its message", pos_);
    if (pos_ < start_ || pos_ >= start_ + len_) fill();
    return static_cast<unsigned char>(buf_[static_cast<std::size_t>(pos_++ - start_)]);
  }

  std::uint64_t varint(i64 end) {
    i64 at = pos_;
    std::uint64_t v = 0;
    for (int k = 0; k < kMaxVarintBytes; ++k) {
      unsigned char b = byte(end);
      v |= static_cast<std::uint64_t>(b & 0x7F) << (7 * k);
      if (!(b & 0x80)) return v;
    }
    bad("a varint longer than 10 bytes", at);
  }
  i64 int64(i64 end) { return static_cast<i64>(varint(end)); }  // two's complement, as protobuf's int64

  std::uint64_t fixed(int n, i64 end) {
    std::uint64_t v = 0;
    for (int k = 0; k < n; ++k) v |= static_cast<std::uint64_t>(byte(end)) << (8 * k);
    return v;
  }
  double f32(i64 end) {
    auto bits = static_cast<std::uint32_t>(fixed(4, end));
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
  double f64(i64 end) {
    std::uint64_t bits = fixed(8, end);
    double d;
    std::memcpy(&d, &bits, sizeof d);
    return d;
  }

  // A length-delimited field's length, checked against the enclosing message; returns its end.
  i64 len_end(i64 end) {
    i64 at = pos_;
    std::uint64_t n = varint(end);
    if (n > static_cast<std::uint64_t>(end - pos_))
      bad("a length of " + std::to_string(n) + " bytes that runs past " +
              (n <= static_cast<std::uint64_t>(size_ - pos_) ? "its message" : "the end of the file (truncated?)"), at);
    return pos_ + static_cast<i64>(n);
  }

  std::string string(i64 end, const char* what) {
    i64 at = pos_;
    i64 e = len_end(end);
    if (e - pos_ > kMaxStringBytes)
      bad(std::string("a ") + what + " of " + std::to_string(e - pos_) + " bytes (more than " + std::to_string(kMaxStringBytes) + ")", at);
    std::string s;
    s.reserve(static_cast<std::size_t>(e - pos_));
    while (pos_ < e) s.push_back(static_cast<char>(byte(e)));
    return s;
  }

  void skip_to(i64 e) { pos_ = e; }  // no read: the next byte() refills only if it is outside the window

  // Skips one field's value of wire type `wire`.
  void skip(int wire, i64 end, i64 tag_at) {
    switch (wire) {
      case kVarint: varint(end); return;
      case kFixed64: if (end - pos_ < 8) bad("a truncated 8-byte field", pos_); pos_ += 8; return;
      case kFixed32: if (end - pos_ < 4) bad("a truncated 4-byte field", pos_); pos_ += 4; return;
      case kLen: pos_ = len_end(end); return;
      default: bad("wire type " + std::to_string(wire) + " (protobuf groups; ONNX uses none)", tag_at);
    }
  }

 private:
  void fill() {
    i64 n = std::min(kReadChunk, size_ - pos_);
    src_.read(pos_, n, buf_.data());
    bytes_read_ += n;
    start_ = pos_;
    len_ = n;
  }

  ByteSource& src_;
  const std::string& file_;
  i64 size_ = 0, pos_ = 0, start_ = 0, len_ = 0, bytes_read_ = 0;
  std::vector<char> buf_;
};

struct Tag {
  int field = 0, wire = 0;
  i64 at = 0;
};

// Calls on_field(tag) for each field up to `end`; on_field returns false to have the field skipped.
template <class F>
void fields(Cursor& c, i64 end, F&& on_field) {
  while (c.pos() < end) {
    Tag t;
    t.at = c.pos();
    std::uint64_t key = c.varint(end);
    t.field = static_cast<int>(key >> 3);
    t.wire = static_cast<int>(key & 7);
    if (key >> 3 == 0 || key >> 3 > (1u << 29)) c.bad("field number " + std::to_string(key >> 3), t.at);
    if (!on_field(t)) c.skip(t.wire, end, t.at);
  }
  if (c.pos() != end) c.bad("a field runs past the end of its message", c.pos());
}

void expect(Cursor& c, const Tag& t, int wire, const char* what) {
  if (t.wire != wire) c.bad(std::string("the field ") + what + " has wire type " + std::to_string(t.wire), t.at);
}

// A repeated integer field: packed (one length-delimited run) or one varint per tag.
template <class Push>
void repeated_varint(Cursor& c, const Tag& t, i64 end, Push&& push) {
  if (t.wire == kVarint) {
    push(c.int64(end));
    return;
  }
  expect(c, t, kLen, "of integers");
  i64 e = c.len_end(end);
  while (c.pos() < e) push(c.int64(e));
}

template <class Push>
void repeated_fixed(Cursor& c, const Tag& t, i64 end, int width, Push&& push) {
  int single = width == 4 ? kFixed32 : kFixed64;
  if (t.wire == single) {
    push(width == 4 ? c.f32(end) : c.f64(end));
    return;
  }
  expect(c, t, kLen, "of reals");
  i64 e = c.len_end(end);
  if ((e - c.pos()) % width != 0) c.bad("a packed list whose length is not a multiple of " + std::to_string(width), c.pos());
  while (c.pos() < e) push(width == 4 ? c.f32(e) : c.f64(e));
}

void bounded_push(Cursor& c, std::size_t size, i64 limit, const char* what, i64 at) {
  if (static_cast<i64>(size) >= limit) c.bad(std::string("more than ") + std::to_string(limit) + " " + what, at);
}

// Little-endian element of raw_data.
double raw_value(const std::string& raw, std::size_t k, int type) {
  auto u = [&](int n) {
    std::uint64_t v = 0;
    for (int b = 0; b < n; ++b) v |= static_cast<std::uint64_t>(static_cast<unsigned char>(raw[k * n + b])) << (8 * b);
    return v;
  };
  switch (type) {
    case kFloat: { auto bits = static_cast<std::uint32_t>(u(4)); float f; std::memcpy(&f, &bits, 4); return f; }
    case kDouble: { std::uint64_t bits = u(8); double d; std::memcpy(&d, &bits, 8); return d; }
    case kInt64: return static_cast<double>(static_cast<i64>(u(8)));
    case kInt32: return static_cast<double>(static_cast<std::int32_t>(static_cast<std::uint32_t>(u(4))));
    case kInt8: return static_cast<double>(static_cast<std::int8_t>(static_cast<std::uint8_t>(u(1))));
    case kUint8: case kBool: return static_cast<double>(u(1));
    default: return 0;
  }
}

int raw_width(int type) {
  switch (type) {
    case kFloat: case kInt32: return 4;
    case kDouble: case kInt64: return 8;
    case kInt8: case kUint8: case kBool: return 1;
    default: return 0;  // float16/bfloat16 values are never needed as constants
  }
}

Tensor read_tensor(Cursor& c, i64 end) {
  Tensor t;
  t.offset = c.pos();
  std::string raw;
  bool raw_small = false;
  std::vector<double> typed;
  bool typed_overflow = false;
  fields(c, end, [&](const Tag& tag) {
    switch (tag.field) {
      case 1:
        repeated_varint(c, tag, end, [&](i64 d) {
          bounded_push(c, t.dims.size(), kMaxRank, "dimensions in a tensor", tag.at);
          t.dims.push_back(d);
        });
        return true;
      case 2: expect(c, tag, kVarint, "data_type"); t.data_type = static_cast<int>(c.int64(end)); return true;
      case 4:
        repeated_fixed(c, tag, end, 4, [&](double v) {
          if (typed.size() < static_cast<std::size_t>(kMaxValueElements)) typed.push_back(v);
          else typed_overflow = true;
        });
        return true;
      case 5: case 7:
        repeated_varint(c, tag, end, [&](i64 v) {
          if (typed.size() < static_cast<std::size_t>(kMaxValueElements))
            typed.push_back(static_cast<double>(tag.field == 5 ? static_cast<std::int32_t>(v) : v));
          else typed_overflow = true;
        });
        return true;
      case 10:
        repeated_fixed(c, tag, end, 8, [&](double v) {
          if (typed.size() < static_cast<std::size_t>(kMaxValueElements)) typed.push_back(v);
          else typed_overflow = true;
        });
        return true;
      case 8: expect(c, tag, kLen, "name"); t.name = c.string(end, "tensor name"); return true;
      case 9: {
        expect(c, tag, kLen, "raw_data");
        i64 e = c.len_end(end);
        // The weights: skipped without reading unless small enough to be a shape or a scalar.
        if (e - c.pos() <= kMaxValueElements * 8) {
          raw_small = true;
          while (c.pos() < e) raw.push_back(static_cast<char>(c.byte(e)));
        } else {
          c.skip_to(e);
        }
        return true;
      }
      case 14: expect(c, tag, kVarint, "data_location"); t.external = c.int64(end) == 1; return true;
      default: return false;  // segment, string_data, external_data (the location: never opened), doc_string
    }
  });
  for (i64 d : t.dims)
    if (d < 0) c.bad("tensor '" + t.name + "' has a negative dimension (" + std::to_string(d) + ")", t.offset);
  i64 numel = 1;
  bool small = true;
  for (i64 d : t.dims) {
    if (d != 0 && numel > kMaxValueElements) small = false;
    numel = d == 0 ? 0 : (numel > (std::numeric_limits<i64>::max() / d) ? std::numeric_limits<i64>::max() : numel * d);
  }
  small = small && numel <= kMaxValueElements;
  if (small && raw_small) {
    int w = raw_width(t.data_type);
    if (w > 0 && static_cast<i64>(raw.size()) == numel * w) {
      t.values_known = true;
      for (i64 k = 0; k < numel; ++k) t.values.push_back(raw_value(raw, static_cast<std::size_t>(k), t.data_type));
    }
  } else if (small && !raw_small && !t.external && !typed_overflow && static_cast<i64>(typed.size()) == numel) {
    t.values_known = true;
    t.values = std::move(typed);
  }
  return t;
}

std::vector<Dim> read_shape(Cursor& c, i64 end) {
  std::vector<Dim> dims;
  fields(c, end, [&](const Tag& tag) {
    if (tag.field != 1) return false;
    expect(c, tag, kLen, "dim");
    bounded_push(c, dims.size(), kMaxRank, "dimensions in a shape", tag.at);
    i64 e = c.len_end(end);
    Dim d;
    fields(c, e, [&](const Tag& t2) {
      if (t2.field == 1) { expect(c, t2, kVarint, "dim_value"); d.known = true; d.value = c.int64(e); return true; }
      if (t2.field == 2) { expect(c, t2, kLen, "dim_param"); d.param = c.string(e, "dim_param"); return true; }
      return false;
    });
    dims.push_back(std::move(d));
    return true;
  });
  return dims;
}

ValueInfo read_value_info(Cursor& c, i64 end) {
  ValueInfo v;
  fields(c, end, [&](const Tag& tag) {
    if (tag.field == 1) { expect(c, tag, kLen, "name"); v.name = c.string(end, "value name"); return true; }
    if (tag.field != 2) return false;
    expect(c, tag, kLen, "type");
    i64 te = c.len_end(end);
    fields(c, te, [&](const Tag& t2) {
      if (t2.field != 1) return false;  // sequence, map, optional, sparse types: not memfit's
      expect(c, t2, kLen, "tensor_type");
      i64 e = c.len_end(te);
      fields(c, e, [&](const Tag& t3) {
        if (t3.field == 1) { expect(c, t3, kVarint, "elem_type"); v.elem_type = static_cast<int>(c.int64(e)); return true; }
        if (t3.field == 2) { expect(c, t3, kLen, "shape"); i64 se = c.len_end(e); v.has_shape = true; v.dims = read_shape(c, se); return true; }
        return false;
      });
      return true;
    });
    return true;
  });
  return v;
}

Attribute read_attribute(Cursor& c, i64 end) {
  Attribute a;
  fields(c, end, [&](const Tag& tag) {
    switch (tag.field) {
      case 1: expect(c, tag, kLen, "name"); a.name = c.string(end, "attribute name"); return true;
      case 2: expect(c, tag, kFixed32, "f"); a.f = c.f32(end); return true;
      case 3: expect(c, tag, kVarint, "i"); a.i = c.int64(end); return true;
      case 4: expect(c, tag, kLen, "s"); a.s = c.string(end, "string attribute"); return true;
      case 5: { expect(c, tag, kLen, "t"); i64 e = c.len_end(end); a.t = read_tensor(c, e); return true; }
      case 7:
        repeated_fixed(c, tag, end, 4, [&](double v) {
          bounded_push(c, a.floats.size(), kMaxAttrList, "entries in an attribute", tag.at);
          a.floats.push_back(v);
        });
        return true;
      case 8:
        repeated_varint(c, tag, end, [&](i64 v) {
          bounded_push(c, a.ints.size(), kMaxAttrList, "entries in an attribute", tag.at);
          a.ints.push_back(v);
        });
        return true;
      case 20: expect(c, tag, kVarint, "type"); a.type = static_cast<int>(c.int64(end)); return true;
      default: return false;  // g, graphs (subgraphs: If/Loop bodies are unsupported ops anyway), strings, ...
    }
  });
  return a;
}

Node read_node(Cursor& c, i64 end) {
  Node n;
  n.offset = c.pos();
  fields(c, end, [&](const Tag& tag) {
    switch (tag.field) {
      case 1: case 2: {
        expect(c, tag, kLen, "input/output");
        auto& list = tag.field == 1 ? n.input : n.output;
        bounded_push(c, list.size(), kMaxAttrList, "inputs or outputs of a node", tag.at);
        list.push_back(c.string(end, "value name"));
        return true;
      }
      case 3: expect(c, tag, kLen, "name"); n.name = c.string(end, "node name"); return true;
      case 4: expect(c, tag, kLen, "op_type"); n.op_type = c.string(end, "op_type"); return true;
      case 7: expect(c, tag, kLen, "domain"); n.domain = c.string(end, "domain"); return true;
      case 5: {
        expect(c, tag, kLen, "attribute");
        bounded_push(c, n.attribute.size(), kMaxAttrList, "attributes of a node", tag.at);
        i64 e = c.len_end(end);
        n.attribute.push_back(read_attribute(c, e));
        return true;
      }
      default: return false;
    }
  });
  return n;
}

Graph read_graph(Cursor& c, i64 end) {
  Graph g;
  i64 items = 0;
  fields(c, end, [&](const Tag& tag) {
    if (tag.field != 1 && tag.field != 5 && tag.field != 11 && tag.field != 12 && tag.field != 13) return false;
    expect(c, tag, kLen, "of the graph");
    if (++items > kMaxGraphItems) c.bad("more than " + std::to_string(kMaxGraphItems) + " nodes and values in the graph", tag.at);
    i64 e = c.len_end(end);
    switch (tag.field) {
      case 1: g.node.push_back(read_node(c, e)); break;
      case 5: g.initializer.push_back(read_tensor(c, e)); break;
      case 11: g.input.push_back(read_value_info(c, e)); break;
      case 12: g.output.push_back(read_value_info(c, e)); break;
      default: g.value_info.push_back(read_value_info(c, e)); break;
    }
    return true;
  });
  return g;
}

}  // namespace

ModelProto read_model(ByteSource& src, const std::string& file) {
  Cursor c(src, file);
  ModelProto m;
  i64 end = c.size();
  if (end == 0) c.bad("the file is empty", 0);
  fields(c, end, [&](const Tag& tag) {
    switch (tag.field) {
      case 1: expect(c, tag, kVarint, "ir_version"); m.ir_version = c.int64(end); return true;
      case 7: {
        expect(c, tag, kLen, "graph");
        if (m.has_graph) c.bad("a second graph", tag.at);
        i64 e = c.len_end(end);
        m.graph = read_graph(c, e);
        m.has_graph = true;
        return true;
      }
      case 8: {
        expect(c, tag, kLen, "opset_import");
        bounded_push(c, m.opset_import.size(), kMaxAttrList, "opset imports", tag.at);
        i64 e = c.len_end(end);
        std::pair<std::string, i64> op{"", 0};
        fields(c, e, [&](const Tag& t2) {
          if (t2.field == 1) { expect(c, t2, kLen, "domain"); op.first = c.string(e, "domain"); return true; }
          if (t2.field == 2) { expect(c, t2, kVarint, "version"); op.second = c.int64(e); return true; }
          return false;
        });
        m.opset_import.push_back(op);
        return true;
      }
      default: return false;
    }
  });
  if (!m.has_graph) c.bad("no graph (ModelProto field 7)", 0);
  m.bytes_read = c.bytes_read();
  return m;
}

}  // namespace onnx
}  // namespace memfit

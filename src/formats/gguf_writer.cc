// GGUF v3 writer; see gguf.h. Every value and tensor is checked before the first byte goes
// out (validate), and a file is written whole or not at all (core/atomic_file.h).
#include "formats/gguf.h"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <string>

#include "core/atomic_file.h"
#include "formats/gguf_internal.h"

namespace qilin {

using namespace gguf_internal;

namespace {

constexpr uint32_t kWriteVersion = 3;

}  // namespace

// Where the bytes go: a memory buffer or a FILE*. A failed fwrite is remembered and reported
// once at the end; `written` advances regardless so padding loops always terminate.
struct GgufWriter::Sink {
  std::vector<uint8_t>* buf = nullptr;
  FILE* file = nullptr;
  uint64_t written = 0;
  bool failed = false;

  void put(const void* p, size_t n) {
    written += n;
    if (failed || n == 0) return;
    if (buf != nullptr) {
      const uint8_t* b = static_cast<const uint8_t*>(p);
      buf->insert(buf->end(), b, b + n);
    } else if (std::fwrite(p, 1, n, file) != n) {
      failed = true;
    }
  }
  template <typename T>
  void put_scalar(T v) {
    put(&v, sizeof(T));
  }
  void put_string(const std::string& s) {
    put_scalar<uint64_t>(s.size());
    put(s.data(), s.size());
  }
  void pad_to(uint64_t alignment) {
    static const uint8_t kZeros[256] = {};
    while (written % alignment != 0) {
      put(kZeros, std::min<uint64_t>(alignment - written % alignment, sizeof(kZeros)));
    }
  }
};

void GgufWriter::set(const std::string& key, GgufValue value) {
  for (auto& kv : kvs_) {
    if (kv.first == key) {
      kv.second = std::move(value);
      return;
    }
  }
  kvs_.emplace_back(key, std::move(value));
}

void GgufWriter::add_tensor(const std::string& name, DType type, const std::vector<int64_t>& ne,
                            const void* data, size_t size) {
  tensors_.push_back(Tensor{name, type, ne, data, size});
}

namespace {

// Checks that a value can be encoded as its declared type (integers in range, arrays uniform).
Status validate_value(const std::string& key, const GgufValue& v, int depth) {
  auto out_of_range = [&](auto value) {
    return Status::error(cat("gguf writer: key '", key, "': value ", value, " does not fit ",
                             gguf_type_name(v.type)));
  };
  switch (v.type) {
    case GgufType::UINT8:
      if (v.u > 0xff) return out_of_range(v.u);
      break;
    case GgufType::UINT16:
      if (v.u > 0xffff) return out_of_range(v.u);
      break;
    case GgufType::UINT32:
      if (v.u > 0xffffffffu) return out_of_range(v.u);
      break;
    case GgufType::BOOL:
      if (v.u > 1) return out_of_range(v.u);
      break;
    case GgufType::INT8:
      if (v.i < -128 || v.i > 127) return out_of_range(v.i);
      break;
    case GgufType::INT16:
      if (v.i < -32768 || v.i > 32767) return out_of_range(v.i);
      break;
    case GgufType::INT32:
      if (v.i < std::numeric_limits<int32_t>::min() || v.i > std::numeric_limits<int32_t>::max()) {
        return out_of_range(v.i);
      }
      break;
    case GgufType::UINT64:
    case GgufType::INT64:
    case GgufType::FLOAT32:
    case GgufType::FLOAT64:
    case GgufType::STRING:
      break;
    case GgufType::ARRAY:
      if (depth >= kMaxArrayDepth) {
        return Status::error(
            cat("gguf writer: key '", key, "': arrays nested more than ", kMaxArrayDepth, " deep"));
      }
      if (!is_known_type(static_cast<uint32_t>(v.elem_type))) {
        return Status::error(cat("gguf writer: key '", key, "': unknown array element type id ",
                                 static_cast<uint32_t>(v.elem_type)));
      }
      for (size_t k = 0; k < v.array.size(); ++k) {
        if (v.array[k].type != v.elem_type) {
          return Status::error(cat("gguf writer: key '", key, "': array element ", k, " has type ",
                                   gguf_type_name(v.array[k].type), ", the array holds ",
                                   gguf_type_name(v.elem_type)));
        }
        QILIN_TRY(validate_value(key, v.array[k], depth + 1));
      }
      break;
    default:
      return Status::error(cat("gguf writer: key '", key, "': unknown value type id ",
                               static_cast<uint32_t>(v.type)));
  }
  return Status::ok();
}

}  // namespace

Status GgufWriter::validate() const {
  if (!is_power_of_two(alignment_) || alignment_ > 0xffffffffu) {
    return Status::error(
        cat("gguf writer: alignment ", alignment_, " is not a power of two that fits UINT32"));
  }
  for (const auto& [key, value] : kvs_) {
    if (key.empty()) return Status::error("gguf writer: empty key");
    QILIN_TRY(validate_value(key, value, 0));
    if (key == "general.alignment" && (value.type != GgufType::UINT32 || value.u != alignment_)) {
      return Status::error(
          cat("gguf writer: key 'general.alignment' must be a UINT32 equal to "
              "the writer's alignment ",
              alignment_));
    }
  }
  for (size_t k = 0; k < tensors_.size(); ++k) {
    const Tensor& t = tensors_[k];
    const std::string where = cat("gguf writer: tensor '", t.name, "'");
    if (t.name.empty()) return Status::error(cat("gguf writer: tensor #", k, " has an empty name"));
    for (size_t j = 0; j < k; ++j) {
      if (tensors_[j].name == t.name) return Status::error(where + " added twice");
    }
    const DTypeInfo* info = dtype_info(static_cast<uint32_t>(t.type));
    if (info == nullptr) {
      return Status::error(cat(where, ": unknown type id ", static_cast<uint32_t>(t.type)));
    }
    if (t.ne.size() > kMaxDims) {
      return Status::error(cat(where, ": ", t.ne.size(), " dimensions, at most ", kMaxDims));
    }
    uint64_t n_elements = 1;
    for (int64_t ne : t.ne) {
      if (ne <= 0) return Status::error(cat(where, ": dimension ", ne, " must be positive"));
      if (n_elements >
          static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / static_cast<uint64_t>(ne)) {
        return Status::error(where + ": element count overflows int64");
      }
      n_elements *= static_cast<uint64_t>(ne);
    }
    const int64_t ne0 = t.ne.empty() ? 1 : t.ne[0];
    if (ne0 % info->block_size != 0) {
      return Status::error(cat(where, ": ne[0] = ", ne0, " is not a multiple of the ", info->name,
                               " block size ", info->block_size));
    }
    uint64_t expected = 0;
    if (!tensor_bytes(*info, static_cast<uint64_t>(ne0), n_elements, &expected)) {
      return Status::error(where + ": byte size overflows");
    }
    if (t.size != expected) {
      return Status::error(
          cat(where, ": ", t.size, " bytes of data given, the shape needs ", expected));
    }
    if (t.data == nullptr) return Status::error(where + ": data is null");
  }
  return Status::ok();
}

Status GgufWriter::emit(Sink& sink) const {
  const bool add_alignment_key =
      alignment_ != kDefaultAlignment && std::none_of(kvs_.begin(), kvs_.end(), [](const auto& kv) {
        return kv.first == "general.alignment";
      });

  sink.put(kMagic, 4);
  sink.put_scalar<uint32_t>(kWriteVersion);
  sink.put_scalar<uint64_t>(tensors_.size());
  sink.put_scalar<uint64_t>(kvs_.size() + (add_alignment_key ? 1 : 0));

  // Writes a value's payload (no type tag: the caller wrote it, or the array's elem_type did).
  auto put_value = [&sink](const GgufValue& v, auto&& self) -> void {
    switch (v.type) {
      case GgufType::UINT8:
        sink.put_scalar<uint8_t>(static_cast<uint8_t>(v.u));
        break;
      case GgufType::INT8:
        sink.put_scalar<int8_t>(static_cast<int8_t>(v.i));
        break;
      case GgufType::UINT16:
        sink.put_scalar<uint16_t>(static_cast<uint16_t>(v.u));
        break;
      case GgufType::INT16:
        sink.put_scalar<int16_t>(static_cast<int16_t>(v.i));
        break;
      case GgufType::UINT32:
        sink.put_scalar<uint32_t>(static_cast<uint32_t>(v.u));
        break;
      case GgufType::INT32:
        sink.put_scalar<int32_t>(static_cast<int32_t>(v.i));
        break;
      case GgufType::UINT64:
        sink.put_scalar<uint64_t>(v.u);
        break;
      case GgufType::INT64:
        sink.put_scalar<int64_t>(v.i);
        break;
      case GgufType::FLOAT32:
        sink.put_scalar<float>(static_cast<float>(v.f));
        break;
      case GgufType::FLOAT64:
        sink.put_scalar<double>(v.f);
        break;
      case GgufType::BOOL:
        sink.put_scalar<uint8_t>(v.u != 0 ? 1 : 0);
        break;
      case GgufType::STRING:
        sink.put_string(v.str);
        break;
      case GgufType::ARRAY:
        sink.put_scalar<uint32_t>(static_cast<uint32_t>(v.elem_type));
        sink.put_scalar<uint64_t>(v.array.size());
        for (const GgufValue& e : v.array) self(e, self);
        break;
    }
  };
  auto put_kv = [&](const std::string& key, const GgufValue& v) {
    sink.put_string(key);
    sink.put_scalar<uint32_t>(static_cast<uint32_t>(v.type));
    put_value(v, put_value);
  };
  for (const auto& [key, value] : kvs_) put_kv(key, value);
  if (add_alignment_key) {
    put_kv("general.alignment", GgufValue::of_u32(static_cast<uint32_t>(alignment_)));
  }

  // Tensor infos; each tensor's data starts at an aligned offset within the data section.
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    sink.put_string(t.name);
    sink.put_scalar<uint32_t>(static_cast<uint32_t>(t.ne.size()));
    for (int64_t ne : t.ne) sink.put_scalar<uint64_t>(static_cast<uint64_t>(ne));
    sink.put_scalar<uint32_t>(static_cast<uint32_t>(t.type));
    sink.put_scalar<uint64_t>(offset);
    offset = align_up(offset + t.size, alignment_);
  }
  sink.pad_to(alignment_);

  // NOTE: the last tensor is padded too, so the file size is a multiple of the alignment.
  const uint64_t data_start = sink.written;
  for (const Tensor& t : tensors_) {
    sink.put(t.data, t.size);
    sink.pad_to(alignment_);
  }
  if (sink.written - data_start != offset) {
    return Status::error("gguf writer: internal error: data section size mismatch");
  }
  return Status::ok();
}

Result<std::vector<uint8_t>> GgufWriter::serialize() const {
  QILIN_TRY(validate());
  std::vector<uint8_t> bytes;
  Sink sink;
  sink.buf = &bytes;
  QILIN_TRY(emit(sink));
  return bytes;
}

Status GgufWriter::write(const std::string& path) const {
  QILIN_TRY(validate());
  // Whole or nothing: a failure or a kill leaves neither a partial file nor a temp file.
  AtomicFile out;
  if (Status st = out.open(path); !st.is_ok()) return Status::error("gguf writer: " + st.message());
  Sink sink;
  sink.file = out.stream();
  QILIN_TRY(emit(sink));  // out's destructor discards the data on an error
  if (Status st = out.commit(!sink.failed); !st.is_ok()) {
    return Status::error("gguf writer: " + st.message());
  }
  return Status::ok();
}

}  // namespace qilin

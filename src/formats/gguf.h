// GGUF v3 reader and writer. The reader memory-maps the file and checks every count, offset and
// size against the file before use: a hostile file yields a Status naming the problem, never a
// crash, an out-of-bounds read or a huge allocation. Tensor data stays in the mapping (zero-copy).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "qilin/status.h"

namespace qilin {

// On-disk metadata value types (GGUF spec numbering).
enum class GgufType : uint32_t {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
};
const char* gguf_type_name(GgufType t);

// One metadata value. Scalars live in the union-like fields; arrays hold their elements
// (which may themselves be arrays) in `array`, all of type `elem_type`.
struct GgufValue {
  GgufType type = GgufType::UINT8;
  uint64_t u = 0;  // UINT*, BOOL
  int64_t i = 0;   // INT*
  double f = 0;    // FLOAT*
  std::string str;                // STRING
  GgufType elem_type = GgufType::UINT8;  // ARRAY
  std::vector<GgufValue> array;   // ARRAY

  static GgufValue of_u32(uint32_t v);
  static GgufValue of_i32(int32_t v);
  static GgufValue of_u64(uint64_t v);
  static GgufValue of_f32(float v);
  static GgufValue of_bool(bool v);
  static GgufValue of_string(std::string v);
  static GgufValue of_array(GgufType elem_type, std::vector<GgufValue> elems);
  static GgufValue of_strings(const std::vector<std::string>& v);
};

struct GgufTensorInfo {
  std::string name;
  int n_dims = 0;
  int64_t ne[4] = {1, 1, 1, 1};  // ne[0] is the contiguous (row) dimension, as in ggml
  DType type = DType::F32;
  uint64_t offset = 0;           // relative to the start of the data section
  uint64_t size = 0;             // bytes
  const uint8_t* data = nullptr; // into the mapping
  int64_t n_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
};

class GgufFile {
 public:
  // Maps and validates `path`. Errors name the file, the field and the offending value.
  static Result<std::unique_ptr<GgufFile>> open(const std::string& path);
  // Same checks on a buffer the caller keeps alive (used by tests and fuzzing).
  static Result<std::unique_ptr<GgufFile>> parse(const uint8_t* data, size_t size,
                                                 const std::string& name = "<memory>");
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::string& path() const { return path_; }

  // Metadata, in file order.
  const std::vector<std::pair<std::string, GgufValue>>& kvs() const { return kvs_; }
  const GgufValue* find(const std::string& key) const;

  // Typed getters: an error names the key and says what was found (missing / wrong type).
  // Integer getters accept any integer type whose value fits.
  Result<uint64_t> get_uint(const std::string& key) const;
  Result<int64_t> get_int(const std::string& key) const;
  Result<double> get_float(const std::string& key) const;  // FLOAT32/FLOAT64 (and ints)
  Result<bool> get_bool(const std::string& key) const;
  Result<std::string> get_string(const std::string& key) const;
  // An ARRAY of the given element type.
  Result<const GgufValue*> get_array(const std::string& key, GgufType elem_type) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }

  // Copies all tensor data into anonymous memory (asking for transparent huge pages) and
  // points the tensor infos there; the file mapping is released. For machines where
  // streaming weights through 4 KiB file pages costs bandwidth (llama.cpp's --no-mmap).
  // Call before taking pointers to tensor data.
  Status load_into_memory();
  // True once load_into_memory() has moved the tensor data out of the file mapping.
  bool in_memory() const { return heap_ != nullptr; }
  // Bytes from the first tensor's data to the end of the last one (what load_into_memory copies).
  size_t tensor_span_bytes() const;
  const GgufTensorInfo* find_tensor(const std::string& name) const;

  // The one tensor-type check every loader (model, LoRA adapter, checkpoint, quantize) makes
  // before it reads a tensor's values: the type must be one Qilin can dequantize. The error
  // names the file, the tensor and its type. `reader` says who reads it ("qilin quantize").
  Status check_readable(const GgufTensorInfo& t, const char* reader = "Qilin") const;
  // The tensor's values as F32 (dequantized row by row), after check_readable.
  Result<std::vector<float>> read_f32(const GgufTensorInfo& t, const char* reader = "Qilin") const;

 private:
  GgufFile() = default;
  // Reads and validates the whole header from [data, data + size); fills this object.
  Status parse_into(const uint8_t* data, size_t size);
  std::string path_;
  void* map_ = nullptr;  // owned mapping (null when parsing a caller's buffer)
  size_t map_size_ = 0;
  void* heap_ = nullptr;  // anonymous copy of the tensor data (load_into_memory)
  size_t heap_size_ = 0;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::vector<std::pair<std::string, GgufValue>> kvs_;
  std::map<std::string, size_t> kv_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

// Writes GGUF v3. Tensor data is copied at write() time from the pointers given to
// add_tensor, which must stay valid until then. write() goes to a temp file and renames it,
// so a failed write never leaves a half-written file at `path`.
// NOTE: `general.alignment` is written (as UINT32, after the caller's keys) only when the
// alignment is not the default 32, as readers assume 32 when it is absent. A caller may set
// the key itself; it must then be a UINT32 equal to the writer's alignment.
class GgufWriter {
 public:
  explicit GgufWriter(uint64_t alignment = 32) : alignment_(alignment) {}
  void set(const std::string& key, GgufValue value);  // replaces an existing key
  // ne has n_dims entries; ne[0] is the row dimension.
  void add_tensor(const std::string& name, DType type, const std::vector<int64_t>& ne,
                  const void* data, size_t size);
  Status write(const std::string& path) const;
  // The same bytes as write() would produce, in memory (tests, small files).
  Result<std::vector<uint8_t>> serialize() const;

 private:
  struct Sink;
  Status validate() const;
  Status emit(Sink& sink) const;
  struct Tensor {
    std::string name;
    DType type;
    std::vector<int64_t> ne;
    const void* data;
    size_t size;
  };
  uint64_t alignment_;
  std::vector<std::pair<std::string, GgufValue>> kvs_;
  std::vector<Tensor> tensors_;
};

}  // namespace qilin

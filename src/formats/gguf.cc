// GGUF v3 (and v2, same layout) reader and v3 writer; see gguf.h. The reader never trusts a
// count, offset or size from the file: each is checked against the bytes that remain before it
// is used, so a hostile file costs at most a bounded allocation and yields a Status.
#include "formats/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <sstream>
#include <string_view>

#include "core/atomic_file.h"
#include "core/printable.h"
#include "cpu/quants.h"

namespace qilin {

// GGUF is little-endian on disk and the reader copies scalars straight from the file.
static_assert(std::endian::native == std::endian::little,
              "Qilin's GGUF code assumes little-endian");

namespace {

constexpr uint8_t kMagic[4] = {'G', 'G', 'U', 'F'};
constexpr uint32_t kWriteVersion = 3;
constexpr uint64_t kDefaultAlignment = 32;
constexpr uint32_t kMaxDims = 4;
// Arrays may nest (the spec allows it; real models never do). The limit bounds recursion.
constexpr int kMaxArrayDepth = 8;
// Every metadata element becomes a GgufValue (about 100 bytes), so a u8 array costs about 100x
// its size on disk. The header's memory (values, strings, keys, tensor infos, indexes) is
// charged against a budget of a floor plus a multiple of the file's size: a real model's
// metadata is a small part of its file, and even a vocabulary-only file (strings and INT32
// token types, ~8x on disk) fits, while a hostile file costs at most ~8x its size plus 64 MiB
// (a 16.5 MB u8 array once cost 1.8 GB).
constexpr uint64_t kMetadataBudgetFloor = uint64_t{64} << 20;
constexpr uint64_t kMetadataBudgetPerFileByte = 8;
// Real models carry a few dozen keys; each key also costs an index entry.
constexpr uint64_t kMaxKvCount = uint64_t{1} << 16;
// What one index entry (a std::map node) costs beside its key, for the budget.
constexpr uint64_t kIndexEntryBytes = 64;
// Smallest possible encodings, used to reject counts before anything is allocated.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;              // key length, value type, 1-byte value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 4 + 8;  // name length, n_dims, type, offset

template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

// Names taken from the file are clipped to this many bytes in messages (and escaped).
constexpr size_t kNameClip = 80;

uint64_t align_up(uint64_t x, uint64_t alignment) {
  return (x + alignment - 1) / alignment * alignment;
}

bool is_power_of_two(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

bool is_known_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::FLOAT64); }

// Fewest bytes one element of type t can take on disk (an array: its element type and count).
uint64_t min_encoded_bytes(GgufType t) {
  switch (t) {
    case GgufType::UINT8:
    case GgufType::INT8:
    case GgufType::BOOL:
      return 1;
    case GgufType::UINT16:
    case GgufType::INT16:
      return 2;
    case GgufType::UINT32:
    case GgufType::INT32:
    case GgufType::FLOAT32:
      return 4;
    case GgufType::UINT64:
    case GgufType::INT64:
    case GgufType::FLOAT64:
    case GgufType::STRING:
      return 8;
    case GgufType::ARRAY:
      return 4 + 8;
  }
  return 1;
}

bool is_int_type(GgufType t) {
  switch (t) {
    case GgufType::UINT8:
    case GgufType::INT8:
    case GgufType::UINT16:
    case GgufType::INT16:
    case GgufType::UINT32:
    case GgufType::INT32:
    case GgufType::UINT64:
    case GgufType::INT64:
      return true;
    default:
      return false;
  }
}

bool is_signed_type(GgufType t) {
  return t == GgufType::INT8 || t == GgufType::INT16 || t == GgufType::INT32 ||
         t == GgufType::INT64;
}

// Bounds-checked cursor over the file. Errors read "gguf: FILE: CONTEXT: WHAT"; the context
// names the key or tensor being read, and every "not enough bytes" error says "end of the file".
struct Reader {
  const uint8_t* data = nullptr;
  size_t size = 0;
  std::string file;
  size_t pos = 0;
  std::string context;
  uint64_t budget_used = 0;  // bytes of memory the parsed header costs so far
  uint64_t budget = 0;       // at most this many

  size_t left() const { return size - pos; }

  // Charges `bytes` of memory against the header's budget; `what` names what would take them.
  Status charge(uint64_t bytes, const std::string& what) {
    if (bytes > budget - budget_used) {
      return fail(cat(what, " would bring the header's memory to more than ", budget,
                      " bytes, the limit for a file of ", size, " bytes (", kMetadataBudgetFloor,
                      " + ", kMetadataBudgetPerFileByte, " per file byte)"));
    }
    budget_used += bytes;
    return Status::ok();
  }

  Status fail(const std::string& what) const {
    if (context.empty()) return Status::error(cat("gguf: ", file, ": ", what));
    return Status::error(cat("gguf: ", file, ": ", context, ": ", what));
  }

  Status read_bytes(void* out, size_t n, const char* what) {
    if (n > left()) {
      return fail(cat(what, " at offset ", pos, " runs past the end of the file (needs ", n,
                      " bytes, ", left(), " left)"));
    }
    std::memcpy(out, data + pos, n);
    pos += n;
    return Status::ok();
  }

  template <typename T>
  Status read(T* out, const char* what) {
    return read_bytes(out, sizeof(T), what);
  }

  Status read_string(std::string* out, const char* what) {
    const size_t start = pos;
    uint64_t len = 0;
    QILIN_TRY(read(&len, what));
    if (len > left()) {
      return fail(cat(what, ": string length ", len, " at offset ", start,
                      " runs past the end of the file (", left(), " bytes left)"));
    }
    QILIN_TRY(charge(len, cat(what, " of ", len, " bytes at offset ", start)));
    out->assign(reinterpret_cast<const char*>(data + pos), len);
    pos += len;
    return Status::ok();
  }
};

// Reads one value of a type already known to be valid. depth counts enclosing arrays.
Status read_value(Reader& r, GgufType type, GgufValue* v, int depth) {
  v->type = type;
  switch (type) {
    case GgufType::UINT8: {
      uint8_t x = 0;
      QILIN_TRY(r.read(&x, "UINT8 value"));
      v->u = x;
      return Status::ok();
    }
    case GgufType::INT8: {
      int8_t x = 0;
      QILIN_TRY(r.read(&x, "INT8 value"));
      v->i = x;
      return Status::ok();
    }
    case GgufType::UINT16: {
      uint16_t x = 0;
      QILIN_TRY(r.read(&x, "UINT16 value"));
      v->u = x;
      return Status::ok();
    }
    case GgufType::INT16: {
      int16_t x = 0;
      QILIN_TRY(r.read(&x, "INT16 value"));
      v->i = x;
      return Status::ok();
    }
    case GgufType::UINT32: {
      uint32_t x = 0;
      QILIN_TRY(r.read(&x, "UINT32 value"));
      v->u = x;
      return Status::ok();
    }
    case GgufType::INT32: {
      int32_t x = 0;
      QILIN_TRY(r.read(&x, "INT32 value"));
      v->i = x;
      return Status::ok();
    }
    case GgufType::UINT64:
      return r.read(&v->u, "UINT64 value");
    case GgufType::INT64:
      return r.read(&v->i, "INT64 value");
    case GgufType::FLOAT32: {
      float x = 0;
      QILIN_TRY(r.read(&x, "FLOAT32 value"));
      v->f = x;
      return Status::ok();
    }
    case GgufType::FLOAT64:
      return r.read(&v->f, "FLOAT64 value");
    case GgufType::BOOL: {
      const size_t at = r.pos;
      uint8_t x = 0;
      QILIN_TRY(r.read(&x, "BOOL value"));
      if (x > 1) return r.fail(cat("BOOL value ", int{x}, " at offset ", at, " is not 0 or 1"));
      v->u = x;
      return Status::ok();
    }
    case GgufType::STRING:
      return r.read_string(&v->str, "STRING value");
    case GgufType::ARRAY: {
      if (depth >= kMaxArrayDepth) {
        return r.fail(cat("arrays nested more than ", kMaxArrayDepth, " deep at offset ", r.pos));
      }
      const size_t at = r.pos;
      uint32_t elem_type = 0;
      QILIN_TRY(r.read(&elem_type, "array element type"));
      if (!is_known_type(elem_type)) {
        return r.fail(cat("unknown array element type id ", elem_type, " at offset ", at));
      }
      v->elem_type = static_cast<GgufType>(elem_type);
      uint64_t count = 0;
      QILIN_TRY(r.read(&count, "array count"));
      // NOTE: checked before the resize below, so a hostile count cannot allocate.
      const uint64_t min_bytes = min_encoded_bytes(v->elem_type);
      if (count > r.left() / min_bytes) {
        return r.fail(cat("array count ", count, " of ", gguf_type_name(v->elem_type),
                          " (at least ", min_bytes, " bytes each) runs past the end of the file (",
                          r.left(), " bytes left)"));
      }
      // count <= file size, so this cannot overflow.
      QILIN_TRY(r.charge(count * sizeof(GgufValue),
                         cat("array of ", count, " ", gguf_type_name(v->elem_type), " at offset ",
                             at)));
      v->array.resize(count);
      for (uint64_t k = 0; k < count; ++k) {
        QILIN_TRY(read_value(r, v->elem_type, &v->array[k], depth + 1));
      }
      return Status::ok();
    }
  }
  return r.fail(cat("unknown value type id ", static_cast<uint32_t>(type)));
}

Status key_error(const std::string& path, const std::string& key, const std::string& what) {
  return Status::error(cat("gguf: key '", key, "' ", what, " (in ", path, ")"));
}

Status wrong_type(const std::string& path, const std::string& key, const GgufValue& v,
                  const char* expected) {
  std::string found = gguf_type_name(v.type);
  if (v.type == GgufType::ARRAY) found += cat(" of ", gguf_type_name(v.elem_type));
  return key_error(path, key, cat("has type ", found, ", expected ", expected));
}

}  // namespace

const char* gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::UINT8:
      return "UINT8";
    case GgufType::INT8:
      return "INT8";
    case GgufType::UINT16:
      return "UINT16";
    case GgufType::INT16:
      return "INT16";
    case GgufType::UINT32:
      return "UINT32";
    case GgufType::INT32:
      return "INT32";
    case GgufType::FLOAT32:
      return "FLOAT32";
    case GgufType::BOOL:
      return "BOOL";
    case GgufType::STRING:
      return "STRING";
    case GgufType::ARRAY:
      return "ARRAY";
    case GgufType::UINT64:
      return "UINT64";
    case GgufType::INT64:
      return "INT64";
    case GgufType::FLOAT64:
      return "FLOAT64";
  }
  return "UNKNOWN";
}

// ---- GgufValue factories ----

GgufValue GgufValue::of_u32(uint32_t v) {
  GgufValue x;
  x.type = GgufType::UINT32;
  x.u = v;
  return x;
}
GgufValue GgufValue::of_i32(int32_t v) {
  GgufValue x;
  x.type = GgufType::INT32;
  x.i = v;
  return x;
}
GgufValue GgufValue::of_u64(uint64_t v) {
  GgufValue x;
  x.type = GgufType::UINT64;
  x.u = v;
  return x;
}
GgufValue GgufValue::of_f32(float v) {
  GgufValue x;
  x.type = GgufType::FLOAT32;
  x.f = v;
  return x;
}
GgufValue GgufValue::of_bool(bool v) {
  GgufValue x;
  x.type = GgufType::BOOL;
  x.u = v ? 1 : 0;
  return x;
}
GgufValue GgufValue::of_string(std::string v) {
  GgufValue x;
  x.type = GgufType::STRING;
  x.str = std::move(v);
  return x;
}
GgufValue GgufValue::of_array(GgufType elem_type, std::vector<GgufValue> elems) {
  GgufValue x;
  x.type = GgufType::ARRAY;
  x.elem_type = elem_type;
  x.array = std::move(elems);
  return x;
}
GgufValue GgufValue::of_strings(const std::vector<std::string>& v) {
  std::vector<GgufValue> elems;
  elems.reserve(v.size());
  for (const std::string& s : v) elems.push_back(of_string(s));
  return of_array(GgufType::STRING, std::move(elems));
}

// ---- Reader ----

GgufFile::~GgufFile() {
  if (map_ != nullptr) munmap(map_, map_size_);
  if (heap_ != nullptr) munmap(heap_, heap_size_);
}

size_t GgufFile::tensor_span_bytes() const {
  if (tensors_.empty()) return 0;
  const uint8_t* lo = tensors_[0].data;
  const uint8_t* hi = tensors_[0].data + tensors_[0].size;
  for (const GgufTensorInfo& t : tensors_) {
    lo = std::min(lo, t.data);
    hi = std::max(hi, t.data + t.size);
  }
  return static_cast<size_t>(hi - lo);
}

Status GgufFile::load_into_memory() {
  if (tensors_.empty() || heap_ != nullptr) return Status::ok();
  const uint8_t* lo = tensors_[0].data;
  const uint8_t* hi = tensors_[0].data + tensors_[0].size;
  for (const GgufTensorInfo& t : tensors_) {
    lo = std::min(lo, t.data);
    hi = std::max(hi, t.data + t.size);
  }
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t size = (static_cast<size_t>(hi - lo) + kHuge - 1) / kHuge * kHuge;
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return Status::error(cat("gguf: ", path_, ": cannot allocate ", size, " bytes for the weights"));
  }
  madvise(p, size, MADV_HUGEPAGE);  // a hint: without THP support it is plain memory
  std::memcpy(p, lo, static_cast<size_t>(hi - lo));
  auto* base = static_cast<uint8_t*>(p);
  for (GgufTensorInfo& t : tensors_) t.data = base + (t.data - lo);
  heap_ = p;
  heap_size_ = size;
  if (map_ != nullptr) {  // metadata strings were copied at parse time; tensors now point here
    munmap(map_, map_size_);
    map_ = nullptr;
  }
  return Status::ok();
}

Result<std::unique_ptr<GgufFile>> GgufFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::error(cat("gguf: ", path, ": cannot open: ", std::strerror(errno)));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return Status::error(cat("gguf: ", path, ": cannot stat: ", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::error(cat("gguf: ", path, ": not a regular file"));
  }
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = path;
  const size_t size = static_cast<size_t>(st.st_size);
  // mmap refuses length 0; an empty file then fails in parse_into like any truncated one.
  if (size > 0) {
    void* m = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return Status::error(
          cat("gguf: ", path, ": cannot map ", size, " bytes: ", std::strerror(err)));
    }
    f->map_ = m;
    f->map_size_ = size;
  }
  ::close(fd);  // the mapping keeps the file's pages reachable
  QILIN_TRY(f->parse_into(static_cast<const uint8_t*>(f->map_), size));
  return Result<std::unique_ptr<GgufFile>>(std::move(f));
}

Result<std::unique_ptr<GgufFile>> GgufFile::parse(const uint8_t* data, size_t size,
                                                  const std::string& name) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = name;
  QILIN_TRY(f->parse_into(data, size));
  return Result<std::unique_ptr<GgufFile>>(std::move(f));
}

Status GgufFile::parse_into(const uint8_t* data, size_t size) {
  Reader r;
  r.data = data;
  r.size = size;
  r.file = path_;
  r.budget = kMetadataBudgetFloor + kMetadataBudgetPerFileByte * static_cast<uint64_t>(size);

  // ---- header ----
  uint8_t magic[4];
  QILIN_TRY(r.read_bytes(magic, 4, "magic"));
  if (std::memcmp(magic, kMagic, 4) != 0) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "bad magic %02x %02x %02x %02x, expected 'GGUF'", magic[0],
                  magic[1], magic[2], magic[3]);
    return r.fail(buf);
  }
  QILIN_TRY(r.read(&version_, "version"));
  if (version_ != 2 && version_ != 3) {
    std::string why = cat("unsupported GGUF version ", version_, " (Qilin reads versions 2 and 3)");
    if (version_ == 1) why += "; version 1 used 32-bit counts, convert the file with a newer tool";
    const uint32_t swapped = __builtin_bswap32(version_);
    if (swapped == 2 || swapped == 3) why += "; the file looks big-endian, which is not supported";
    return r.fail(why);
  }
  uint64_t n_tensors = 0;
  uint64_t n_kv = 0;
  QILIN_TRY(r.read(&n_tensors, "tensor count"));
  QILIN_TRY(r.read(&n_kv, "KV count"));
  // Both sections follow: reject counts the remaining bytes cannot hold before looping.
  if (n_tensors > r.left() / kMinTensorInfoBytes) {
    return r.fail(cat("tensor count ", n_tensors, " is too large: each tensor info needs at least ",
                      kMinTensorInfoBytes, " bytes and ", r.left(),
                      " remain before the end of the file"));
  }
  if (n_kv > r.left() / kMinKvBytes) {
    return r.fail(cat("KV count ", n_kv, " is too large: each KV needs at least ", kMinKvBytes,
                      " bytes and ", r.left(), " remain before the end of the file"));
  }
  if (n_tensors * kMinTensorInfoBytes + n_kv * kMinKvBytes > r.left()) {
    return r.fail(cat("tensor count ", n_tensors, " and KV count ", n_kv,
                      " need more bytes than the ", r.left(),
                      " that remain before the end of the file"));
  }

  if (n_kv > kMaxKvCount) {
    return r.fail(cat("KV count ", n_kv, " exceeds the limit of ", kMaxKvCount, " metadata keys"));
  }

  // ---- metadata ----
  for (uint64_t k = 0; k < n_kv; ++k) {
    r.context = cat("KV #", k);
    std::string key;
    QILIN_TRY(r.read_string(&key, "key"));
    r.context = cat("key '", printable(key, kNameClip), "'");
    if (kv_index_.count(key) != 0) {
      return r.fail(cat("appears twice (KV #", kv_index_[key], " and #", k, ")"));
    }
    // The key's second copy in the index, the entry and the node.
    QILIN_TRY(r.charge(key.size() + sizeof(GgufValue) + kIndexEntryBytes + sizeof(key), "the key"));
    const size_t at = r.pos;
    uint32_t type = 0;
    QILIN_TRY(r.read(&type, "value type"));
    if (!is_known_type(type)) return r.fail(cat("unknown value type id ", type, " at offset ", at));
    GgufValue value;
    QILIN_TRY(read_value(r, static_cast<GgufType>(type), &value, 0));
    kv_index_[key] = kvs_.size();
    kvs_.emplace_back(std::move(key), std::move(value));
  }
  r.context.clear();

  alignment_ = kDefaultAlignment;
  if (const GgufValue* a = find("general.alignment")) {
    if (a->type != GgufType::UINT32) {
      return r.fail(
          cat("key 'general.alignment' has type ", gguf_type_name(a->type), ", expected UINT32"));
    }
    if (!is_power_of_two(a->u)) {
      return r.fail(cat("key 'general.alignment' value ", a->u, " is not a nonzero power of two"));
    }
    alignment_ = a->u;
  }

  // ---- tensor infos ----
  tensors_.reserve(n_tensors);  // bounded above by file size / kMinTensorInfoBytes
  for (uint64_t k = 0; k < n_tensors; ++k) {
    r.context = cat("tensor #", k);
    GgufTensorInfo t;
    QILIN_TRY(r.read_string(&t.name, "name"));
    if (t.name.empty()) return r.fail("empty tensor name");
    r.context = cat("tensor '", printable(t.name, kNameClip), "'");
    if (tensor_index_.count(t.name) != 0) {
      return r.fail(cat("appears twice (tensor #", tensor_index_[t.name], " and #", k, ")"));
    }
    QILIN_TRY(r.charge(t.name.size() + sizeof(GgufTensorInfo) + kIndexEntryBytes, "the tensor info"));
    uint32_t n_dims = 0;
    QILIN_TRY(r.read(&n_dims, "n_dims"));
    if (n_dims > kMaxDims)
      return r.fail(cat("n_dims ", n_dims, " exceeds the maximum of ", kMaxDims));
    t.n_dims = static_cast<int>(n_dims);
    uint64_t n_elements = 1;  // stays <= INT64_MAX
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t ne = 0;
      QILIN_TRY(r.read(&ne, "dimension"));
      if (ne == 0 || ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return r.fail(
            cat("dimension ne[", d, "] is ", static_cast<int64_t>(ne), ", must be positive"));
      }
      if (n_elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / ne) {
        return r.fail(cat("element count overflows int64 at dimension ne[", d, "] = ", ne));
      }
      n_elements *= ne;
      t.ne[d] = static_cast<int64_t>(ne);
    }
    const size_t type_at = r.pos;
    uint32_t type_id = 0;
    QILIN_TRY(r.read(&type_id, "type"));
    const DTypeInfo* info = dtype_info(type_id);
    if (info == nullptr) {
      return r.fail(cat("unknown tensor type id ", type_id, " at offset ", type_at));
    }
    t.type = info->type;
    if (t.ne[0] % info->block_size != 0) {
      return r.fail(cat("row length ne[0] = ", t.ne[0], " is not a multiple of the ", info->name,
                        " block size ", info->block_size));
    }
    // ne[0] is a multiple of the block size, so the element count is too.
    if (!tensor_bytes(*info, static_cast<uint64_t>(t.ne[0]), n_elements, &t.size)) {
      return r.fail(cat("byte size of ", n_elements, " ", info->name, " elements overflows"));
    }
    QILIN_TRY(r.read(&t.offset, "data offset"));
    if (t.offset % alignment_ != 0) {
      return r.fail(
          cat("data offset ", t.offset, " is not a multiple of the alignment ", alignment_));
    }
    tensor_index_[t.name] = tensors_.size();
    tensors_.push_back(std::move(t));
  }
  r.context.clear();

  // ---- data section ----
  // r.pos <= size and alignment_ < 2^32, so this cannot overflow.
  const uint64_t data_start = align_up(r.pos, alignment_);
  if (!tensors_.empty() && data_start > size) {
    return r.fail(cat("data section at offset ", data_start,
                      " starts past the end of the file (size ", size, ")"));
  }
  for (GgufTensorInfo& t : tensors_) {
    const uint64_t room = size - data_start;
    if (t.offset > room || t.size > room - t.offset) {
      return r.fail(cat("tensor '", printable(t.name, kNameClip), "': data at offset ", t.offset, " (+",
                        t.size, " bytes) runs past the end of the file (data section at ",
                        data_start, ", file size ", size, ")"));
    }
    t.data = data + data_start + t.offset;
  }
  // Overlapping tensors mean a corrupted index; the data would silently alias.
  std::vector<const GgufTensorInfo*> by_offset;
  by_offset.reserve(tensors_.size());
  for (const GgufTensorInfo& t : tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensorInfo* a, const GgufTensorInfo* b) { return a->offset < b->offset; });
  for (size_t k = 1; k < by_offset.size(); ++k) {
    const GgufTensorInfo& a = *by_offset[k - 1];
    const GgufTensorInfo& b = *by_offset[k];
    if (a.offset + a.size > b.offset) {
      return r.fail(cat("tensors '", printable(a.name, kNameClip), "' (offset ", a.offset, ", ", a.size,
                        " bytes) and '", printable(b.name, kNameClip), "' (offset ", b.offset, ") overlap"));
    }
  }
  return Status::ok();
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kvs_[it->second].second;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

Status GgufFile::check_readable(const GgufTensorInfo& t, const char* reader) const {
  if (dtype_info(t.type).supported) return Status::ok();
  std::string known;
  for (uint32_t id = 0; id < 2048; ++id) {  // ggml's ids and Qilin's own (from 1024)
    const DTypeInfo* info = dtype_info(id);
    if (info != nullptr && info->supported) known += cat(known.empty() ? "" : ", ", info->name);
  }
  return Status::error(cat("gguf: ", path_, ": tensor '", printable(t.name, kNameClip), "' has type ",
                           dtype_name(t.type), ", which ", reader, " cannot read (readable: ",
                           known, ")"));
}

Result<std::vector<float>> GgufFile::read_f32(const GgufTensorInfo& t, const char* reader) const {
  QILIN_TRY(check_readable(t, reader));
  const int64_t ne0 = t.ne[0], n_rows = t.n_elements() / ne0;
  const size_t rb = row_bytes(t.type, ne0);
  std::vector<float> out(static_cast<size_t>(t.n_elements()));
  for (int64_t r = 0; r < n_rows; ++r) {
    dequantize_row_ref(t.type, t.data + r * rb, out.data() + r * ne0, ne0);
  }
  return out;
}

Result<uint64_t> GgufFile::get_uint(const std::string& key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return key_error(path_, key, "missing");
  if (!is_int_type(v->type)) return wrong_type(path_, key, *v, "an integer");
  if (!is_signed_type(v->type)) return v->u;
  if (v->i < 0) {
    return key_error(path_, key, cat("value ", v->i, " is negative, expected an unsigned integer"));
  }
  return static_cast<uint64_t>(v->i);
}

Result<int64_t> GgufFile::get_int(const std::string& key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return key_error(path_, key, "missing");
  if (!is_int_type(v->type)) return wrong_type(path_, key, *v, "an integer");
  if (is_signed_type(v->type)) return v->i;
  if (v->u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return key_error(path_, key, cat("value ", v->u, " does not fit int64"));
  }
  return static_cast<int64_t>(v->u);
}

Result<double> GgufFile::get_float(const std::string& key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return key_error(path_, key, "missing");
  if (v->type == GgufType::FLOAT32 || v->type == GgufType::FLOAT64) return v->f;
  if (is_int_type(v->type)) {
    return is_signed_type(v->type) ? static_cast<double>(v->i) : static_cast<double>(v->u);
  }
  return wrong_type(path_, key, *v, "a number");
}

Result<bool> GgufFile::get_bool(const std::string& key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return key_error(path_, key, "missing");
  if (v->type != GgufType::BOOL) return wrong_type(path_, key, *v, "BOOL");
  return v->u != 0;
}

Result<std::string> GgufFile::get_string(const std::string& key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return key_error(path_, key, "missing");
  if (v->type != GgufType::STRING) return wrong_type(path_, key, *v, "STRING");
  return v->str;
}

Result<const GgufValue*> GgufFile::get_array(const std::string& key, GgufType elem_type) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return key_error(path_, key, "missing");
  if (v->type != GgufType::ARRAY || v->elem_type != elem_type) {
    const std::string expected = cat("ARRAY of ", gguf_type_name(elem_type));
    return wrong_type(path_, key, *v, expected.c_str());
  }
  return v;
}

// ---- Writer ----

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

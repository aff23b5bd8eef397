// GGUF v3 (and v2, same layout) reader; see gguf.h. The reader never trusts a count, offset or
// size from the file: each is checked against the bytes that remain before it is used, so a
// hostile file costs at most a bounded allocation and yields a Status. The metadata getters
// are in gguf_metadata.cc, the writer in gguf_writer.cc.
#include "formats/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>

#include "core/printable.h"
#include "cpu/quants.h"
#include "formats/gguf_internal.h"

namespace qilin {

using namespace gguf_internal;

namespace {

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

// Names taken from the file are clipped to this many bytes in messages (and escaped).
constexpr size_t kNameClip = 80;

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

}  // namespace

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

}  // namespace qilin

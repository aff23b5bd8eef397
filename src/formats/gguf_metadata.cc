// GGUF metadata: the value type names, GgufValue's factories and GgufFile's typed getters
// (an error names the key and says what was found). See gguf.h.
#include "formats/gguf.h"

#include <limits>
#include <string>

#include "formats/gguf_internal.h"

namespace qilin {

using namespace gguf_internal;

namespace {

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

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kvs_[it->second].second;
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

}  // namespace qilin

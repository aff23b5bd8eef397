// Tests for the GGUF reader and writer: round trips through the writer, files assembled byte by
// byte (independent of the writer) with one field made hostile each, truncation at every cut,
// random corruption, and the real model checked against an index dumped by gguf-py.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "formats/gguf.h"

namespace qilin {
namespace {

namespace fs = std::filesystem;

// ---- helpers ----

// Little-endian byte assembly for hand-made files.
struct Bytes {
  std::vector<uint8_t> b;
  Bytes& raw(const void* p, size_t n) {
    const uint8_t* c = static_cast<const uint8_t*>(p);
    b.insert(b.end(), c, c + n);
    return *this;
  }
  Bytes& u8(uint8_t v) { return raw(&v, 1); }
  Bytes& u32(uint32_t v) { return raw(&v, 4); }
  Bytes& i32(int32_t v) { return raw(&v, 4); }
  Bytes& u64(uint64_t v) { return raw(&v, 8); }
  Bytes& str(const std::string& s) {
    u64(s.size());
    return raw(s.data(), s.size());
  }
  Bytes& pad(size_t alignment) {
    while (b.size() % alignment != 0) b.push_back(0);
    return *this;
  }
  Bytes& zeros(size_t n) {
    b.insert(b.end(), n, 0);
    return *this;
  }
};

Bytes header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
  Bytes b;
  b.raw("GGUF", 4).u32(version).u64(n_tensors).u64(n_kv);
  return b;
}

void kv_u32(Bytes& b, const std::string& key, uint32_t v) {
  b.str(key).u32(static_cast<uint32_t>(GgufType::UINT32)).u32(v);
}

void tensor_info(Bytes& b, const std::string& name, const std::vector<uint64_t>& ne, uint32_t type,
                 uint64_t offset) {
  b.str(name).u32(static_cast<uint32_t>(ne.size()));
  for (uint64_t n : ne) b.u64(n);
  b.u32(type).u64(offset);
}

// A valid file with one F32 [4, 2] tensor "w" (32 bytes at offset 0) and one key.
Bytes one_tensor_file(const std::vector<uint64_t>& ne = {4, 2}, uint32_t type = 0,
                      uint64_t offset = 0, size_t data_bytes = 32) {
  Bytes b = header(1, 1);
  kv_u32(b, "test.n", 7);
  tensor_info(b, "w", ne, type, offset);
  b.pad(32).zeros(data_bytes);
  return b;
}

// Parses a copy of exactly `n` bytes (a fresh allocation, so AddressSanitizer sees any read
// past the end).
Result<std::unique_ptr<GgufFile>> parse_prefix(const std::vector<uint8_t>& bytes, size_t n) {
  std::unique_ptr<uint8_t[]> copy(new uint8_t[n == 0 ? 1 : n]);
  if (n > 0) std::memcpy(copy.get(), bytes.data(), n);
  auto r = GgufFile::parse(copy.get(), n, "test.gguf");
  // GgufTensorInfo::data would dangle once `copy` dies; callers only look at metadata.
  return r;
}

std::string parse_error(const std::vector<uint8_t>& bytes) {
  auto r = parse_prefix(bytes, bytes.size());
  if (r) return "<parsed without error>";
  return r.status().message();
}

#define EXPECT_PARSE_ERROR(bytes, substr)                                                \
  do {                                                                                   \
    const std::string _msg = parse_error(bytes);                                         \
    EXPECT_NE(_msg.find(substr), std::string::npos) << "error was: " << _msg;            \
    EXPECT_NE(_msg.find("test.gguf"), std::string::npos) << "no file name in: " << _msg; \
  } while (0)

#define EXPECT_HAS(text, substr) \
  EXPECT_NE(std::string(text).find(substr), std::string::npos) << "text was: " << (text)

GgufValue scalar(GgufType t, uint64_t u = 0, int64_t i = 0, double f = 0) {
  GgufValue v;
  v.type = t;
  v.u = u;
  v.i = i;
  v.f = f;
  return v;
}

void expect_same_value(const GgufValue& want, const GgufValue& got, const std::string& where) {
  ASSERT_EQ(want.type, got.type) << where;
  switch (want.type) {
    case GgufType::STRING:
      EXPECT_EQ(want.str, got.str) << where;
      break;
    case GgufType::FLOAT32:
    case GgufType::FLOAT64:
      EXPECT_EQ(want.f, got.f) << where;
      break;
    case GgufType::INT8:
    case GgufType::INT16:
    case GgufType::INT32:
    case GgufType::INT64:
      EXPECT_EQ(want.i, got.i) << where;
      break;
    case GgufType::ARRAY:
      ASSERT_EQ(want.elem_type, got.elem_type) << where;
      ASSERT_EQ(want.array.size(), got.array.size()) << where;
      for (size_t k = 0; k < want.array.size(); ++k) {
        expect_same_value(want.array[k], got.array[k], where + "[" + std::to_string(k) + "]");
      }
      break;
    default:
      EXPECT_EQ(want.u, got.u) << where;
  }
}

std::vector<uint8_t> read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

// A fresh temp directory per test, removed afterwards.
class GgufTempDir : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("qilin_gguf_" + std::to_string(getpid()) + "_" +
                                        info->test_suite_name() + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  // Names in the directory, to check no temp file was left behind.
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename());
    return names;
  }
  fs::path dir_;
};

// Deterministic tensor payloads.
std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t k = 0; k < n; ++k) v[k] = static_cast<uint8_t>(seed + k * 7);
  return v;
}

// One value of every type, arrays of every element type, empty and nested arrays.
std::vector<std::pair<std::string, GgufValue>> all_value_kinds() {
  std::vector<std::pair<std::string, GgufValue>> kv;
  kv.emplace_back("t.u8", scalar(GgufType::UINT8, 255));
  kv.emplace_back("t.i8", scalar(GgufType::INT8, 0, -128));
  kv.emplace_back("t.u16", scalar(GgufType::UINT16, 65535));
  kv.emplace_back("t.i16", scalar(GgufType::INT16, 0, -32768));
  kv.emplace_back("t.u32", GgufValue::of_u32(4000000000u));
  kv.emplace_back("t.i32", GgufValue::of_i32(-2000000000));
  kv.emplace_back("t.f32", GgufValue::of_f32(-1.25e-7f));
  kv.emplace_back("t.bool_true", GgufValue::of_bool(true));
  kv.emplace_back("t.bool_false", GgufValue::of_bool(false));
  kv.emplace_back("t.string", GgufValue::of_string(std::string("h\xc3\xa9llo\0world", 12)));
  kv.emplace_back("t.empty_string", GgufValue::of_string(""));
  kv.emplace_back("t.u64", GgufValue::of_u64(0xfedcba9876543210ull));
  kv.emplace_back("t.i64", scalar(GgufType::INT64, 0, INT64_MIN));
  kv.emplace_back("t.f64", scalar(GgufType::FLOAT64, 0, 0, 3.141592653589793));
  kv.emplace_back("t.arr_u8", GgufValue::of_array(GgufType::UINT8, {scalar(GgufType::UINT8, 1),
                                                                    scalar(GgufType::UINT8, 2)}));
  kv.emplace_back("t.arr_i8", GgufValue::of_array(GgufType::INT8, {scalar(GgufType::INT8, 0, -3)}));
  kv.emplace_back("t.arr_u16",
                  GgufValue::of_array(GgufType::UINT16, {scalar(GgufType::UINT16, 999)}));
  kv.emplace_back("t.arr_i16",
                  GgufValue::of_array(GgufType::INT16, {scalar(GgufType::INT16, 0, -999)}));
  kv.emplace_back("t.arr_u32",
                  GgufValue::of_array(GgufType::UINT32, {GgufValue::of_u32(1), GgufValue::of_u32(2),
                                                         GgufValue::of_u32(3)}));
  kv.emplace_back("t.arr_i32", GgufValue::of_array(GgufType::INT32, {GgufValue::of_i32(-1)}));
  kv.emplace_back("t.arr_f32", GgufValue::of_array(GgufType::FLOAT32, {GgufValue::of_f32(0.5f),
                                                                       GgufValue::of_f32(-2)}));
  kv.emplace_back("t.arr_bool", GgufValue::of_array(GgufType::BOOL, {GgufValue::of_bool(true),
                                                                     GgufValue::of_bool(false)}));
  kv.emplace_back("t.arr_string", GgufValue::of_strings({"a", "", "<|endoftext|>"}));
  kv.emplace_back("t.arr_u64", GgufValue::of_array(GgufType::UINT64, {GgufValue::of_u64(~0ull)}));
  kv.emplace_back("t.arr_i64",
                  GgufValue::of_array(GgufType::INT64, {scalar(GgufType::INT64, 0, -5)}));
  kv.emplace_back("t.arr_f64",
                  GgufValue::of_array(GgufType::FLOAT64, {scalar(GgufType::FLOAT64, 0, 0, 1e300)}));
  kv.emplace_back("t.arr_empty", GgufValue::of_array(GgufType::UINT32, {}));
  // Nested: inner arrays of different element types and lengths, and a third level.
  GgufValue inner_a =
      GgufValue::of_array(GgufType::INT32, {GgufValue::of_i32(1), GgufValue::of_i32(2)});
  GgufValue inner_b = GgufValue::of_strings({"x", "yz"});
  GgufValue inner_c = GgufValue::of_array(GgufType::FLOAT32, {});
  kv.emplace_back("t.arr_nested",
                  GgufValue::of_array(GgufType::ARRAY, {inner_a, inner_b, inner_c}));
  GgufValue level2 = GgufValue::of_array(GgufType::ARRAY, {inner_a});
  kv.emplace_back("t.arr_nested3", GgufValue::of_array(GgufType::ARRAY, {level2, level2}));
  return kv;
}

// ---- writer ----

class GgufWriterTest : public GgufTempDir {};

TEST_F(GgufWriterTest, RoundTripEveryValueTypeAndTensorType) {
  const auto kvs = all_value_kinds();
  struct T {
    std::string name;
    DType type;
    std::vector<int64_t> ne;
    std::vector<uint8_t> data;
  };
  std::vector<T> tensors = {
      {"f32", DType::F32, {4, 3}, pattern(4 * 3 * 4, 1)},
      {"f16.vec", DType::F16, {7}, pattern(7 * 2, 2)},
      {"q4_1", DType::Q4_1, {64, 2}, pattern(2 * 2 * 20, 3)},
      {"q8_0", DType::Q8_0, {32, 1, 2}, pattern(2 * 34, 4)},
      {"i8.4d", DType::I8, {3, 2, 2, 2}, pattern(24, 5)},
      {"bf16", DType::BF16, {5, 1}, pattern(10, 6)},
  };
  GgufWriter w;
  for (const auto& [k, v] : kvs) w.set(k, v);
  for (const T& t : tensors) w.add_tensor(t.name, t.type, t.ne, t.data.data(), t.data.size());
  const fs::path path = dir_ / "rt.gguf";
  ASSERT_TRUE(w.write(path).is_ok());
  EXPECT_EQ(listing(), std::vector<std::string>{"rt.gguf"});

  auto r = GgufFile::open(path);
  ASSERT_TRUE(r) << r.status().message();
  const GgufFile& f = **r;
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  ASSERT_EQ(f.kvs().size(), kvs.size());  // no general.alignment at the default 32
  for (size_t k = 0; k < kvs.size(); ++k) {
    EXPECT_EQ(f.kvs()[k].first, kvs[k].first);  // file order is kept
    expect_same_value(kvs[k].second, f.kvs()[k].second, kvs[k].first);
    ASSERT_NE(f.find(kvs[k].first), nullptr);
  }
  ASSERT_EQ(f.tensors().size(), tensors.size());
  for (const T& t : tensors) {
    const GgufTensorInfo* info = f.find_tensor(t.name);
    ASSERT_NE(info, nullptr) << t.name;
    EXPECT_EQ(info->type, t.type) << t.name;
    EXPECT_EQ(info->n_dims, static_cast<int>(t.ne.size())) << t.name;
    for (int d = 0; d < 4; ++d) {
      EXPECT_EQ(info->ne[d], d < static_cast<int>(t.ne.size()) ? t.ne[d] : 1) << t.name;
    }
    EXPECT_EQ(info->size, t.data.size()) << t.name;
    EXPECT_EQ(info->offset % 32, 0u) << t.name;
    // The mapping is page-aligned, so an aligned offset gives an aligned pointer.
    EXPECT_EQ(reinterpret_cast<uintptr_t>(info->data) % 32, 0u) << t.name;
    EXPECT_EQ(std::memcmp(info->data, t.data.data(), t.data.size()), 0) << t.name;
  }
  EXPECT_EQ(fs::file_size(path) % 32, 0u);
}

TEST_F(GgufWriterTest, SerializeMatchesWrite) {
  GgufWriter w;
  for (const auto& [k, v] : all_value_kinds()) w.set(k, v);
  const auto data = pattern(40, 9);
  w.add_tensor("q", DType::Q4_1, {32, 2}, data.data(), data.size());
  auto bytes = w.serialize();
  ASSERT_TRUE(bytes) << bytes.status().message();
  ASSERT_TRUE(w.write(dir_ / "a.gguf").is_ok());
  EXPECT_EQ(*bytes, read_file(dir_ / "a.gguf"));
}

TEST_F(GgufWriterTest, CustomAlignmentWritesKeyAndAlignsData) {
  GgufWriter w(64);
  const auto a = pattern(3 * 4, 1);
  const auto b = pattern(5 * 2, 2);
  w.set("x", GgufValue::of_u32(1));
  w.add_tensor("a", DType::F32, {3}, a.data(), a.size());
  w.add_tensor("b", DType::F16, {5}, b.data(), b.size());
  const fs::path path = dir_ / "al.gguf";
  ASSERT_TRUE(w.write(path).is_ok());
  auto r = GgufFile::open(path);
  ASSERT_TRUE(r) << r.status().message();
  EXPECT_EQ((*r)->alignment(), 64u);
  auto al = (*r)->find("general.alignment");
  ASSERT_NE(al, nullptr);
  EXPECT_EQ(al->type, GgufType::UINT32);
  EXPECT_EQ(al->u, 64u);
  EXPECT_EQ((*r)->find_tensor("a")->offset, 0u);
  EXPECT_EQ((*r)->find_tensor("b")->offset, 64u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>((*r)->find_tensor("b")->data) % 64, 0u);
  EXPECT_EQ(std::memcmp((*r)->find_tensor("b")->data, b.data(), b.size()), 0);
  EXPECT_EQ(fs::file_size(path) % 64, 0u);

  // A caller may set the key itself if it agrees; it is then not written twice.
  w.set("general.alignment", GgufValue::of_u32(64));
  ASSERT_TRUE(w.write(path).is_ok());
  auto r2 = GgufFile::open(path);
  ASSERT_TRUE(r2) << r2.status().message();
  EXPECT_EQ((*r2)->kvs().size(), 2u);
}

TEST_F(GgufWriterTest, SetReplacesExistingKey) {
  GgufWriter w;
  w.set("k", GgufValue::of_u32(1));
  w.set("other", GgufValue::of_bool(true));
  w.set("k", GgufValue::of_string("two"));
  auto bytes = w.serialize();
  ASSERT_TRUE(bytes);
  auto r = GgufFile::parse(bytes->data(), bytes->size());
  ASSERT_TRUE(r) << r.status().message();
  ASSERT_EQ((*r)->kvs().size(), 2u);
  EXPECT_EQ((*r)->kvs()[0].first, "k");
  EXPECT_EQ((*r)->get_string("k").value(), "two");
}

TEST_F(GgufWriterTest, RejectsInvalidInputAndWritesNothing) {
  const auto data = pattern(64, 0);
  struct Case {
    std::string expect;
    std::function<void(GgufWriter&)> setup;
    uint64_t alignment = 32;
  };
  const std::vector<Case> cases = {
      {"bytes of data given, the shape needs 32",
       [&](GgufWriter& w) { w.add_tensor("t", DType::F32, {8}, data.data(), 31); }},
      {"is not a multiple of the Q8_0 block size 32",
       [&](GgufWriter& w) { w.add_tensor("t", DType::Q8_0, {16}, data.data(), 17); }},
      {"tensor 't' added twice",
       [&](GgufWriter& w) {
         w.add_tensor("t", DType::F32, {1}, data.data(), 4);
         w.add_tensor("t", DType::F32, {1}, data.data(), 4);
       }},
      {"dimension 0 must be positive",
       [&](GgufWriter& w) {
         w.add_tensor("t", DType::F32, {4, 0}, data.data(), 0);
       }},
      {"5 dimensions, at most 4",
       [&](GgufWriter& w) {
         w.add_tensor("t", DType::F32, {1, 1, 1, 1, 1}, data.data(), 4);
       }},
      {"value 300 does not fit UINT8",
       [&](GgufWriter& w) { w.set("k", scalar(GgufType::UINT8, 300)); }},
      {"array element 1 has type STRING, the array holds UINT32",
       [&](GgufWriter& w) {
         w.set("k", GgufValue::of_array(GgufType::UINT32,
                                        {GgufValue::of_u32(1), GgufValue::of_string("x")}));
       }},
      {"'general.alignment' must be a UINT32 equal to the writer's alignment 32",
       [&](GgufWriter& w) { w.set("general.alignment", GgufValue::of_u32(64)); }},
      {"alignment 48 is not a power of two", [&](GgufWriter&) {}, 48},
  };
  for (const Case& c : cases) {
    GgufWriter w(c.alignment);
    c.setup(w);
    const Status s = w.write(dir_ / "bad.gguf");
    EXPECT_FALSE(s.is_ok()) << c.expect;
    EXPECT_HAS(s.message(), c.expect);
    EXPECT_FALSE(w.serialize().is_ok()) << c.expect;
    EXPECT_TRUE(listing().empty()) << c.expect;
  }
}

TEST_F(GgufWriterTest, FailedRenameRemovesTempFile) {
  // The target is a non-empty directory: the temp file is written, then rename fails.
  fs::create_directories(dir_ / "target" / "inner");
  GgufWriter w;
  w.set("k", GgufValue::of_u32(1));
  const Status s = w.write(dir_ / "target");
  ASSERT_FALSE(s.is_ok());
  EXPECT_HAS(s.message(), "rename failed");
  EXPECT_EQ(listing(), std::vector<std::string>{"target"});
}

TEST_F(GgufWriterTest, MissingDirectoryFails) {
  GgufWriter w;
  const Status s = w.write(dir_ / "no" / "such" / "dir.gguf");
  ASSERT_FALSE(s.is_ok());
  EXPECT_HAS(s.message(), "cannot create a temp file");
  EXPECT_TRUE(listing().empty());
}

TEST_F(GgufWriterTest, ReplacesExistingFile) {
  const fs::path path = dir_ / "m.gguf";
  GgufWriter a;
  a.set("v", GgufValue::of_u32(1));
  ASSERT_TRUE(a.write(path).is_ok());
  GgufWriter b;
  b.set("v", GgufValue::of_u32(2));
  ASSERT_TRUE(b.write(path).is_ok());
  auto r = GgufFile::open(path);
  ASSERT_TRUE(r) << r.status().message();
  EXPECT_EQ((*r)->get_uint("v").value(), 2u);
  EXPECT_EQ(listing(), std::vector<std::string>{"m.gguf"});
}

// ---- reader ----

class GgufReaderTest : public GgufTempDir {};

TEST_F(GgufReaderTest, Getters) {
  GgufWriter w;
  w.set("u32", GgufValue::of_u32(7));
  w.set("i32.neg", GgufValue::of_i32(-3));
  w.set("i32.pos", GgufValue::of_i32(5));
  w.set("u64.big", GgufValue::of_u64(~0ull));
  w.set("u8", scalar(GgufType::UINT8, 200));
  w.set("f32", GgufValue::of_f32(0.25f));
  w.set("b", GgufValue::of_bool(true));
  w.set("s", GgufValue::of_string("llama"));
  w.set("llama.block_count", GgufValue::of_string("thirty"));
  w.set("toks", GgufValue::of_strings({"a", "b"}));
  const fs::path path = dir_ / "g.gguf";
  ASSERT_TRUE(w.write(path).is_ok());
  auto r = GgufFile::open(path);
  ASSERT_TRUE(r) << r.status().message();
  const GgufFile& f = **r;

  EXPECT_EQ(f.get_uint("u32").value(), 7u);
  EXPECT_EQ(f.get_uint("u8").value(), 200u);
  EXPECT_EQ(f.get_uint("i32.pos").value(), 5u);
  EXPECT_EQ(f.get_int("i32.neg").value(), -3);
  EXPECT_EQ(f.get_int("u32").value(), 7);
  EXPECT_EQ(f.get_uint("u64.big").value(), ~0ull);
  EXPECT_EQ(f.get_float("f32").value(), 0.25);
  EXPECT_EQ(f.get_float("u32").value(), 7.0);
  EXPECT_EQ(f.get_float("i32.neg").value(), -3.0);
  EXPECT_TRUE(f.get_bool("b").value());
  EXPECT_EQ(f.get_string("s").value(), "llama");
  auto toks = f.get_array("toks", GgufType::STRING);
  ASSERT_TRUE(toks);
  EXPECT_EQ(toks.value()->array.size(), 2u);

  EXPECT_HAS(f.get_uint("i32.neg").status().message(),
             "gguf: key 'i32.neg' value -3 is negative, expected an unsigned integer");
  EXPECT_HAS(f.get_int("u64.big").status().message(),
             "key 'u64.big' value 18446744073709551615 does not fit int64");
  EXPECT_HAS(f.get_uint("llama.block_count").status().message(),
             "gguf: key 'llama.block_count' has type STRING, expected an integer");
  EXPECT_HAS(f.get_int("llama.block_count").status().message(),
             "gguf: key 'llama.block_count' has type STRING, expected an integer");
  EXPECT_HAS(f.get_uint("llama.context_length").status().message(),
             "gguf: key 'llama.context_length' missing");
  EXPECT_HAS(f.get_uint("llama.context_length").status().message(), path.string());
  EXPECT_HAS(f.get_float("s").status().message(), "key 's' has type STRING, expected a number");
  EXPECT_HAS(f.get_bool("u32").status().message(), "key 'u32' has type UINT32, expected BOOL");
  EXPECT_HAS(f.get_string("b").status().message(), "key 'b' has type BOOL, expected STRING");
  EXPECT_HAS(f.get_array("toks", GgufType::INT32).status().message(),
             "key 'toks' has type ARRAY of STRING, expected ARRAY of INT32");
  EXPECT_HAS(f.get_array("s", GgufType::STRING).status().message(),
             "key 's' has type STRING, expected ARRAY of STRING");
  EXPECT_EQ(f.find("nope"), nullptr);
  EXPECT_EQ(f.find_tensor("nope"), nullptr);
}

TEST_F(GgufReaderTest, HandAssembledFile) {
  // Built byte by byte (not by GgufWriter): two tensors, the second at offset 32.
  Bytes b = header(2, 2);
  kv_u32(b, "a", 1);
  b.str("name").u32(static_cast<uint32_t>(GgufType::STRING)).str("tiny");
  tensor_info(b, "x", {2, 3}, 1 /*F16*/, 0);
  tensor_info(b, "y", {32}, 2 /*Q4_0*/, 32);
  const size_t data_start = (b.b.size() + 31) / 32 * 32;
  b.pad(32).zeros(32).zeros(18);
  b.b[data_start] = 0xab;
  b.b[data_start + 32] = 0xcd;
  auto r = GgufFile::parse(b.b.data(), b.b.size(), "hand.gguf");
  ASSERT_TRUE(r) << r.status().message();
  const GgufFile& f = **r;
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.get_string("name").value(), "tiny");
  const GgufTensorInfo* x = f.find_tensor("x");
  const GgufTensorInfo* y = f.find_tensor("y");
  ASSERT_TRUE(x && y);
  EXPECT_EQ(x->type, DType::F16);
  EXPECT_EQ(x->n_dims, 2);
  EXPECT_EQ(x->ne[0], 2);
  EXPECT_EQ(x->ne[1], 3);
  EXPECT_EQ(x->n_elements(), 6);
  EXPECT_EQ(x->size, 12u);
  EXPECT_EQ(x->data, b.b.data() + data_start);  // zero-copy: points into the buffer
  EXPECT_EQ(y->type, DType::Q4_0);
  EXPECT_EQ(y->size, 18u);
  EXPECT_EQ(y->offset, 32u);
  EXPECT_EQ(y->data[0], 0xcd);
}

TEST_F(GgufReaderTest, AcceptsVersion2) {
  Bytes b = one_tensor_file();
  b.b[4] = 2;
  auto r = GgufFile::parse(b.b.data(), b.b.size());
  ASSERT_TRUE(r) << r.status().message();
  EXPECT_EQ((*r)->version(), 2u);
}

TEST_F(GgufReaderTest, HeaderOnlyFileIsValid) {
  Bytes b = header(0, 0);
  auto r = GgufFile::parse(b.b.data(), b.b.size());
  ASSERT_TRUE(r) << r.status().message();
  EXPECT_TRUE((*r)->kvs().empty());
  EXPECT_TRUE((*r)->tensors().empty());
}

TEST_F(GgufReaderTest, OpenErrorsNameThePath) {
  auto missing = GgufFile::open((dir_ / "absent.gguf").string());
  ASSERT_FALSE(missing);
  EXPECT_HAS(missing.status().message(), "absent.gguf: cannot open");

  auto dir = GgufFile::open(dir_.string());
  ASSERT_FALSE(dir);
  EXPECT_HAS(dir.status().message(), "not a regular file");

  const fs::path empty = dir_ / "empty.gguf";
  std::ofstream(empty).close();
  auto e = GgufFile::open(empty.string());
  ASSERT_FALSE(e);
  EXPECT_HAS(e.status().message(), "empty.gguf: magic at offset 0 runs past the end of the file");
}

// ---- malformed files ----

TEST(GgufMalformed, TruncatedAtEveryCut) {
  GgufWriter w;
  for (const auto& [k, v] : all_value_kinds()) w.set(k, v);
  const auto a = pattern(64 * 2 / 32 * 20, 1);
  const auto c = pattern(13 * 4, 2);  // last tensor ends before the final padding
  w.add_tensor("a", DType::Q4_1, {64, 2}, a.data(), a.size());
  w.add_tensor("c", DType::F32, {13}, c.data(), c.size());
  auto bytes = w.serialize();
  ASSERT_TRUE(bytes) << bytes.status().message();

  // Where the last tensor's data ends: every shorter prefix must fail.
  size_t data_end = 0;
  {
    auto full = GgufFile::parse(bytes->data(), bytes->size());
    ASSERT_TRUE(full) << full.status().message();
    for (const GgufTensorInfo& t : (*full)->tensors()) {
      data_end = std::max<size_t>(data_end, t.data - bytes->data() + t.size);
    }
  }
  ASSERT_LT(data_end, bytes->size());  // the file has trailing padding, tested below
  for (size_t n = 0; n < data_end; ++n) {
    auto r = parse_prefix(*bytes, n);
    ASSERT_FALSE(r) << "prefix of " << n << " bytes parsed";
    const std::string msg = r.status().message();
    EXPECT_HAS(msg, "test.gguf");
    EXPECT_HAS(msg, "end of the file");
  }
  // Only the last tensor's padding missing: still a complete file.
  for (size_t n = data_end; n <= bytes->size(); ++n) {
    auto r = parse_prefix(*bytes, n);
    EXPECT_TRUE(r) << n << ": " << r.status().message();
  }
}

TEST(GgufMalformed, BadMagic) {
  Bytes b = one_tensor_file();
  b.b[3] = 'G';
  EXPECT_PARSE_ERROR(b.b, "bad magic 47 47 55 47, expected 'GGUF'");
}

TEST(GgufMalformed, WrongVersion) {
  Bytes b = one_tensor_file();
  b.b[4] = 1;
  EXPECT_PARSE_ERROR(b.b, "unsupported GGUF version 1");
  b.b[4] = 4;
  EXPECT_PARSE_ERROR(b.b, "unsupported GGUF version 4");
  b.b[4] = 0;
  b.b[7] = 3;  // version 3 written big-endian
  EXPECT_PARSE_ERROR(b.b, "big-endian");
}

TEST(GgufMalformed, AbsurdTensorCount) {
  Bytes b = one_tensor_file();
  const uint64_t n = uint64_t{1} << 60;
  std::memcpy(&b.b[8], &n, 8);
  EXPECT_PARSE_ERROR(b.b, "tensor count 1152921504606846976 is too large");
  const uint64_t all = ~0ull;
  std::memcpy(&b.b[8], &all, 8);
  EXPECT_PARSE_ERROR(b.b, "tensor count 18446744073709551615 is too large");
}

TEST(GgufMalformed, AbsurdKvCount) {
  Bytes b = one_tensor_file();
  const uint64_t n = ~0ull / 2;
  std::memcpy(&b.b[16], &n, 8);
  EXPECT_PARSE_ERROR(b.b, "KV count 9223372036854775807 is too large");
  // Small enough for the KVs alone, too large together with the one tensor info.
  const uint64_t most = (b.b.size() - 24) / 13;
  std::memcpy(&b.b[16], &most, 8);
  EXPECT_PARSE_ERROR(
      b.b, "tensor count 1 and KV count " + std::to_string(most) + " need more bytes than the");
}

TEST(GgufMalformed, StringLengthPastEnd) {
  Bytes key = header(0, 1);
  key.u64(1000000).raw("abc", 3).zeros(10);
  EXPECT_PARSE_ERROR(key.b, "KV #0: key: string length 1000000 at offset 24 runs past the end");

  Bytes value = header(0, 1);
  value.str("k").u32(static_cast<uint32_t>(GgufType::STRING)).u64(~0ull).raw("abcdefgh", 8);
  EXPECT_PARSE_ERROR(value.b, "key 'k': STRING value: string length 18446744073709551615");

  Bytes name = header(1, 0);
  name.u64(50).raw("w", 1).zeros(24);
  EXPECT_PARSE_ERROR(name.b, "tensor #0: name: string length 50");
}

TEST(GgufMalformed, ArrayCountPastEnd) {
  Bytes b = header(0, 1);
  b.str("arr")
      .u32(static_cast<uint32_t>(GgufType::ARRAY))
      .u32(static_cast<uint32_t>(GgufType::UINT32));
  b.u64(uint64_t{1} << 62).u32(1).u32(2);
  EXPECT_PARSE_ERROR(b.b, "key 'arr': array count 4611686018427387904 of UINT32");
  // Array of strings: each needs at least its 8-byte length.
  Bytes s = header(0, 1);
  s.str("arr")
      .u32(static_cast<uint32_t>(GgufType::ARRAY))
      .u32(static_cast<uint32_t>(GgufType::STRING));
  s.u64(3).str("a").str("b");
  EXPECT_PARSE_ERROR(s.b, "array count 3 of STRING (at least 8 bytes each) runs past the end");
}

TEST(GgufMalformed, UnknownValueTypes) {
  Bytes b = header(0, 1);
  b.str("k").u32(13).u32(0);
  EXPECT_PARSE_ERROR(b.b, "key 'k': unknown value type id 13");
  Bytes a = header(0, 1);
  a.str("k").u32(static_cast<uint32_t>(GgufType::ARRAY)).u32(99).u64(1).u32(0);
  EXPECT_PARSE_ERROR(a.b, "key 'k': unknown array element type id 99");
}

TEST(GgufMalformed, UnknownTensorType) {
  EXPECT_PARSE_ERROR(one_tensor_file({4, 2}, 4).b, "tensor 'w': unknown tensor type id 4");
  EXPECT_PARSE_ERROR(one_tensor_file({4, 2}, 0xffffffffu).b, "unknown tensor type id 4294967295");
}

TEST(GgufMalformed, TensorDataOutsideFile) {
  EXPECT_PARSE_ERROR(one_tensor_file({4, 2}, 0, 4096).b,
                     "tensor 'w': data at offset 4096 (+32 bytes) runs past the end of the file");
  EXPECT_PARSE_ERROR(one_tensor_file({4, 2}, 0, 0, 31).b, "runs past the end of the file");
  // An offset near 2^64 must not wrap around.
  EXPECT_PARSE_ERROR(one_tensor_file({4, 2}, 0, ~0ull - 31).b, "runs past the end of the file");
  // A shape far bigger than the file.
  EXPECT_PARSE_ERROR(one_tensor_file({4, 1000000000}, 0).b, "(+16000000000 bytes) runs past");
}

TEST(GgufMalformed, MisalignedTensorOffset) {
  EXPECT_PARSE_ERROR(one_tensor_file({4, 2}, 0, 16).b,
                     "tensor 'w': data offset 16 is not a multiple of the alignment 32");
  // With general.alignment = 64 an offset of 32 is misaligned.
  Bytes b = header(1, 1);
  kv_u32(b, "general.alignment", 64);
  tensor_info(b, "w", {4}, 0, 32);
  b.pad(64).zeros(64);
  EXPECT_PARSE_ERROR(b.b, "data offset 32 is not a multiple of the alignment 64");
}

TEST(GgufMalformed, BadAlignmentValue) {
  for (uint32_t bad : {0u, 3u, 48u}) {
    Bytes b = header(0, 1);
    kv_u32(b, "general.alignment", bad);
    EXPECT_PARSE_ERROR(b.b, "key 'general.alignment' value " + std::to_string(bad) +
                                " is not a nonzero power of two");
  }
  Bytes s = header(0, 1);
  s.str("general.alignment").u32(static_cast<uint32_t>(GgufType::STRING)).str("32");
  EXPECT_PARSE_ERROR(s.b, "key 'general.alignment' has type STRING, expected UINT32");
  Bytes u = header(0, 1);
  u.str("general.alignment").u32(static_cast<uint32_t>(GgufType::UINT64)).u64(32);
  EXPECT_PARSE_ERROR(u.b, "key 'general.alignment' has type UINT64, expected UINT32");
  // A huge power of two is valid as such but puts the data section past the end.
  Bytes h = header(1, 1);
  kv_u32(h, "general.alignment", 1u << 31);
  tensor_info(h, "w", {4}, 0, 0);
  h.zeros(64);
  EXPECT_PARSE_ERROR(h.b, "data section at offset 2147483648 starts past the end of the file");
}

TEST(GgufMalformed, TooManyDims) {
  EXPECT_PARSE_ERROR(one_tensor_file({4, 2, 1, 1, 1}).b,
                     "tensor 'w': n_dims 5 exceeds the maximum of 4");
  Bytes b = header(1, 0);
  b.str("w").u32(0xffffffffu).zeros(64);
  EXPECT_PARSE_ERROR(b.b, "n_dims 4294967295 exceeds");
}

TEST(GgufMalformed, BadDimensions) {
  EXPECT_PARSE_ERROR(one_tensor_file({4, 0}).b,
                     "tensor 'w': dimension ne[1] is 0, must be positive");
  EXPECT_PARSE_ERROR(one_tensor_file({~0ull, 2}).b, "dimension ne[0] is -1, must be positive");
  EXPECT_PARSE_ERROR(one_tensor_file({uint64_t{1} << 32, uint64_t{1} << 31}).b,
                     "element count overflows int64 at dimension ne[1] = 2147483648");
  // 2^62 F64 elements fit int64, but their 2^65 bytes do not fit 64 bits.
  EXPECT_PARSE_ERROR(one_tensor_file({uint64_t{1} << 62}, 28).b,
                     "byte size of 4611686018427387904 F64 elements overflows");
  // 2^62 Q8_0 elements have a byte size that fits, far beyond the file.
  EXPECT_PARSE_ERROR(one_tensor_file({uint64_t{1} << 62}, 8).b, "runs past the end of the file");
}

TEST(GgufMalformed, RowNotMultipleOfBlock) {
  EXPECT_PARSE_ERROR(
      one_tensor_file({16, 2}, 2).b,
      "tensor 'w': row length ne[0] = 16 is not a multiple of the Q4_0 block size 32");
  EXPECT_PARSE_ERROR(one_tensor_file({300}, 12).b, "the Q4_K block size 256");
}

TEST(GgufMalformed, DuplicateKeyAndTensor) {
  Bytes k = header(0, 2);
  kv_u32(k, "dup", 1);
  kv_u32(k, "dup", 2);
  EXPECT_PARSE_ERROR(k.b, "key 'dup': appears twice (KV #0 and #1)");
  Bytes t = header(2, 0);
  tensor_info(t, "w", {8}, 0, 0);
  tensor_info(t, "w", {8}, 0, 32);
  t.pad(32).zeros(64);
  EXPECT_PARSE_ERROR(t.b, "tensor 'w': appears twice (tensor #0 and #1)");
  Bytes e = header(1, 0);
  tensor_info(e, "", {8}, 0, 0);
  e.pad(32).zeros(32);
  EXPECT_PARSE_ERROR(e.b, "tensor #0: empty tensor name");
}

TEST(GgufMalformed, OverlappingTensors) {
  Bytes b = header(2, 0);
  tensor_info(b, "a", {16}, 0, 0);  // 64 bytes
  tensor_info(b, "b", {8}, 0, 32);  // starts inside a
  b.pad(32).zeros(64);
  EXPECT_PARSE_ERROR(b.b, "tensors 'a' (offset 0, 64 bytes) and 'b' (offset 32) overlap");
}

TEST(GgufMalformed, NestingTooDeep) {
  Bytes b = header(0, 1);
  b.str("deep").u32(static_cast<uint32_t>(GgufType::ARRAY));
  for (int d = 0; d < 20; ++d) b.u32(static_cast<uint32_t>(GgufType::ARRAY)).u64(1);
  b.zeros(64);
  EXPECT_PARSE_ERROR(b.b, "key 'deep': arrays nested more than 8 deep");
}

TEST(GgufMalformed, BoolOutOfRange) {
  Bytes b = header(0, 1);
  b.str("flag").u32(static_cast<uint32_t>(GgufType::BOOL)).u8(2);
  EXPECT_PARSE_ERROR(b.b, "key 'flag': BOOL value 2 at offset 40 is not 0 or 1");
}

TEST(GgufMalformed, NamesAreSanitizedInMessages) {
  Bytes b = header(0, 2);
  const std::string key = std::string("bad\n\x01", 5) + std::string(200, 'x');
  kv_u32(b, key, 1);
  kv_u32(b, key, 1);
  const std::string msg = parse_error(b.b);
  EXPECT_HAS(msg, "key 'bad\\x0a\\x01xxx");
  EXPECT_HAS(msg, "...': appears twice");
  EXPECT_LT(msg.size(), 200u);
}

// Random byte corruption of a valid file: every result is either a clean parse or an error.
// Under the sanitizer build this doubles as a small fuzz test.
TEST(GgufMalformed, RandomCorruptionNeverCrashes) {
  GgufWriter w(64);
  for (const auto& [k, v] : all_value_kinds()) w.set(k, v);
  const auto a = pattern(40, 1);
  const auto c = pattern(16, 2);
  w.add_tensor("a", DType::Q4_1, {64}, a.data(), a.size());
  w.add_tensor("c", DType::F32, {2, 2}, c.data(), c.size());
  auto bytes = w.serialize();
  ASSERT_TRUE(bytes);
  std::mt19937 rng(1234);
  int n_errors = 0;
  for (int iter = 0; iter < 4000; ++iter) {
    std::vector<uint8_t> m = *bytes;
    const int n_flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < n_flips; ++k) {
      const size_t at = rng() % m.size();
      // Mostly small values and all-ones bytes, which hit counts and lengths hardest.
      const uint32_t kind = rng() % 3;
      m[at] = kind == 0   ? static_cast<uint8_t>(rng())
              : kind == 1 ? 0xff
                          : static_cast<uint8_t>(rng() % 16);
    }
    const size_t n = iter % 5 == 0 ? rng() % (m.size() + 1) : m.size();
    auto r = parse_prefix(m, n);
    if (!r) {
      ++n_errors;
      EXPECT_HAS(r.status().message(), "gguf: test.gguf: ");
    }
  }
  EXPECT_GT(n_errors, 1000);
}

// ---- the real model against gguf-py's index ----

std::string model_path() {
  const char* env = std::getenv("QILIN_MODELS");
  return std::string(env != nullptr ? env : QILIN_MODEL_DIR) + "/SmolLM2-135M-Instruct.Q4_1.gguf";
}

TEST(GgufModel, MatchesGgufPyIndex) {
  const std::string path = model_path();
  ASSERT_TRUE(fs::exists(path)) << path << " is missing: run scripts/fetch_model.sh";
  const std::string index_path = QILIN_TEST_DATA_DIR "/golden/gguf_model_index.json";
  std::ifstream in(index_path);
  ASSERT_TRUE(in) << index_path << " is missing: run tests/golden/gen_gguf_index.py";
  const nlohmann::json idx = nlohmann::json::parse(in);

  auto r = GgufFile::open(path);
  ASSERT_TRUE(r) << r.status().message();
  const GgufFile& f = **r;
  EXPECT_EQ(fs::file_size(path), idx["file_size"].get<uint64_t>());
  EXPECT_EQ(f.version(), idx["version"].get<uint32_t>());
  EXPECT_EQ(f.alignment(), idx["alignment"].get<uint64_t>());

  const auto& kvs = idx["kvs"];
  ASSERT_EQ(f.kvs().size(), kvs.size());
  for (size_t k = 0; k < kvs.size(); ++k) {
    const auto& e = kvs[k];
    const std::string key = e["key"];
    ASSERT_EQ(f.kvs()[k].first, key) << "KV #" << k;
    const GgufValue& v = f.kvs()[k].second;
    ASSERT_EQ(static_cast<int>(v.type), e["type"].get<int>()) << key;
    // Compares one scalar GgufValue with a JSON value written by gguf-py.
    auto check = [&](const GgufValue& x, const nlohmann::json& j, const std::string& what) {
      switch (x.type) {
        case GgufType::STRING:
          EXPECT_EQ(x.str, j.get<std::string>()) << what;
          break;
        case GgufType::BOOL:
          EXPECT_EQ(x.u != 0, j.get<bool>()) << what;
          break;
        case GgufType::FLOAT32:
        case GgufType::FLOAT64:
          EXPECT_EQ(x.f, j.get<double>()) << what;
          break;
        case GgufType::INT8:
        case GgufType::INT16:
        case GgufType::INT32:
        case GgufType::INT64:
          EXPECT_EQ(x.i, j.get<int64_t>()) << what;
          break;
        default:
          EXPECT_EQ(x.u, j.get<uint64_t>()) << what;
      }
    };
    if (v.type == GgufType::ARRAY) {
      EXPECT_EQ(static_cast<int>(v.elem_type), e["elem_type"].get<int>()) << key;
      ASSERT_EQ(v.array.size(), e["length"].get<size_t>()) << key;
      if (e.contains("first")) {
        check(v.array.front(), e["first"], key + " first");
        check(v.array.back(), e["last"], key + " last");
      }
    } else {
      check(v, e["value"], key);
    }
  }

  const auto& ts = idx["tensors"];
  ASSERT_EQ(f.tensors().size(), ts.size());
  const GgufTensorInfo& first = f.tensors()[0];
  const uint64_t data_offset = idx["data_offset"];
  for (size_t k = 0; k < ts.size(); ++k) {
    const auto& e = ts[k];
    const GgufTensorInfo& t = f.tensors()[k];
    const std::string name = e["name"];
    ASSERT_EQ(t.name, name) << "tensor #" << k;
    EXPECT_EQ(static_cast<int>(t.type), e["type"].get<int>()) << name;
    const auto ne = e["ne"].get<std::vector<int64_t>>();
    ASSERT_EQ(t.n_dims, static_cast<int>(ne.size())) << name;
    for (size_t d = 0; d < ne.size(); ++d) EXPECT_EQ(t.ne[d], ne[d]) << name << " ne[" << d << "]";
    EXPECT_EQ(t.offset, e["offset"].get<uint64_t>()) << name;
    EXPECT_EQ(t.size, e["n_bytes"].get<uint64_t>()) << name;
    EXPECT_EQ(static_cast<uint64_t>(t.data - first.data), t.offset - first.offset) << name;
    EXPECT_LE(data_offset + t.offset + t.size, idx["file_size"].get<uint64_t>()) << name;
    EXPECT_EQ(f.find_tensor(name), &t);
  }
}

TEST(GgufModel, TypedGettersOnRealModel) {
  const std::string path = model_path();
  ASSERT_TRUE(fs::exists(path)) << path << " is missing: run scripts/fetch_model.sh";
  auto r = GgufFile::open(path);
  ASSERT_TRUE(r) << r.status().message();
  const GgufFile& f = **r;
  EXPECT_EQ(f.get_string("general.architecture").value(), "llama");
  EXPECT_EQ(f.get_uint("llama.block_count").value(), 30u);
  EXPECT_EQ(f.get_int("llama.embedding_length").value(), 576);
  EXPECT_EQ(f.get_float("llama.rope.freq_base").value(), 100000.0);
  EXPECT_TRUE(f.get_bool("tokenizer.ggml.add_bos_token").is_ok());
  auto tokens = f.get_array("tokenizer.ggml.tokens", GgufType::STRING);
  ASSERT_TRUE(tokens) << tokens.status().message();
  EXPECT_EQ(tokens.value()->array.size(), 49152u);
  const GgufTensorInfo* emb = f.find_tensor("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->type, DType::Q8_0);
  EXPECT_EQ(emb->ne[0], 576);
  EXPECT_EQ(emb->ne[1], 49152);
}

}  // namespace
}  // namespace qilin

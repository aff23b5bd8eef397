// Whole-model quantization (see quantize.h): per tensor, pick the type, turn the rows into F32
// (from the file or from the caller's replacements), quantize the rows on the thread pool with
// the reference quantizers (bit-exact with ggml's for Q4_0/Q4_1/Q8_0), write once at the end.
#include "quant/quantize.h"

#include <algorithm>
#include <cstring>

#include "core/thread_pool.h"
#include "cpu/quants.h"
#include "cpu/quants_int4.h"

namespace qilin {
namespace {

struct TypeName {
  const char* name;
  DType type;
  int32_t llama_ftype;  // general.file_type as llama.cpp writes it; -1 for Qilin's own types
};
constexpr TypeName kTypeNames[] = {
    {"f32", DType::F32, 0},           {"f16", DType::F16, 1},
    {"bf16", DType::BF16, 32},        {"q8_0", DType::Q8_0, 7},
    {"q4_0", DType::Q4_0, 2},         {"q4_1", DType::Q4_1, 3},
    {"int4-g32", DType::QI4_G32, -1}, {"int4-g64", DType::QI4_G64, -1},
    {"int4-g128", DType::QI4_G128, -1}, {"nf4", DType::NF4, -1},
    {"nf4-dq", DType::NF4_DQ, -1},
};

const TypeName* find_type(DType t) {
  for (const TypeName& n : kTypeNames) {
    if (n.type == t) return &n;
  }
  return nullptr;
}

bool ends_with(const std::string& s, const char* suffix) {
  const size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

bool is_plain(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

}  // namespace

Result<DType> parse_quant_type(const std::string& name) {
  std::string lower = name;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const TypeName& n : kTypeNames) {
    if (lower == n.name) return n.type;
  }
  return errorf("unknown quantization type '%s' (types: %s)", name.c_str(),
                quant_type_names().c_str());
}

std::string quant_type_names() {
  std::string s;
  for (const TypeName& n : kTypeNames) s += (s.empty() ? "" : ", ") + std::string(n.name);
  return s;
}

const char* quant_type_name(DType t) {
  const TypeName* n = find_type(t);
  return n ? n->name : dtype_name(t);
}

bool is_ggml_type(DType t) { return static_cast<uint32_t>(t) < 1024; }

DType quant_tensor_type(const GgufTensorInfo& t, DType target, bool output_tied) {
  if (t.n_dims < 2 || !ends_with(t.name, "weight") || ends_with(t.name, "_norm.weight")) {
    return t.type;
  }
  if (is_plain(target)) return target;
  if (t.name == "output.weight" || (output_tied && t.name == "token_embd.weight")) {
    return DType::Q8_0;
  }
  DType type = target;
  while (t.ne[0] % dtype_info(type).block_size != 0) {
    if (type == DType::QI4_G128) {
      type = DType::QI4_G64;
    } else if (type == DType::QI4_G64) {
      type = DType::QI4_G32;
    } else {
      return DType::F16;
    }
  }
  return type;
}

Result<QuantizeReport> quantize_gguf(const GgufFile& in, const std::string& out,
                                     const QuantizeOptions& opt) {
  const TypeName* target = find_type(opt.target);
  if (target == nullptr) {
    return errorf("quantize: %s is not a target type (types: %s)", dtype_name(opt.target),
                  quant_type_names().c_str());
  }
  const bool tied = in.find_tensor("output.weight") == nullptr;
  QuantizeReport rep;
  GgufWriter w(in.alignment());
  for (const auto& [key, value] : in.kvs()) {
    if (key == "general.file_type" && target->llama_ftype < 0) continue;  // no llama.cpp ftype
    w.set(key, value);
  }
  if (target->llama_ftype >= 0) {
    w.set("general.file_type", GgufValue::of_u32(static_cast<uint32_t>(target->llama_ftype)));
  }
  w.set("general.quantization_version", GgufValue::of_u32(2));
  w.set("qilin.quantize.type", GgufValue::of_string(target->name));
  for (const auto& [key, value] : opt.extra_kvs) w.set(key, value);

  QuantizeProgress prog;
  prog.n_tensors = in.tensors().size();
  for (const GgufTensorInfo& t : in.tensors()) prog.n_elements += static_cast<uint64_t>(t.n_elements());
  rep.n_elements = prog.n_elements;

  ThreadPool pool(std::max(opt.n_threads, 1));
  struct Fallback {
    int count = 0;
    std::string example;
  };
  std::map<std::string, Fallback> fallbacks;  // "columns type" -> tensors
  std::vector<std::vector<uint8_t>> bufs;  // outputs, alive until write()
  bufs.reserve(in.tensors().size());
  bool noted_requant = false;
  for (const GgufTensorInfo& t : in.tensors()) {
    const DType type = quant_tensor_type(t, opt.target, tied);
    const int64_t ne0 = t.ne[0], n_rows = t.n_elements() / ne0;
    const std::vector<int64_t> ne(t.ne, t.ne + t.n_dims);
    const std::vector<float>* repl = nullptr;
    if (opt.replace) {
      auto it = opt.replace->find(t.name);
      if (it != opt.replace->end()) {
        if (it->second.size() != static_cast<size_t>(t.n_elements())) {
          return errorf("quantize: replacement for tensor '%s' has %zu elements, expected %lld",
                        t.name.c_str(), it->second.size(), static_cast<long long>(t.n_elements()));
        }
        repl = &it->second;
      }
    }
    rep.bytes_in += t.size;
    if (type == t.type && repl == nullptr) {
      w.add_tensor(t.name, t.type, ne, t.data, t.size);  // unchanged: copied bit for bit
      rep.bytes_out += t.size;
    } else {
      if (!dtype_info(type).supported) {
        return errorf("%s: tensor '%s' would be written as %s, which Qilin cannot quantize to",
                      in.path().c_str(), t.name.c_str(), dtype_name(type));
      }
      std::vector<float> storage;
      const float* src = nullptr;
      if (repl) {
        src = repl->data();
      } else {
        auto f = in.read_f32(t, "qilin quantize");
        QILIN_TRY(f);
        storage = std::move(*f);
        src = storage.data();
        if (dtype_info(t.type).block_size > 1 && !is_plain(opt.target) && !noted_requant) {
          rep.notes.push_back("input tensors are " + std::string(dtype_name(t.type)) +
                              " (e.g. '" + t.name +
                              "'): requantizing adds its rounding to the input's");
          noted_requant = true;
        }
      }
      if (type != opt.target && !is_plain(opt.target) && t.n_dims >= 2 &&
          t.name != "output.weight" && !(tied && t.name == "token_embd.weight") &&
          type != t.type) {
        Fallback& fb = fallbacks[std::to_string(ne0) + " " + dtype_name(type)];
        if (fb.count++ == 0) fb.example = t.name;
      }
      const size_t rb = row_bytes(type, ne0);
      std::vector<uint8_t>& dst = bufs.emplace_back(rb * static_cast<size_t>(n_rows));
      pool.run([&](int ith, int nth) {
        int64_t r0, r1;
        split_range(n_rows, ith, nth, &r0, &r1);
        for (int64_t r = r0; r < r1; ++r) quantize_row_ref(type, src + r * ne0, dst.data() + r * rb, ne0);
      });
      w.add_tensor(t.name, type, ne, dst.data(), dst.size());
      rep.bytes_out += dst.size();
    }
    const bool output = t.name == "output.weight" || (tied && t.name == "token_embd.weight");
    if (t.n_dims >= 2 && ends_with(t.name, "weight") && !ends_with(t.name, "_norm.weight") &&
        !output) {  // the layers' weights: the target type or its fallbacks
      rep.quantized_elements += static_cast<uint64_t>(t.n_elements());
      rep.quantized_bytes += row_bytes(type, ne0) * static_cast<uint64_t>(n_rows);
    }
    rep.types_out[dtype_name(type)]++;
    prog.tensor++;
    prog.elements += static_cast<uint64_t>(t.n_elements());
    prog.name = t.name.c_str();
    if (opt.progress) opt.progress(prog);
  }
  for (const auto& [key, fb] : fallbacks) {
    const std::string cols = key.substr(0, key.find(' ')), type = key.substr(key.find(' ') + 1);
    rep.notes.push_back(std::to_string(fb.count) + " tensor(s) with rows of " + cols +
                        " (not a multiple of " + std::to_string(dtype_info(opt.target).block_size) +
                        ") written as " + type + ", e.g. '" + fb.example + "'");
  }
  QILIN_TRY(w.write(out));
  return rep;
}

}  // namespace qilin

// make_f32_model IN.gguf OUT.gguf: the model with every tensor dequantized to F32 (our reference
// dequantizer and GGUF writer). The server integration tests serve it where they compare
// batched with solo greedy outputs: with F32 weights nothing re-quantizes activations, so a
// batched step and a single-row step agree to float rounding (with 4-bit weights and 8-bit
// activations they do not, and greedy paths part after a few tokens).
#include <cstdio>
#include <string>
#include <vector>

#include "cpu/quants.h"
#include "formats/gguf.h"

using namespace qilin;

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: make_f32_model IN.gguf OUT.gguf\n");
    return 2;
  }
  auto q = GgufFile::open(argv[1]);
  if (!q) {
    std::fprintf(stderr, "make_f32_model: %s\n", q.status().message().c_str());
    return 1;
  }
  GgufWriter w;
  for (const auto& [key, value] : (*q)->kvs()) {
    w.set(key, key == "general.file_type" ? GgufValue::of_u32(0) : value);
  }
  std::vector<std::vector<float>> data;
  data.reserve((*q)->tensors().size());
  for (const GgufTensorInfo& t : (*q)->tensors()) {
    const int64_t n_row = t.ne[0], n_rows = t.n_elements() / t.ne[0];
    std::vector<float>& d = data.emplace_back(t.n_elements());
    for (int64_t r = 0; r < n_rows; ++r) {
      dequantize_row_ref(t.type, t.data + r * row_bytes(t.type, n_row), d.data() + r * n_row,
                         n_row);
    }
    w.add_tensor(t.name, DType::F32, std::vector<int64_t>(t.ne, t.ne + t.n_dims), d.data(),
                 d.size() * sizeof(float));
  }
  if (Status st = w.write(argv[2]); !st) {
    std::fprintf(stderr, "make_f32_model: %s\n", st.message().c_str());
    return 1;
  }
  return 0;
}

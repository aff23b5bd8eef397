// A tiny random Llama for the data-parallel training tests: 2 layers, E 64, 4 heads of 16,
// 2 KV heads, FFN 96, vocabulary 96, F32 weights, written to a GGUF in a temporary folder and
// loaded into memory (the file is removed). Every process that calls it gets the same weights.
#pragma once

#include <unistd.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "formats/gguf.h"
#include "model/llama.h"

namespace qilin::test {

inline Result<std::unique_ptr<LlamaModel>> tiny_llama() {
  constexpr int64_t E = 64, F = 96, V = 96, L = 2, dkv = 32;
  GgufWriter w;
  w.set("general.architecture", GgufValue::of_string("llama"));
  w.set("llama.embedding_length", GgufValue::of_u32(E));
  w.set("llama.block_count", GgufValue::of_u32(L));
  w.set("llama.attention.head_count", GgufValue::of_u32(4));
  w.set("llama.attention.head_count_kv", GgufValue::of_u32(2));
  w.set("llama.feed_forward_length", GgufValue::of_u32(F));
  std::mt19937 rng(7);
  std::normal_distribution<float> d(0.0f, 0.15f);
  std::vector<std::vector<float>> data;
  data.reserve(64);
  auto add = [&](const std::string& name, int64_t n_in, int64_t n_out, bool norm) {
    std::vector<float>& v = data.emplace_back(n_in * n_out);
    for (float& x : v) x = norm ? 1.0f + d(rng) : d(rng);
    std::vector<int64_t> ne = {n_in};
    if (n_out > 1) ne.push_back(n_out);
    w.add_tensor(name, DType::F32, ne, v.data(), v.size() * sizeof(float));
  };
  add("token_embd.weight", E, V, false);
  add("output_norm.weight", E, 1, true);
  for (int il = 0; il < L; ++il) {
    const std::string p = "blk." + std::to_string(il) + ".";
    add(p + "attn_norm.weight", E, 1, true);
    add(p + "ffn_norm.weight", E, 1, true);
    add(p + "attn_q.weight", E, E, false);
    add(p + "attn_k.weight", E, dkv, false);
    add(p + "attn_v.weight", E, dkv, false);
    add(p + "attn_output.weight", E, E, false);
    add(p + "ffn_gate.weight", E, F, false);
    add(p + "ffn_up.weight", E, F, false);
    add(p + "ffn_down.weight", F, E, false);
  }
  char dir[] = "/tmp/qilin-tiny-XXXXXX";
  if (!mkdtemp(dir)) return errorf("cannot create a temporary folder for the tiny model");
  const std::string path = std::string(dir) + "/tiny.gguf";
  Status st = w.write(path);
  auto m = st ? LlamaModel::load(path, WeightPlacement::Memory)
              : Result<std::unique_ptr<LlamaModel>>(st);
  unlink(path.c_str());
  rmdir(dir);
  return m;
}

}  // namespace qilin::test

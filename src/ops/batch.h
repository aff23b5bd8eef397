// Batch: one step's work, flat. Each of n_tokens rows is a token id, its position and the index
// of its sequence; each sequence carries its block table. Prefill, decode, several prompts at
// once and perplexity are all just batches: the model never knows which is which.
// NOTE: a row at position p attends to positions [0, p] of its sequence, so those positions must
// be in the cache already or in this batch.
#pragma once

#include <cstdint>
#include <vector>

namespace qilin {

struct BatchSeq {
  const int32_t* block_table = nullptr;  // [n_blocks] physical block ids, position order
  int32_t n_blocks = 0;
};

struct Batch {
  std::vector<int32_t> token;        // [n_tokens]
  std::vector<int32_t> pos;          // [n_tokens]
  std::vector<int32_t> seq;          // [n_tokens] index into seqs
  std::vector<uint8_t> want_logits;  // [n_tokens] 1 if this row's logits are returned
  std::vector<BatchSeq> seqs;        // [n_seqs]

  int32_t n_tokens() const { return static_cast<int32_t>(token.size()); }
  int32_t n_logit_rows() const {
    int32_t n = 0;
    for (uint8_t w : want_logits) n += w;
    return n;
  }
  // Keeps capacity, so a reused Batch allocates nothing in steady state.
  void clear() {
    token.clear();
    pos.clear();
    seq.clear();
    want_logits.clear();
    seqs.clear();
  }
  void add(int32_t tok, int32_t p, int32_t s, bool logits) {
    token.push_back(tok);
    pos.push_back(p);
    seq.push_back(s);
    want_logits.push_back(logits ? 1 : 0);
  }
};

}  // namespace qilin

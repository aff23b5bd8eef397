// Training attention: the per-ISA kernel choice and the causal work split (see
// train_attention.h).
#include "cpu/train_attention.h"

#include <algorithm>

namespace qilin {

const TrainAttnKernels* train_attention_kernels(Isa isa) {
  if (!cpu_supports(isa)) return nullptr;
  switch (isa) {
    case Isa::Avx512:
      return &avx512::kTrainAttnKernels;
    case Isa::Avx2:
      return &avx2::kTrainAttnKernels;
    case Isa::Scalar:
      return nullptr;
  }
  return nullptr;
}

void train_attention_split(int64_t n, int32_t group, int32_t lanes, int ith, int nth, int64_t* i0,
                           int64_t* i1) {
  const int64_t n_items = n * group;
  const int64_t n_tiles = (n_items + lanes - 1) / lanes;
  // A tile's cost: the key tiles it reads (its last row / lanes + 1) plus about one more for
  // packing its queries and writing its rows.
  auto cost = [&](int64_t tile) {
    const int64_t last_row = (std::min(n_items, (tile + 1) * lanes) - 1) / group;
    return last_row / lanes + 2;
  };
  int64_t total = 0;
  for (int64_t tile = 0; tile < n_tiles; ++tile) total += cost(tile);
  // Thread i starts at the first tile whose preceding cost reaches i/nth of the total.
  auto start = [&](int i) {
    if (i >= nth) return n_tiles;
    const int64_t target = total * i / nth;
    int64_t acc = 0, tile = 0;
    while (tile < n_tiles && acc < target) acc += cost(tile++);
    return tile;
  };
  *i0 = std::min(n_items, start(ith) * lanes);
  *i1 = std::min(n_items, start(ith + 1) * lanes);
}

}  // namespace qilin

// The 3D rank grid: world = pipeline x data x tensor. Tensor-parallel ranks are adjacent
// (they exchange the most, every layer), then data-parallel replicas, then pipeline stages:
//   rank = stage * (dp * tp) + data * tp + tensor.
// So with 16 ranks, pipeline 4 and tensor 2 (data 2): ranks 0-3 hold stage 1, ranks 0 and 1
// form a tensor group, ranks 0 and 2 a data group.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "qilin/status.h"

namespace qilin {

struct RankCoord {
  int32_t stage = 0;   // pipeline stage, 0-based
  int32_t data = 0;    // data-parallel replica
  int32_t tensor = 0;  // tensor-parallel shard
};

class Topology {
 public:
  // Errors name the sizes that do not divide the world.
  static Result<Topology> create(int32_t world, int32_t tp, int32_t pp);

  int32_t world() const { return world_; }
  int32_t tp() const { return tp_; }
  int32_t pp() const { return pp_; }
  int32_t dp() const { return dp_; }
  RankCoord coord(int32_t rank) const;
  int32_t rank_of(const RankCoord& c) const;
  // The ranks sharing `rank`'s group along one axis, in axis order (includes rank itself).
  std::vector<int32_t> tensor_group(int32_t rank) const;
  std::vector<int32_t> data_group(int32_t rank) const;
  std::vector<int32_t> pipeline_group(int32_t rank) const;
  // A table of every rank's coordinates and groups, for `qilin topology`.
  std::string describe() const;

 private:
  int32_t world_ = 1, tp_ = 1, pp_ = 1, dp_ = 1;
};

}  // namespace qilin

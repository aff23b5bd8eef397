// Topology: see topology.h.
#include "dist/topology.h"

#include <cstdio>

#include "core/assert.h"

namespace qilin {

Result<Topology> Topology::create(int32_t world, int32_t tp, int32_t pp) {
  if (world < 1) return errorf("topology: world size must be >= 1, got %d", world);
  if (tp < 1 || pp < 1) return errorf("topology: --tp and --pp must be >= 1, got %d and %d", tp, pp);
  if (world % (tp * pp) != 0) {
    return errorf("topology: world size %d is not a multiple of tp x pp = %d x %d = %d", world, tp,
                  pp, tp * pp);
  }
  Topology t;
  t.world_ = world;
  t.tp_ = tp;
  t.pp_ = pp;
  t.dp_ = world / (tp * pp);
  return t;
}

RankCoord Topology::coord(int32_t rank) const {
  QILIN_ASSERT(rank >= 0 && rank < world_);
  RankCoord c;
  c.tensor = rank % tp_;
  c.data = (rank / tp_) % dp_;
  c.stage = rank / (tp_ * dp_);
  return c;
}

int32_t Topology::rank_of(const RankCoord& c) const {
  QILIN_ASSERT(c.tensor >= 0 && c.tensor < tp_ && c.data >= 0 && c.data < dp_ && c.stage >= 0 &&
               c.stage < pp_);
  return c.stage * (dp_ * tp_) + c.data * tp_ + c.tensor;
}

std::vector<int32_t> Topology::tensor_group(int32_t rank) const {
  RankCoord c = coord(rank);
  std::vector<int32_t> g;
  for (c.tensor = 0; c.tensor < tp_; ++c.tensor) g.push_back(rank_of(c));
  return g;
}

std::vector<int32_t> Topology::data_group(int32_t rank) const {
  RankCoord c = coord(rank);
  std::vector<int32_t> g;
  for (c.data = 0; c.data < dp_; ++c.data) g.push_back(rank_of(c));
  return g;
}

std::vector<int32_t> Topology::pipeline_group(int32_t rank) const {
  RankCoord c = coord(rank);
  std::vector<int32_t> g;
  for (c.stage = 0; c.stage < pp_; ++c.stage) g.push_back(rank_of(c));
  return g;
}

std::string Topology::describe() const {
  auto list = [](const std::vector<int32_t>& v) {
    std::string s = "{";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
    return s + "}";
  };
  char line[256];
  std::snprintf(line, sizeof line, "world %d = pipeline %d x data %d x tensor %d\n", world_, pp_,
                dp_, tp_);
  std::string out = line;
  out += "rank  stage  data  tensor  tensor-group  data-group  pipeline-group\n";
  for (int32_t r = 0; r < world_; ++r) {
    const RankCoord c = coord(r);
    // Stages are printed 1-based, as people count them ("stage 1 holds the first layers").
    std::snprintf(line, sizeof line, "%4d  %5d  %4d  %6d  %-12s  %-10s  %s\n", r, c.stage + 1,
                  c.data, c.tensor, list(tensor_group(r)).c_str(), list(data_group(r)).c_str(),
                  list(pipeline_group(r)).c_str());
    out += line;
  }
  return out;
}

}  // namespace qilin

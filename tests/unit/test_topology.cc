// The 3D rank grid, including the brief's example: 16 ranks, pipeline 4, tensor 2, data 2:
// ranks 0-3 hold stage 1, ranks 0 and 1 are one tensor group, ranks 0 and 2 one data group.
#include <gtest/gtest.h>

#include <set>

#include "dist/topology.h"

namespace qilin {
namespace {

TEST(Topology, TheBriefsExample) {
  auto t = Topology::create(16, /*tp=*/2, /*pp=*/4);
  ASSERT_TRUE(t.is_ok());
  EXPECT_EQ(t->dp(), 2);
  for (int r = 0; r < 4; ++r) EXPECT_EQ(t->coord(r).stage, 0) << r;  // "stage 1"
  EXPECT_EQ(t->coord(4).stage, 1);
  EXPECT_EQ(t->tensor_group(0), (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(t->data_group(0), (std::vector<int32_t>{0, 2}));
  EXPECT_EQ(t->pipeline_group(0), (std::vector<int32_t>{0, 4, 8, 12}));
  EXPECT_EQ(t->tensor_group(13), (std::vector<int32_t>{12, 13}));
  EXPECT_EQ(t->data_group(13), (std::vector<int32_t>{13, 15}));
  EXPECT_NE(t->describe().find("world 16 = pipeline 4 x data 2 x tensor 2"), std::string::npos);
}

TEST(Topology, EveryShapeIsABijectionWithConsistentGroups) {
  for (int world : {1, 2, 4, 6, 8, 12, 16, 24}) {
    for (int tp = 1; tp <= world; ++tp) {
      for (int pp = 1; pp <= world; ++pp) {
        auto t = Topology::create(world, tp, pp);
        if (world % (tp * pp) != 0) {
          EXPECT_FALSE(t.is_ok());
          continue;
        }
        ASSERT_TRUE(t.is_ok());
        std::set<std::tuple<int, int, int>> seen;
        for (int r = 0; r < world; ++r) {
          const RankCoord c = t->coord(r);
          EXPECT_EQ(t->rank_of(c), r);
          seen.insert({c.stage, c.data, c.tensor});
          EXPECT_EQ(t->tensor_group(r).size(), static_cast<size_t>(tp));
          EXPECT_EQ(t->data_group(r).size(), static_cast<size_t>(t->dp()));
          EXPECT_EQ(t->pipeline_group(r).size(), static_cast<size_t>(pp));
          for (int32_t o : t->tensor_group(r)) {  // same group seen from each member
            EXPECT_EQ(t->tensor_group(o), t->tensor_group(r));
          }
        }
        EXPECT_EQ(seen.size(), static_cast<size_t>(world));
      }
    }
  }
  auto bad = Topology::create(6, 4, 1);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("6"), std::string::npos);
}

}  // namespace
}  // namespace qilin

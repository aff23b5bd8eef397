// The NCCL Communicator: on GPU ranks (one device each), every collective against the value
// each rank computes alone; without a GPU, the clear error. Run by the MPI test binary.
#include <gtest/gtest.h>

#include <vector>

#include "dist/comm.h"

#ifdef QILIN_HAVE_NCCL
#include <cuda_runtime.h>
#endif

namespace qilin {
namespace {

TEST(CommNccl, CollectivesOnGpusOrAClearError) {
  if (!nccl_available()) {
    GTEST_SKIP() << "built without NCCL";
  }
#ifdef QILIN_HAVE_NCCL
  auto mpi = mpi_world();
  ASSERT_TRUE(mpi.is_ok()) << mpi.status().message();
  Communicator& boot = **mpi;
  int n_dev = 0;
  if (cudaGetDeviceCount(&n_dev) != cudaSuccess) n_dev = 0;
  auto c = nccl_world(boot, boot.rank());
  if (boot.rank() >= n_dev) {
    ASSERT_FALSE(c.is_ok());
    const std::string m = c.status().message();
    EXPECT_TRUE(m.find("has no CUDA device") != std::string::npos ||
                m.find("this machine has") != std::string::npos)
        << m;
    std::printf("rank %d: %s\n", boot.rank(), m.c_str());
    return;
  }
  ASSERT_TRUE(c.is_ok()) << c.status().message();
  Communicator& nc = **c;
  const int n = nc.size(), r = nc.rank();
  const int64_t k = 1000;
  float* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, sizeof(float) * k * (n + 1)), cudaSuccess);
  std::vector<float> h(k * n);
  for (int64_t i = 0; i < k; ++i) h[i] = static_cast<float>(i + r);
  ASSERT_EQ(cudaMemcpy(d, h.data(), sizeof(float) * k, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_TRUE(nc.all_reduce(d, k).is_ok());
  ASSERT_EQ(cudaMemcpy(h.data(), d, sizeof(float) * k, cudaMemcpyDeviceToHost), cudaSuccess);
  for (int64_t i = 0; i < k; i += 97)
    EXPECT_EQ(h[i], n * static_cast<float>(i) + n * (n - 1) / 2.0f);
  ASSERT_TRUE(nc.all_gather(d, d + k, k).is_ok());
  ASSERT_EQ(cudaMemcpy(h.data(), d + k, sizeof(float) * k * n, cudaMemcpyDeviceToHost),
            cudaSuccess);
  for (int q = 0; q < n; ++q) EXPECT_EQ(h[q * k + 5], n * 5.0f + n * (n - 1) / 2.0f);
  ASSERT_TRUE(nc.broadcast(d, k, 0).is_ok());
  ASSERT_TRUE(nc.barrier().is_ok());
  auto sub = nc.subgroup({r});  // each rank alone
  ASSERT_TRUE(sub.is_ok()) << sub.status().message();
  EXPECT_EQ((*sub)->size(), 1);
  EXPECT_EQ(nc.stats().all_reduce, k * sizeof(float));
  cudaFree(d);
  std::printf("rank %d of %d: NCCL all_reduce, all_gather, broadcast, barrier, split on cuda:%d\n",
              r, n, r);
#endif
}

}  // namespace
}  // namespace qilin

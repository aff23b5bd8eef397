// NCCL backend of the Communicator, for GPU ranks: built when CMake finds the CUDA toolkit and
// NCCL (QILIN_HAVE_NCCL); otherwise nccl_world() says so. Buffers are device memory. Each call
// is enqueued on the communicator's stream and then waited for, polling so that a peer that
// died or stopped is an error after timeout_s() (the communicator is then aborted), not a hang.
#include "dist/comm.h"

#ifdef QILIN_HAVE_NCCL
#include <cuda_runtime.h>
#include <nccl.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>

namespace qilin {
namespace {

Status cuda_check(cudaError_t rc, const char* call) {
  if (rc == cudaSuccess) return Status::ok();
  return errorf("cuda: %s failed: %s", call, cudaGetErrorString(rc));
}
Status nccl_check(ncclResult_t rc, const char* call) {
  if (rc == ncclSuccess) return Status::ok();
  return errorf("nccl: %s failed: %s", call, ncclGetErrorString(rc));
}
#define QILIN_CUDA(call) QILIN_TRY(cuda_check((call), #call))
#define QILIN_NCCL(call) QILIN_TRY(nccl_check((call), #call))

class NcclComm : public Communicator {
 public:
  NcclComm(ncclComm_t c, cudaStream_t s) : comm_(c), stream_(s) {
    ncclCommUserRank(comm_, &rank_);
    ncclCommCount(comm_, &size_);
    if (const char* t = std::getenv("QILIN_COMM_TIMEOUT_S"); t && *t) timeout_s_ = std::atof(t);
  }
  ~NcclComm() override {
    if (comm_) ncclCommDestroy(comm_);
    if (stream_) cudaStreamDestroy(stream_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  Status all_reduce(float* data, int64_t n, ReduceOp op) override {
    count(stats_.all_reduce, n);
    QILIN_NCCL(ncclAllReduce(data, data, n, ncclFloat, op == ReduceOp::Sum ? ncclSum : ncclMax,
                             comm_, stream_));
    return wait("all_reduce");
  }
  Status reduce_scatter(const float* in, float* out, int64_t n) override {
    count(stats_.reduce_scatter, n * size_);
    QILIN_NCCL(ncclReduceScatter(in, out, n, ncclFloat, ncclSum, comm_, stream_));
    return wait("reduce_scatter");
  }
  Status all_gather(const float* in, float* out, int64_t n) override {
    count(stats_.all_gather, n);
    QILIN_NCCL(ncclAllGather(in, out, n, ncclFloat, comm_, stream_));
    return wait("all_gather");
  }
  Status broadcast(float* data, int64_t n, int root) override {
    count(stats_.broadcast, n);
    QILIN_NCCL(ncclBroadcast(data, data, n, ncclFloat, root, comm_, stream_));
    return wait("broadcast");
  }
  // NCCL has no tags: messages between two ranks arrive in the order they were sent.
  Status send(const float* data, int64_t n, int peer, int /*tag*/) override {
    count(stats_.send, n);
    QILIN_NCCL(ncclSend(data, n, ncclFloat, peer, comm_, stream_));
    return wait("send");
  }
  Status recv(float* data, int64_t n, int peer, int /*tag*/) override {
    count(stats_.recv, n);
    QILIN_NCCL(ncclRecv(data, n, ncclFloat, peer, comm_, stream_));
    return wait("recv");
  }
  Status barrier() override {
    ++stats_.calls;
    if (!scratch_) QILIN_CUDA(cudaMalloc(&scratch_, sizeof(float)));
    QILIN_NCCL(ncclAllReduce(scratch_, scratch_, 1, ncclFloat, ncclSum, comm_, stream_));
    return wait("barrier");
  }
  Result<std::unique_ptr<Communicator>> subgroup(const std::vector<int32_t>& ranks) override {
    auto it = std::find(ranks.begin(), ranks.end(), rank_);
    if (it == ranks.end())
      return errorf("nccl: rank %d is not in the subgroup it asked for", rank_);
    ncclComm_t sub = nullptr;
    QILIN_NCCL(ncclCommSplit(comm_, *std::min_element(ranks.begin(), ranks.end()),
                             static_cast<int>(it - ranks.begin()), &sub, nullptr));
    cudaStream_t s = nullptr;
    QILIN_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    std::unique_ptr<Communicator> c(new NcclComm(sub, s));
    if (c->size() != static_cast<int>(ranks.size())) {
      return errorf("nccl: subgroup has %d ranks, asked for %zu (ranks disagree on the groups)",
                    c->size(), ranks.size());
    }
    return c;
  }
  [[noreturn]] void abort(int code) override {
    std::fflush(stdout);
    std::fflush(stderr);
    ncclCommAbort(comm_);
    comm_ = nullptr;
    std::_Exit(code);  // the launcher then ends the other ranks
  }

 private:
  // Waits for the stream, or fails after timeout_s_ (aborting the communicator, which unblocks
  // the kernel) or when NCCL reports an asynchronous error (a peer's connection broke).
  Status wait(const char* call) {
    const auto t0 = std::chrono::steady_clock::now();
    for (;;) {
      const cudaError_t q = cudaStreamQuery(stream_);
      if (q == cudaSuccess) return Status::ok();
      if (q != cudaErrorNotReady) return cuda_check(q, call);
      ncclResult_t async = ncclSuccess;
      QILIN_NCCL(ncclCommGetAsyncError(comm_, &async));
      if (async != ncclSuccess) {
        ncclCommAbort(comm_);
        comm_ = nullptr;
        return errorf("nccl: %s on rank %d failed: %s", call, rank_, ncclGetErrorString(async));
      }
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (timeout_s_ > 0 && s > timeout_s_) {
        ncclCommAbort(comm_);
        comm_ = nullptr;
        return errorf(
            "nccl: %s on rank %d of %d waited %.0f s for the other ranks: one stopped "
            "or died (QILIN_COMM_TIMEOUT_S=%g)",
            call, rank_, size_, s, timeout_s_);
      }
      sched_yield();
    }
  }
  void count(uint64_t& field, int64_t n) {
    field += static_cast<uint64_t>(n) * sizeof(float);
    ++stats_.calls;
  }
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  float* scratch_ = nullptr;
  int rank_ = 0, size_ = 1;
};

}  // namespace

bool nccl_available() { return true; }

Result<std::unique_ptr<Communicator>> nccl_world(Communicator& bootstrap, int device) {
  int n_dev = 0;
  const cudaError_t rc = cudaGetDeviceCount(&n_dev);
  if (rc != cudaSuccess || n_dev == 0) {
    return errorf("nccl: rank %d has no CUDA device (cudaGetDeviceCount: %s)", bootstrap.rank(),
                  rc == cudaSuccess ? "0 devices" : cudaGetErrorString(rc));
  }
  if (device < 0 || device >= n_dev) {
    return errorf("nccl: rank %d asked for cuda:%d, this machine has %d devices", bootstrap.rank(),
                  device, n_dev);
  }
  QILIN_CUDA(cudaSetDevice(device));
  // The unique id travels over the bootstrap transport one byte per float (exact).
  ncclUniqueId id;
  float bytes[sizeof id.internal];
  if (bootstrap.rank() == 0) {
    QILIN_NCCL(ncclGetUniqueId(&id));
    for (size_t i = 0; i < sizeof id.internal; ++i)
      bytes[i] = static_cast<unsigned char>(id.internal[i]);
  }
  QILIN_TRY(bootstrap.broadcast(bytes, sizeof id.internal, 0));
  for (size_t i = 0; i < sizeof id.internal; ++i) {
    id.internal[i] = static_cast<char>(static_cast<unsigned char>(bytes[i]));
  }
  ncclComm_t comm = nullptr;
  QILIN_NCCL(ncclCommInitRank(&comm, bootstrap.size(), id, bootstrap.rank()));
  cudaStream_t s = nullptr;
  QILIN_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return std::unique_ptr<Communicator>(new NcclComm(comm, s));
}

}  // namespace qilin

#else  // !QILIN_HAVE_NCCL

namespace qilin {
bool nccl_available() { return false; }
Result<std::unique_ptr<Communicator>> nccl_world(Communicator&, int) {
  return errorf(
      "this qilin was built without NCCL (it needs the CUDA toolkit and NCCL at build "
      "time)");
}
}  // namespace qilin

#endif

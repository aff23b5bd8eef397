// MPI backend of the Communicator (OpenMPI from Debian). Built when CMake finds MPI
// (QILIN_HAVE_MPI); otherwise mpi_world() says so.
#include "dist/comm.h"

#ifdef QILIN_HAVE_MPI
// The C API only: OpenMPI's deprecated C++ bindings need their own library.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>

namespace qilin {
namespace {

Status mpi_check(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return Status::ok();
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  return errorf("mpi: %s failed: %s", call, msg);
}
#define QILIN_MPI(call) QILIN_TRY(mpi_check((call), #call))

class MpiComm : public Communicator {
 public:
  explicit MpiComm(MPI_Comm c, bool owned) : comm_(c), owned_(owned) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    // Errors come back as codes (then Status), not as an abort without a message.
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    if (const char* t = std::getenv("QILIN_COMM_TIMEOUT_S"); t && *t) timeout_s_ = std::atof(t);
  }
  ~MpiComm() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !finalized) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  Status all_reduce(float* data, int64_t n, ReduceOp op) override {
    QILIN_TRY(check_count(n, "all_reduce"));
    count(stats_.all_reduce, n);
    MPI_Request req;
    QILIN_MPI(MPI_Iallreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_FLOAT,
                             op == ReduceOp::Sum ? MPI_SUM : MPI_MAX, comm_, &req));
    return wait(&req, "all_reduce", -1);
  }
  Status reduce_scatter(const float* in, float* out, int64_t n) override {
    QILIN_TRY(check_count(n * size_, "reduce_scatter"));
    count(stats_.reduce_scatter, n * size_);
    MPI_Request req;
    QILIN_MPI(MPI_Ireduce_scatter_block(in, out, static_cast<int>(n), MPI_FLOAT, MPI_SUM, comm_, &req));
    return wait(&req, "reduce_scatter", -1);
  }
  Status all_gather(const float* in, float* out, int64_t n) override {
    QILIN_TRY(check_count(n * size_, "all_gather"));
    count(stats_.all_gather, n);
    MPI_Request req;
    QILIN_MPI(MPI_Iallgather(in, static_cast<int>(n), MPI_FLOAT, out, static_cast<int>(n), MPI_FLOAT, comm_, &req));
    return wait(&req, "all_gather", -1);
  }
  Status broadcast(float* data, int64_t n, int root) override {
    QILIN_TRY(check_count(n, "broadcast"));
    count(stats_.broadcast, n);
    MPI_Request req;
    QILIN_MPI(MPI_Ibcast(data, static_cast<int>(n), MPI_FLOAT, root, comm_, &req));
    return wait(&req, "broadcast", root);
  }
  Status send(const float* data, int64_t n, int peer, int tag) override {
    QILIN_TRY(check_count(n, "send"));
    count(stats_.send, n);
    MPI_Request req;
    QILIN_MPI(MPI_Isend(data, static_cast<int>(n), MPI_FLOAT, peer, tag, comm_, &req));
    return wait(&req, "send", peer);
  }
  Status recv(float* data, int64_t n, int peer, int tag) override {
    QILIN_TRY(check_count(n, "recv"));
    count(stats_.recv, n);
    MPI_Request req;
    QILIN_MPI(MPI_Irecv(data, static_cast<int>(n), MPI_FLOAT, peer, tag, comm_, &req));
    MPI_Status st;
    QILIN_TRY(wait(&req, "recv", peer, &st));
    int got = 0;
    MPI_Get_count(&st, MPI_FLOAT, &got);
    if (got != n) return errorf("mpi: recv from rank %d expected %lld floats, got %d", peer, static_cast<long long>(n), got);
    return Status::ok();
  }
  Status barrier() override {
    ++stats_.calls;
    MPI_Request req;
    QILIN_MPI(MPI_Ibarrier(comm_, &req));
    return wait(&req, "barrier", -1);
  }
  [[noreturn]] void abort(int code) override {
    std::fflush(stdout);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);  // MPI_Abort does not return; this keeps [[noreturn]] honest
  }
  Result<std::unique_ptr<Communicator>> subgroup(const std::vector<int32_t>& ranks) override {
    // Color: the group's smallest rank (identical for every member); key: position in it.
    auto it = std::find(ranks.begin(), ranks.end(), rank_);
    if (it == ranks.end()) return errorf("mpi: rank %d is not in the subgroup it asked for", rank_);
    const int color = *std::min_element(ranks.begin(), ranks.end());
    MPI_Comm sub;
    QILIN_MPI(MPI_Comm_split(comm_, color, static_cast<int>(it - ranks.begin()), &sub));
    std::unique_ptr<Communicator> c(new MpiComm(sub, true));
    if (c->size() != static_cast<int>(ranks.size())) {
      return errorf("mpi: subgroup has %d ranks, asked for %zu (ranks disagree on the groups)", c->size(), ranks.size());
    }
    return c;
  }

 private:
  // Completes req, or fails after timeout_s_ naming the call and the peer it waited for (-1: a
  // collective). Polls instead of MPI_Wait so that a rank that died or stopped calling is an
  // error, not a hang; yields between polls because ranks may share cores.
  Status wait(MPI_Request* req, const char* call, int peer, MPI_Status* st = MPI_STATUS_IGNORE) {
    if (timeout_s_ <= 0) {
      QILIN_MPI(MPI_Wait(req, st));
      return Status::ok();
    }
    const auto t0 = std::chrono::steady_clock::now();
    for (uint32_t polls = 0;; ++polls) {
      int done = 0;
      QILIN_MPI(MPI_Test(req, &done, st));
      if (done) return Status::ok();
      if (polls % 64 == 63) {
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (s > timeout_s_) {
          if (peer >= 0) {
            return errorf("mpi: %s on rank %d waited %.0f s for rank %d: it stopped or died "
                          "(QILIN_COMM_TIMEOUT_S=%g)", call, rank_, s, peer, timeout_s_);
          }
          return errorf("mpi: %s on rank %d of %d waited %.0f s for the other ranks: one "
                        "stopped or died (QILIN_COMM_TIMEOUT_S=%g)", call, rank_, size_, s, timeout_s_);
        }
      }
      sched_yield();
    }
  }
  static Status check_count(int64_t n, const char* call) {
    if (n < 0 || n > 0x7fffffff) return errorf("mpi: %s of %lld floats is beyond MPI's int counts", call, static_cast<long long>(n));
    return Status::ok();
  }
  void count(uint64_t& field, int64_t n) {
    field += static_cast<uint64_t>(n) * sizeof(float);
    ++stats_.calls;
  }
  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
};

}  // namespace

bool mpi_available() { return true; }

Result<std::unique_ptr<Communicator>> mpi_world() {
  static std::once_flag once;
  static Status init_status;
  std::call_once(once, [] {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      int provided = 0;
      // SERIALIZED: one thread at a time, but not always the one that initialized (the serving
      // engine's step thread runs the forward calls).
      init_status = mpi_check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
      if (init_status && provided < MPI_THREAD_SERIALIZED) {
        init_status = errorf("mpi: the MPI library gives thread level %d, Qilin needs "
                             "MPI_THREAD_SERIALIZED", provided);
      }
      if (init_status) std::atexit([] {
        int fin = 0;
        MPI_Finalized(&fin);
        if (!fin) MPI_Finalize();
      });
    }
  });
  QILIN_TRY(init_status);
  return std::unique_ptr<Communicator>(new MpiComm(MPI_COMM_WORLD, false));
}

}  // namespace qilin

#else  // !QILIN_HAVE_MPI

namespace qilin {
bool mpi_available() { return false; }
Result<std::unique_ptr<Communicator>> mpi_world() {
  return errorf("this qilin was built without MPI (install libopenmpi-dev and rebuild)");
}
}  // namespace qilin

#endif

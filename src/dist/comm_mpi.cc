// MPI backend of the Communicator (OpenMPI from Debian). Built when CMake finds MPI
// (QILIN_HAVE_MPI); otherwise mpi_world() says so.
#include "dist/comm.h"

#ifdef QILIN_HAVE_MPI
// The C API only: OpenMPI's deprecated C++ bindings need their own library.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
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
    QILIN_MPI(MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_FLOAT,
                            op == ReduceOp::Sum ? MPI_SUM : MPI_MAX, comm_));
    return Status::ok();
  }
  Status reduce_scatter(const float* in, float* out, int64_t n) override {
    QILIN_TRY(check_count(n * size_, "reduce_scatter"));
    count(stats_.reduce_scatter, n * size_);
    QILIN_MPI(MPI_Reduce_scatter_block(in, out, static_cast<int>(n), MPI_FLOAT, MPI_SUM, comm_));
    return Status::ok();
  }
  Status all_gather(const float* in, float* out, int64_t n) override {
    QILIN_TRY(check_count(n * size_, "all_gather"));
    count(stats_.all_gather, n);
    QILIN_MPI(MPI_Allgather(in, static_cast<int>(n), MPI_FLOAT, out, static_cast<int>(n), MPI_FLOAT, comm_));
    return Status::ok();
  }
  Status broadcast(float* data, int64_t n, int root) override {
    QILIN_TRY(check_count(n, "broadcast"));
    count(stats_.broadcast, n);
    QILIN_MPI(MPI_Bcast(data, static_cast<int>(n), MPI_FLOAT, root, comm_));
    return Status::ok();
  }
  Status send(const float* data, int64_t n, int peer, int tag) override {
    QILIN_TRY(check_count(n, "send"));
    count(stats_.send, n);
    QILIN_MPI(MPI_Send(data, static_cast<int>(n), MPI_FLOAT, peer, tag, comm_));
    return Status::ok();
  }
  Status recv(float* data, int64_t n, int peer, int tag) override {
    QILIN_TRY(check_count(n, "recv"));
    count(stats_.recv, n);
    MPI_Status st;
    QILIN_MPI(MPI_Recv(data, static_cast<int>(n), MPI_FLOAT, peer, tag, comm_, &st));
    int got = 0;
    MPI_Get_count(&st, MPI_FLOAT, &got);
    if (got != n) return errorf("mpi: recv from rank %d expected %lld floats, got %d", peer, static_cast<long long>(n), got);
    return Status::ok();
  }
  Status barrier() override {
    ++stats_.calls;
    QILIN_MPI(MPI_Barrier(comm_));
    return Status::ok();
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
      init_status = mpi_check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
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

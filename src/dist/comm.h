// Communicator: the collectives and point-to-point calls that tensor, pipeline and data
// parallelism use, and nothing else touches the transport. Backends: MPI for CPU ranks
// (OpenMPI), NCCL for GPU ranks. Every call is checked and returns a Status naming the
// call and the transport's error; payload bytes are counted per kind for the benchmarks.
// NOTE: a call that waits longer than timeout_s() for its peers fails with an error saying so
// (a rank that stopped or died); the caller should then abort() the job, because the other
// ranks may be inside the same collective and MPI cannot cancel it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "qilin/status.h"

namespace qilin {

enum class ReduceOp { Sum, Max };

struct CommStats {
  // Payload bytes this rank handed to each kind of call (its input buffer sizes).
  uint64_t all_reduce = 0, reduce_scatter = 0, all_gather = 0, broadcast = 0, send = 0, recv = 0;
  uint64_t calls = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual Status all_reduce(float* data, int64_t n, ReduceOp op = ReduceOp::Sum) = 0;  // in place
  // out[n] = sum over ranks of in[rank() * n .. (rank() + 1) * n)
  virtual Status reduce_scatter(const float* in /*[size * n]*/, float* out /*[n]*/, int64_t n) = 0;
  virtual Status all_gather(const float* in /*[n]*/, float* out /*[size * n]*/, int64_t n) = 0;
  virtual Status broadcast(float* data, int64_t n, int root) = 0;
  virtual Status send(const float* data, int64_t n, int peer, int tag = 0) = 0;
  virtual Status recv(float* data, int64_t n, int peer, int tag = 0) = 0;
  virtual Status barrier() = 0;
  // A communicator over `ranks` (this rank must be one of them; every member calls it with
  // the same list, every other rank of this communicator calls it with its own group).
  virtual Result<std::unique_ptr<Communicator>> subgroup(const std::vector<int32_t>& ranks) = 0;
  // Ends every rank of the job (MPI_Abort), after the caller printed why. Returning an error
  // code from main instead would finalize this rank and leave the others waiting.
  [[noreturn]] virtual void abort(int code) = 0;
  const CommStats& stats() const { return stats_; }
  // Seconds a call may wait for its peers (0: forever). Default: QILIN_COMM_TIMEOUT_S or 300.
  double timeout_s() const { return timeout_s_; }
  void set_timeout_s(double s) { timeout_s_ = s; }

 protected:
  CommStats stats_;
  double timeout_s_ = 300;
};

// The MPI world (MPI_Init on first use, MPI_Finalize at exit). An error when Qilin was built
// without MPI.
Result<std::unique_ptr<Communicator>> mpi_world();
bool mpi_available();

// NCCL over GPU ranks, one device each: bootstrap's ranks (usually mpi_world(), over which the
// NCCL unique id travels), this one on cuda:device. Buffers given to its calls are device
// memory. An error when Qilin was built without NCCL or this rank has no such GPU.
Result<std::unique_ptr<Communicator>> nccl_world(Communicator& bootstrap, int device);
bool nccl_available();

}  // namespace qilin

// --tp / --pp / --device-map: see parallel.h.
#include "parallel.h"

#include <cstdio>

#include "common.h"
#include "core/thread_pool.h"
#include "dist/device_map.h"

namespace qilin::cli {

void add_parallel(CLI::App* app, ParallelCli& p) {
  app->add_option("--tp", p.tp,
                  "tensor-parallel ranks (under mpirun; heads, FFN and vocabulary "
                  "split across them)")
      ->check(CLI::Range(1, 1024));
  app->add_option("--pp", p.pp,
                  "pipeline-parallel stages (under mpirun; layers split across "
                  "them, micro-batches in flight)")
      ->check(CLI::Range(1, 1024));
  app->add_option("--micro-batches", p.micro_batches,
                  "pieces each batch is cut into for the pipeline (default: --pp)")
      ->check(CLI::Range(1, 1 << 16));
  app->add_flag("--tp-exact", p.tp_exact,
                "attention output and down projections column-parallel on gathered inputs: the "
                "same logits as one process bit for bit (4 all-gathers a layer instead of 2 "
                "all-reduces)");
  app->add_option("--device-map", p.device_map,
                  "layers per device or pipeline stage: 0-14:cpu,15-29:cpu or "
                  "0-9:stage:1,10-29:stage:2 (stages from 1)");
}

WeightPlacement placement_for(const Common& c, const ParallelCli& p) {
  return p.wanted() && !c.no_mmap ? WeightPlacement::Mapped : placement_of(c);
}

Result<std::unique_ptr<ParallelRun>> ParallelRun::start(const ParallelCli& p, LlamaModel& model,
                                                        int n_threads) {
  if (!p.wanted()) return std::unique_ptr<ParallelRun>();
  ParallelOptions o;
  o.tp = p.tp;
  o.pp = p.pp;
  o.micro_batches = p.micro_batches;
  o.exact = p.tp_exact;
  if (!p.device_map.empty()) {
    auto map = parse_device_map(p.device_map, model.hparams().n_layer);
    QILIN_TRY(map);
    auto first = stage_boundaries(*map, p.pp);
    QILIN_TRY(first);
    if (p.pp > 1) o.stage_first = *first;
  }
  if (p.tp * p.pp == 1) return std::unique_ptr<ParallelRun>();  // a valid all-cpu map: one process
  std::unique_ptr<ParallelRun> r(new ParallelRun());
  auto world = mpi_world();
  QILIN_TRY(world);
  r->world_ = std::move(*world);
  auto par = ParallelLlama::create(model, *r->world_, o);
  if (!par) {
    // Every rank fails alike (same model, same options), so each may say so and stop.
    return errorf("rank %d: %s", r->world_->rank(), par.status().message().c_str());
  }
  r->par_ = *par;
  r->model_ = &model;
  r->n_threads_ = n_threads;
  if (r->par_->driver()) model.set_distributed(r->par_);
  return r;
}

int ParallelRun::follow() {
  ThreadPool pool(n_threads_);
  if (Status s = par_->follow(pool); !s) {
    fail("rank " + std::to_string(world_->rank()) + ": " + s.message());
    world_->abort(1);
  }
  print_stats();
  return 0;
}

ParallelRun::~ParallelRun() {
  if (!par_ || !par_->driver()) return;
  model_->set_distributed(nullptr);
  if (Status s = par_->finish(); !s) {
    fail("rank 0: " + s.message());
    world_->abort(1);
  }
  print_stats();
}

void ParallelRun::print_stats() const {
  const ShardPlan& p = par_->plan();
  const CommStats s = par_->comm_stats();
  std::fprintf(
      stderr,
      "rank %d (stage %d, tensor %d): layers %d-%d, heads %d-%d, ffn %d-%d, vocab "
      "%d-%d; weights %.2f MiB of %.2f MiB; bytes all_reduce %llu all_gather %llu "
      "broadcast %llu send %llu recv %llu in %llu calls\n",
      world_->rank(), p.stage + 1, p.tensor, p.layer0, p.layer1 - 1, p.head0,
      p.head0 + p.n_head - 1, p.ff0, p.ff0 + p.n_ff - 1, p.vocab0, p.vocab0 + p.n_vocab - 1,
      par_->weight_bytes() / 1048576.0, model_->weight_bytes() / 1048576.0,
      static_cast<unsigned long long>(s.all_reduce), static_cast<unsigned long long>(s.all_gather),
      static_cast<unsigned long long>(s.broadcast), static_cast<unsigned long long>(s.send),
      static_cast<unsigned long long>(s.recv), static_cast<unsigned long long>(s.calls));
}

}  // namespace qilin::cli

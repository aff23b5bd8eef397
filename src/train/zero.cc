// ZeroOptimizer: see zero.h.
#include "train/zero.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "core/assert.h"
#include "core/fp16.h"

namespace qilin::train {

namespace {

bool is16(Precision p) { return p != Precision::F32; }

// Collectives that are copies (or nothing) on one rank, so that --zero runs without mpirun.
Status all_reduce(Communicator* c, float* x, int64_t n) {
  return c && c->size() > 1 ? c->all_reduce(x, n) : Status::ok();
}
Status reduce_scatter(Communicator* c, const float* in, float* out, int64_t n) {
  if (c && c->size() > 1) return c->reduce_scatter(in, out, n);
  std::copy_n(in, n, out);
  return Status::ok();
}
Status all_gather(Communicator* c, const float* in, float* out, int64_t n) {
  if (c && c->size() > 1) return c->all_gather(in, out, n);
  std::copy_n(in, n, out);
  return Status::ok();
}

CommStats minus(const CommStats& a, const CommStats& b) {
  CommStats d;
  d.all_reduce = a.all_reduce - b.all_reduce;
  d.reduce_scatter = a.reduce_scatter - b.reduce_scatter;
  d.all_gather = a.all_gather - b.all_gather;
  d.broadcast = a.broadcast - b.broadcast;
  d.send = a.send - b.send;
  d.recv = a.recv - b.recv;
  d.calls = a.calls - b.calls;
  return d;
}

}  // namespace

ZeroFormula zero_formula(int stage, Precision prec, bool offload, double psi, int n) {
  const double b = is16(prec) ? 2 : 4, k = is16(prec) || offload ? 12 : 8;
  ZeroFormula f;
  f.params = stage >= 3 ? b * psi / n : b * psi;
  f.grads = stage >= 2 ? b * psi / n : b * psi;
  f.optimizer = stage >= 1 ? k * psi / n : k * psi;
  return f;
}

double ring_bytes(const CommStats& s, int n) {
  if (n <= 1) return 0;
  const double f = static_cast<double>(n - 1) / n;
  return 2.0 * s.all_reduce * f + s.reduce_scatter * f +
         static_cast<double>(s.all_gather) * (n - 1) + static_cast<double>(s.broadcast) +
         static_cast<double>(s.send);
}

// ---- typed buffers ----

void ZeroOptimizer::TypedBuffer::resize(size_t n) {
  if (is16(prec)) {
    h.assign(n, 0);
  } else {
    f.assign(n, 0.0f);
  }
}
void ZeroOptimizer::TypedBuffer::load(size_t off, float* dst, int64_t n) const {
  if (is16(prec)) {
    unpack16(prec, h.data() + off, n, dst);
  } else {
    std::copy_n(f.data() + off, n, dst);
  }
}
void ZeroOptimizer::TypedBuffer::store(size_t off, const float* src, int64_t n) {
  if (is16(prec)) {
    pack16(prec, src, n, h.data() + off);
  } else {
    std::copy_n(src, n, f.data() + off);
  }
}
void ZeroOptimizer::TypedBuffer::add(size_t off, const float* src, int64_t n) {
  if (is16(prec)) {
    for (int64_t i = 0; i < n; ++i) {
      float x = prec == Precision::BF16 ? bf16_to_fp32(h[off + i]) : fp16_to_fp32(h[off + i]);
      x += src[i];
      pack16(prec, &x, 1, &h[off + i]);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) f[off + i] += src[i];
  }
}
void ZeroOptimizer::TypedBuffer::zero() {
  std::fill(f.begin(), f.end(), 0.0f);
  std::fill(h.begin(), h.end(), uint16_t{0});
}

// ---- optimizers: AdamW over this rank's pieces ----

using GradFn = std::function<void(size_t span, float* g)>;

class ZeroOptimizer::Optimizer {
 public:
  virtual ~Optimizer() = default;
  // Updates the parameters of spans from their FP32 gradients (grad(i, g) writes span i's).
  virtual void step(const std::vector<Span>& spans, const GradFn& grad, TypedBuffer& params,
                    int64_t t, const AdamWConfig& c, float lr) = 0;
  // The FP32 values of span's parameters (the master copy).
  virtual const float* master(const Span& s, const TypedBuffer& params) const = 0;
  virtual size_t state_bytes() const = 0;
  virtual size_t host_grad_bytes() const { return 0; }
  virtual size_t scratch_bytes() const { return 0; }
};

// States beside the compute copy. FP32 parameters are their own master; 16-bit ones have an FP32
// master here, rounded into the compute copy after each update.
class ZeroOptimizer::DeviceAdamW : public ZeroOptimizer::Optimizer {
 public:
  DeviceAdamW(size_t n_states, bool master, int64_t max_span, const float* init,
              const std::vector<Span>& spans)
      : m_(n_states, 0.0f), v_(n_states, 0.0f), g_(max_span) {
    if (!master) return;
    master_.assign(n_states, 0.0f);
    for (size_t i = 0; i < spans.size(); ++i)
      std::copy_n(init + spans[i].state, spans[i].n, master_.data() + spans[i].state);
  }
  void step(const std::vector<Span>& spans, const GradFn& grad, TypedBuffer& params, int64_t t,
            const AdamWConfig& c, float lr) override {
    for (size_t i = 0; i < spans.size(); ++i) {
      const Span& s = spans[i];
      grad(i, g_.data());
      if (master_.empty()) {
        adamw_step(params.f.data() + s.param, g_.data(), s.n, m_.data() + s.state,
                   v_.data() + s.state, t, c, lr);
      } else {
        float* p = master_.data() + s.state;
        adamw_step(p, g_.data(), s.n, m_.data() + s.state, v_.data() + s.state, t, c, lr);
        params.store(s.param, p, s.n);
      }
    }
  }
  const float* master(const Span& s, const TypedBuffer& params) const override {
    return master_.empty() ? params.f.data() + s.param : master_.data() + s.state;
  }
  size_t state_bytes() const override {
    return (master_.capacity() + m_.capacity() + v_.capacity()) * sizeof(float);
  }
  size_t scratch_bytes() const override { return g_.capacity() * sizeof(float); }

 private:
  std::vector<float> master_, m_, v_;  // [n_states]
  std::vector<float> g_;               // one span's FP32 gradients
};

// ZeRO-Offload's split: the FP32 master, m and v and the update live on the host, in their own
// buffer; the compute copy (16-bit or FP32) stays on the device. A step copies the gradients
// to the host (as FP32), runs AdamW over the host partition in one pass, and copies the
// updated parameters back (rounded to the compute type).
// NOTE: on a CPU-only build "device" and "host" are both host memory; the split, the copies
// and the sizes are real, the transfer cost over a bus is not there to measure.
class ZeroOptimizer::HostOptimizer : public ZeroOptimizer::Optimizer {
 public:
  HostOptimizer(size_t n_states, const float* init, const std::vector<Span>& spans)
      : host_(n_states * 4, 0.0f) {
    for (const auto& s : spans) std::copy_n(init + s.state, s.n, master() + s.state);
  }
  void step(const std::vector<Span>& spans, const GradFn& grad, TypedBuffer& params, int64_t t,
            const AdamWConfig& c, float lr) override {
    for (size_t i = 0; i < spans.size(); ++i) grad(i, grads() + spans[i].state);  // device -> host
    const int64_t n = static_cast<int64_t>(host_.size() / 4);
    adamw_step(master(), grads(), n, m(), v(), t, c, lr);  // the host's update, one pass
    for (const auto& s : spans) params.store(s.param, master() + s.state, s.n);  // host -> device
  }
  const float* master(const Span& s, const TypedBuffer&) const override {
    return host_.data() + s.state;
  }
  size_t state_bytes() const override { return host_.capacity() * sizeof(float) * 3 / 4; }
  size_t host_grad_bytes() const override { return host_.capacity() * sizeof(float) / 4; }

 private:
  // One host allocation: [master | m | v | gradients], each [n_states].
  float* master() { return host_.data(); }
  float* m() { return host_.data() + host_.size() / 4; }
  float* v() { return host_.data() + host_.size() / 2; }
  float* grads() { return host_.data() + host_.size() / 4 * 3; }
  std::vector<float> host_;
};

// ---- layout ----

size_t ZeroOptimizer::full_off(int32_t il) const { return full_off_[il]; }
size_t ZeroOptimizer::piece_off(int32_t il) const { return piece_off_[il]; }
int64_t ZeroOptimizer::piece(int32_t il) const { return (n_layer_[il] + n_ - 1) / n_; }

ZeroOptimizer::Span ZeroOptimizer::owned(int32_t il) const {
  const size_t mine = full_off(il) + static_cast<size_t>(rank_ * piece(il));
  Span s;
  s.n = piece(il);
  switch (cfg_.stage) {
    case 0:  // everything, redundantly on every rank
      s.param = s.grad = s.state = full_off(il);
      s.n = piece(il) * n_;
      break;
    case 1:
      s.param = s.grad = mine;
      s.state = piece_off(il);
      break;
    case 2:
      s.param = mine;
      s.grad = s.state = piece_off(il);
      break;
    default:
      s.param = s.grad = s.state = piece_off(il);
  }
  return s;
}

// A layer's tensors laid end to end: for each adapted projection, A then B.
void ZeroOptimizer::to_layer(const float* flat, LoraLayer<float>& l, int32_t il) const {
  const LoraConfig& lc = model_->lora_config();
  const int64_t r = lc.rank;
  size_t o = 0;
  for (int p = 0; p < kNumProj; ++p) {
    if (!lc.targets[p]) continue;
    l.A[p].assign(flat + o, flat + o + r * model_->proj_in(p));
    o += l.A[p].size();
    l.B[p].assign(flat + o, flat + o + model_->proj_out(p) * r);
    o += l.B[p].size();
  }
  QILIN_ASSERT(static_cast<int64_t>(o) == n_layer_[il]);
}
void ZeroOptimizer::from_layer(const LoraLayer<float>& l, float* flat, int32_t il) const {
  size_t o = 0;
  for (int p = 0; p < kNumProj; ++p) {
    o = std::copy(l.A[p].begin(), l.A[p].end(), flat + o) - flat;
    o = std::copy(l.B[p].begin(), l.B[p].end(), flat + o) - flat;
  }
  QILIN_ASSERT(static_cast<int64_t>(o) == n_layer_[il]);
  std::fill(flat + o, flat + piece(il) * n_, 0.0f);  // the padding
}

ZeroOptimizer::~ZeroOptimizer() {
  if (model_) model_->set_lora_store(nullptr);
}

Result<std::unique_ptr<ZeroOptimizer>> ZeroOptimizer::create(LoraTrainer& model,
                                                             Communicator* comm,
                                                             const ZeroConfig& cfg) {
  if (cfg.stage < 0 || cfg.stage > 3)
    return errorf("--zero: the stage must be 0, 1, 2 or 3, got %d", cfg.stage);
  if (model.precision() != cfg.precision)
    return errorf("zero: the model computes in %s, the optimizer was set up for %s",
                  precision_name(model.precision()), precision_name(cfg.precision));
  std::unique_ptr<ZeroOptimizer> z(new ZeroOptimizer());
  z->model_ = &model;
  z->comm_ = comm;
  z->cfg_ = cfg;
  z->rank_ = comm ? comm->rank() : 0;
  z->n_ = comm ? comm->size() : 1;
  const int32_t L = model.hparams().n_layer;
  int64_t largest = 0, largest_piece = 0;
  for (int32_t il = 0; il < L; ++il) {
    int64_t n = 0;
    for (int p = 0; p < kNumProj; ++p)
      n += static_cast<int64_t>(model.lora()[il].A[p].size() + model.lora()[il].B[p].size());
    if (n == 0) return errorf("zero: layer %d has no LoRA parameters to train", il);
    z->n_layer_.push_back(n);
    z->full_off_.push_back(static_cast<size_t>(z->psi_pad_));
    z->piece_off_.push_back(static_cast<size_t>(z->shard_));
    z->psi_ += n;
    z->psi_pad_ += z->piece(il) * z->n_;
    z->shard_ += z->piece(il);
    largest = std::max(largest, z->piece(il) * z->n_);
    largest_piece = std::max(largest_piece, z->piece(il));
  }
  z->bucket_.resize(largest);
  z->piece_buf_.resize(largest_piece);
  // The FP32 starting values, in the padded full layout (dropped at the end of create).
  std::vector<float> flat(z->psi_pad_);
  for (int32_t il = 0; il < L; ++il)
    z->from_layer(model.lora()[il], flat.data() + z->full_off(il), il);
  const bool sharded_params = cfg.stage >= 3, sharded_grads = cfg.stage >= 2;
  z->params_.prec = z->grads_.prec = cfg.precision;
  z->params_.resize(sharded_params ? z->shard_ : z->psi_pad_);
  z->grads_.resize(sharded_grads ? z->shard_ : z->psi_pad_);
  std::vector<Span> spans;
  std::vector<float> init(cfg.stage == 0 ? z->psi_pad_
                                         : z->shard_);  // master values by state index
  for (int32_t il = 0; il < L; ++il) {
    const Span s = z->owned(il);
    spans.push_back(s);
    const size_t from =
        z->full_off(il) + (cfg.stage == 0 ? 0 : static_cast<size_t>(z->rank_ * z->piece(il)));
    std::copy_n(flat.data() + from, s.n, init.data() + s.state);
    if (sharded_params) {
      z->params_.store(s.param, flat.data() + from, s.n);
    } else {
      z->params_.store(z->full_off(il), flat.data() + z->full_off(il), z->piece(il) * z->n_);
    }
  }
  if (cfg.offload) {
    z->opt_ = std::make_unique<HostOptimizer>(init.size(), init.data(), spans);
  } else {
    z->opt_ = std::make_unique<DeviceAdamW>(init.size(), is16(cfg.precision), largest, init.data(),
                                            spans);
  }
  // The model's own copies go: from here on it reads and writes through this store.
  for (int32_t il = 0; il < L; ++il) {
    for (int p = 0; p < kNumProj; ++p) {
      std::vector<float>().swap(model.lora()[il].A[p]);
      std::vector<float>().swap(model.lora()[il].B[p]);
      std::vector<float>().swap(model.grad()[il].A[p]);
      std::vector<float>().swap(model.grad()[il].B[p]);
    }
  }
  z->to_layer(flat.data(), z->w_, 0);
  z->to_layer(flat.data(), z->g_, 0);
  model.set_lora_store(z.get());
  return z;
}

Status ZeroOptimizer::fail(Status s) {
  if (error_.is_ok() && !s.is_ok()) error_ = s;
  return s;
}

// ---- the model's calls, one layer at a time ----

Status ZeroOptimizer::gather_layer(int32_t il, float* out) {
  const int64_t k = piece(il);
  params_.load(piece_off(il), piece_buf_.data(), k);
  return fail(all_gather(comm_, piece_buf_.data(), out, k));
}

const LoraLayer<float>& ZeroOptimizer::layer_weights(int32_t il) {
  if (cfg_.stage >= 3) {
    if (error_.is_ok()) gather_layer(il, bucket_.data());
  } else {
    params_.load(full_off(il), bucket_.data(), n_layer_[il]);
  }
  to_layer(bucket_.data(), w_, il);
  return w_;
}

LoraLayer<float>& ZeroOptimizer::layer_grads(int32_t) {
  for (int p = 0; p < kNumProj; ++p) {
    std::fill(g_.A[p].begin(), g_.A[p].end(), 0.0f);
    std::fill(g_.B[p].begin(), g_.B[p].end(), 0.0f);
  }
  return g_;
}

void ZeroOptimizer::layer_grads_done(int32_t il) {
  from_layer(g_, bucket_.data(), il);
  if (cfg_.stage <= 1) {
    grads_.add(full_off(il), bucket_.data(), n_layer_[il]);  // reduced at the step's end
    return;
  }
  // Stages 2 and 3 keep only their piece of the gradients: reduce this layer's now.
  if (!error_.is_ok()) return;
  if (fail(reduce_scatter(comm_, bucket_.data(), piece_buf_.data(), piece(il))).is_ok()) {
    grads_.add(piece_off(il), piece_buf_.data(), piece(il));
  }
}

// ---- the step ----

void ZeroOptimizer::begin_step() {
  grads_.zero();
  if (comm_) start_ = comm_->stats();
}

Status ZeroOptimizer::reduce(int32_t il) {
  if (cfg_.stage == 0) {
    const int64_t n = n_layer_[il];
    grads_.load(full_off(il), bucket_.data(), n);
    QILIN_TRY(all_reduce(comm_, bucket_.data(), n));
    grads_.store(full_off(il), bucket_.data(), n);
    return Status::ok();
  }
  const int64_t k = piece(il);
  grads_.load(full_off(il), bucket_.data(), k * n_);
  QILIN_TRY(reduce_scatter(comm_, bucket_.data(), piece_buf_.data(), k));
  grads_.store(owned(il).grad, piece_buf_.data(), k);
  return Status::ok();
}

Result<ZeroOptimizer::StepOut> ZeroOptimizer::finish_step(const StepIn& in) {
  QILIN_TRY(error_);
  const int32_t L = static_cast<int32_t>(n_layer_.size());
  if (cfg_.stage <= 1) {
    for (int32_t il = 0; il < L; ++il) QILIN_TRY(fail(reduce(il)));
  }
  std::vector<Span> spans;
  for (int32_t il = 0; il < L; ++il) spans.push_back(owned(il));
  // This rank's reduced gradients, averaged over the global batch and unscaled, as the one-process
  // loop computes them (the same operations in the same order).
  const float inv_batch = 1.0f / in.examples;
  const float inv_scale = in.scaler ? 1.0f / in.scaler->scale() : 1.0f;
  float clip = 1.0f;
  auto grad = [&](size_t i, float* g) {
    grads_.load(spans[i].grad, g, spans[i].n);
    for (int64_t j = 0; j < spans[i].n; ++j) {
      if (in.examples > 1) g[j] *= inv_batch;
      if (in.scaler) g[j] *= inv_scale;
      if (clip != 1.0f) g[j] *= clip;
    }
  };
  double ss = 0;
  bool finite = true;
  for (size_t i = 0; i < spans.size(); ++i) {
    grad(i, bucket_.data());
    for (int64_t j = 0; j < spans[i].n; ++j) {
      const float x = bucket_[j];
      if (!std::isfinite(x)) finite = false;
      ss += static_cast<double>(x) * x;
    }
  }
  // Stage 0: every rank holds every reduced gradient, so only rank 0's sum of squares counts.
  if (cfg_.stage == 0 && rank_ != 0) ss = 0;
  StepOut out;
  float scalars[4] = {static_cast<float>(in.loss_sum), static_cast<float>(in.tokens),
                      finite ? 0.0f : 1.0f, static_cast<float>(ss)};
  if (n_ > 1) {
    QILIN_TRY(fail(all_reduce(comm_, scalars, 4)));
    out.loss_sum = scalars[0];
    out.tokens = static_cast<int64_t>(scalars[1]);
    finite = scalars[2] == 0.0f;
    ss = scalars[3];
  } else {
    out.loss_sum = in.loss_sum;
    out.tokens = in.tokens;
  }
  out.skipped = in.scaler && !in.scaler->record(finite);
  if (!out.skipped) {
    out.grad_norm = std::sqrt(ss);
    if (in.clip_norm > 0 && out.grad_norm > in.clip_norm)
      clip = static_cast<float>(in.clip_norm / (out.grad_norm + 1e-6));
    opt_->step(spans, grad, params_, in.update, in.adam, in.lr);
    if (cfg_.stage == 1 || cfg_.stage == 2) {  // everyone's updated pieces to everyone
      for (int32_t il = 0; il < L; ++il) {
        const int64_t k = piece(il);
        params_.load(spans[il].param, piece_buf_.data(), k);
        QILIN_TRY(fail(all_gather(comm_, piece_buf_.data(), bucket_.data(), k)));
        params_.store(full_off(il), bucket_.data(), k * n_);
      }
    }
  }
  if (comm_) step_comm_ = minus(comm_->stats(), start_);
  return out;
}

Status ZeroOptimizer::export_weights() {
  QILIN_TRY(error_);
  const int32_t L = static_cast<int32_t>(n_layer_.size());
  for (int32_t il = 0; il < L; ++il) {
    const Span s = owned(il);
    const float* m = opt_->master(s, params_);
    if (cfg_.stage != 0) {
      std::copy_n(m, s.n, piece_buf_.data());
      QILIN_TRY(fail(all_gather(comm_, piece_buf_.data(), bucket_.data(), s.n)));
      m = bucket_.data();
    }
    to_layer(m, model_->lora()[il], il);
  }
  return Status::ok();
}

ZeroMemory ZeroOptimizer::memory() const {
  ZeroMemory m;
  m.params = params_.bytes();
  m.grads = grads_.bytes();
  m.optimizer = opt_->state_bytes();
  m.host_grads = opt_->host_grad_bytes();
  m.optimizer_on_host = cfg_.offload;
  for (int p = 0; p < kNumProj; ++p) {
    m.working +=
        (w_.A[p].capacity() + w_.B[p].capacity() + g_.A[p].capacity() + g_.B[p].capacity()) *
        sizeof(float);
  }
  m.working += (bucket_.capacity() + piece_buf_.capacity()) * sizeof(float) + opt_->scratch_bytes();
  return m;
}

}  // namespace qilin::train

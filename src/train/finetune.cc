// Fine-tuning: see finetune.h.
#include "train/finetune.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>

#include "core/assert.h"
#include "core/atomic_file.h"
#include "formats/gguf.h"
#include "model/lora_adapter.h"

namespace qilin::train {

namespace {

double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

// Tokenizes (text, learned) segments in order; targets are the next token where that token
// belongs to a learned segment.
Example from_segments(const Tokenizer& tok, const std::vector<std::pair<std::string, bool>>& segs,
                      int32_t eos_after_learned, int32_t max_len) {
  Example e;
  std::vector<uint8_t> learn;
  bool first = true;
  for (const auto& [text, learned] : segs) {
    std::vector<int32_t> t = tok.encode(text, /*add_special=*/first, /*parse_special=*/true);
    first = false;
    if (learned && eos_after_learned >= 0) t.push_back(eos_after_learned);
    e.tokens.insert(e.tokens.end(), t.begin(), t.end());
    learn.insert(learn.end(), t.size(), learned ? 1 : 0);
  }
  if (static_cast<int32_t>(e.tokens.size()) > max_len) {
    e.tokens.resize(max_len);
    learn.resize(max_len);
  }
  e.targets.assign(e.tokens.size(), -1);
  for (size_t i = 0; i + 1 < e.tokens.size(); ++i) {
    if (learn[i + 1]) e.targets[i] = e.tokens[i + 1];
  }
  return e;
}

int64_t scored(const Example& e) {
  return std::count_if(e.targets.begin(), e.targets.end(), [](int32_t t) { return t >= 0; });
}

const char* kHfProj[kNumProj] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                 "self_attn.o_proj", "mlp.gate_proj",   "mlp.up_proj",
                                 "mlp.down_proj"};

}  // namespace

Result<std::vector<Example>> load_jsonl(const std::string& path, const Tokenizer& tok,
                                        const ChatTemplate* tmpl, int32_t max_len) {
  std::ifstream in(path);
  if (!in) return errorf("finetune: cannot read %s", path.c_str());
  std::vector<Example> out;
  std::string line;
  int64_t ln = 0;
  while (std::getline(in, line)) {
    ++ln;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception& e) {
      return errorf("finetune: %s line %lld: not JSON (%s)", path.c_str(), static_cast<long long>(ln), e.what());
    }
    auto str = [&](const char* key) -> Result<std::string> {
      if (!j.contains(key) || !j[key].is_string()) {
        return errorf("finetune: %s line %lld: \"%s\" must be a string", path.c_str(), static_cast<long long>(ln), key);
      }
      return j[key].get<std::string>();
    };
    std::vector<std::pair<std::string, bool>> segs;
    if (j.is_object() && j.contains("messages")) {
      if (!tmpl) return errorf("finetune: %s line %lld: chat data needs the model's chat template", path.c_str(), static_cast<long long>(ln));
      if (!j["messages"].is_array()) return errorf("finetune: %s line %lld: \"messages\" must be an array", path.c_str(), static_cast<long long>(ln));
      std::vector<ChatMessage> msgs;
      for (const auto& m : j["messages"]) {
        if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") || !m["content"].is_string()) {
          return errorf("finetune: %s line %lld: each message needs string \"role\" and \"content\"", path.c_str(), static_cast<long long>(ln));
        }
        msgs.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
      }
      // Render prefixes: before each assistant turn (with the generation prompt) and after it;
      // the difference is the assistant's text, the only part learned.
      std::string prev;
      for (size_t i = 0; i < msgs.size(); ++i) {
        if (msgs[i].role != "assistant") continue;
        std::vector<ChatMessage> head(msgs.begin(), msgs.begin() + i);
        auto p = tmpl->render(head, true);
        head.push_back(msgs[i]);
        auto a = tmpl->render(head, false);
        if (!p || !a) return errorf("finetune: %s line %lld: %s", path.c_str(), static_cast<long long>(ln), (!p ? p.status() : a.status()).message().c_str());
        if (p->compare(0, prev.size(), prev) != 0 || a->compare(0, p->size(), *p) != 0) {
          return errorf("finetune: %s line %lld: the chat template does not render turns as prefixes", path.c_str(), static_cast<long long>(ln));
        }
        segs.push_back({p->substr(prev.size()), false});
        segs.push_back({a->substr(p->size()), true});
        prev = *a;
      }
      auto all = tmpl->render(msgs, false);
      if (!all) return errorf("finetune: %s line %lld: %s", path.c_str(), static_cast<long long>(ln), all.status().message().c_str());
      if (all->size() > prev.size()) segs.push_back({all->substr(prev.size()), false});
      if (segs.empty() || std::none_of(segs.begin(), segs.end(), [](const auto& s) { return s.second; })) {
        return errorf("finetune: %s line %lld: no assistant message to learn", path.c_str(), static_cast<long long>(ln));
      }
      out.push_back(from_segments(tok, segs, -1, max_len));
    } else if (j.is_object() && j.contains("prompt")) {
      auto p = str("prompt");
      QILIN_TRY(p);
      auto c = str("completion");
      QILIN_TRY(c);
      out.push_back(from_segments(tok, {{*p, false}, {*c, true}}, tok.eos(), max_len));
    } else if (j.is_object() && j.contains("text")) {
      auto t = str("text");
      QILIN_TRY(t);
      out.push_back(from_segments(tok, {{*t, true}}, -1, max_len));
    } else {
      return errorf("finetune: %s line %lld: want {\"prompt\",\"completion\"}, {\"messages\"} or {\"text\"}", path.c_str(), static_cast<long long>(ln));
    }
    if (scored(out.back()) == 0) {
      return errorf("finetune: %s line %lld: nothing to learn after cutting to %d tokens", path.c_str(), static_cast<long long>(ln), max_len);
    }
  }
  if (out.empty()) return errorf("finetune: %s holds no examples", path.c_str());
  return out;
}

std::vector<Example> pack(const std::vector<Example>& examples, int32_t max_len) {
  std::vector<Example> out;
  Example cur;
  for (const Example& e : examples) {
    if (!cur.tokens.empty() && cur.tokens.size() + e.tokens.size() > static_cast<size_t>(max_len)) {
      out.push_back(std::move(cur));
      cur = Example{};
    }
    if (!cur.targets.empty()) cur.targets.back() = -1;  // never learn across examples
    cur.tokens.insert(cur.tokens.end(), e.tokens.begin(), e.tokens.end());
    cur.targets.insert(cur.targets.end(), e.targets.begin(), e.targets.end());
  }
  if (!cur.tokens.empty()) out.push_back(std::move(cur));
  return out;
}

// ---- Finetuner ----

struct Finetuner::Impl {
  explicit Impl(int n_threads) : pool(n_threads) {}
  ThreadPool pool;
};

Finetuner::~Finetuner() = default;

Result<std::unique_ptr<Finetuner>> Finetuner::create(const LlamaModel& base, const FinetuneConfig& cfg,
                                                     std::vector<Example> train, std::vector<Example> eval) {
  if (train.empty()) return errorf("finetune: no training examples");
  if (cfg.lora.rank < 1 || cfg.lora.rank > 256) return errorf("finetune: --lora-r must be in [1, 256], got %d", cfg.lora.rank);
  if (cfg.grad_accum < 1) return errorf("finetune: --grad-accum must be >= 1, got %d", cfg.grad_accum);
  if (cfg.steps < 1) return errorf("finetune: --steps must be >= 1, got %lld", static_cast<long long>(cfg.steps));
  std::unique_ptr<Finetuner> f(new Finetuner());
  f->cfg_ = cfg;
  f->train_ = std::move(train);
  f->eval_ = std::move(eval);
  f->impl_ = std::make_unique<Impl>(cfg.n_threads);
  BaseConfig bc;
  bc.quantized = cfg.quantized_base;
  bc.requant = cfg.base_type;
  auto trainer = LoraTrainer::create(base, cfg.lora, bc, cfg.precision, f->impl_->pool);
  QILIN_TRY(trainer);
  f->model_ = std::move(*trainer);
  f->model_->init_lora(static_cast<uint32_t>(cfg.seed));
  f->model_->set_checkpoint_activations(cfg.checkpoint_activations);
  f->base_bytes_ = f->model_->base_bytes();
  f->uses_model_ = f->model_->uses_model_weights();
  f->scaler_ = LossScaler(cfg.loss_scale_init, cfg.loss_scale_growth_interval, cfg.loss_scale_hysteresis);
  if (cfg.zero_stage >= 0) {
    const int n = cfg.comm ? cfg.comm->size() : 1;
    if (cfg.grad_accum % n != 0) {
      return errorf("finetune: --grad-accum %d (the global batch) must be a multiple of the %d data-parallel ranks",
                    cfg.grad_accum, n);
    }
    if (cfg.optimizer_memory_bytes > 0) return errorf("finetune: --optimizer-memory-mb does not combine with --zero");
    if (cfg.checkpoint_every > 0) return errorf("finetune: --checkpoint-every does not combine with --zero yet");
    ZeroConfig zc;
    zc.stage = cfg.zero_stage;
    zc.offload = cfg.offload_optimizer;
    zc.precision = cfg.precision;
    auto z = ZeroOptimizer::create(*f->model_, cfg.comm, zc);
    QILIN_TRY(z);
    f->zero_ = std::move(*z);
    return f;
  }
  if (cfg.offload_optimizer) return errorf("finetune: --offload-optimizer needs --zero");
  std::vector<int64_t> sizes;
  for (const LoraLayer<float>& l : f->model_->lora()) {
    for (int p = 0; p < kNumProj; ++p) {
      if (l.A[p].empty()) continue;
      sizes.push_back(static_cast<int64_t>(l.A[p].size()));
      sizes.push_back(static_cast<int64_t>(l.B[p].size()));
    }
  }
  auto st = PagedAdamW::create(sizes, cfg.optimizer_memory_bytes, cfg.optimizer_swap_dir);
  QILIN_TRY(st);
  f->states_ = std::move(*st);
  return f;
}

float Finetuner::evaluate() {
  double sum = 0;
  int64_t count = 0;
  for (const Example& e : eval_) {
    const int64_t c = scored(e);
    if (c == 0) continue;
    sum += static_cast<double>(model_->forward(e.tokens.data(), e.targets.data(), static_cast<int64_t>(e.tokens.size()),
                                               nullptr, /*need_grad=*/false)) * c;
    count += c;
  }
  return count ? static_cast<float>(sum / count) : -1.0f;
}

Status Finetuner::run(const std::function<void(const StepLog&)>& on_step) {
  const int64_t n_train = static_cast<int64_t>(train_.size());
  auto example_at = [&](int64_t k) -> const Example& {
    // Epoch e's order: a shuffle seeded by (seed, e), so a resumed run sees the same order.
    const int64_t epoch = k / n_train;
    if (order_.size() != static_cast<size_t>(n_train) || order_epoch_ != epoch) {
      order_.resize(n_train);
      for (int64_t i = 0; i < n_train; ++i) order_[i] = static_cast<uint32_t>(i);
      std::mt19937_64 rng(cfg_.seed * 1000003ull + static_cast<uint64_t>(epoch));
      std::shuffle(order_.begin(), order_.end(), rng);
      order_epoch_ = epoch;
    }
    return train_[order_[k % n_train]];
  };
  const bool scaling = cfg_.precision == Precision::F16;
  while (step_ < cfg_.steps) {
    const double t0 = now_s();
    if (zero_) {
      StepLog log;
      QILIN_TRY(data_parallel_step(example_at, &log));
      log.seconds = now_s() - t0;
      if (on_step) on_step(log);
      continue;
    }
    model_->zero_grad();
    StepLog log;
    log.loss_scale = scaling ? scaler_.scale() : 1.0f;
    model_->set_loss_scale(log.loss_scale);
    double loss_sum = 0;
    int64_t tokens = 0;
    for (int32_t a = 0; a < cfg_.grad_accum; ++a) {
      const Example& e = example_at(cursor_++);
      loss_sum += model_->forward(e.tokens.data(), e.targets.data(), static_cast<int64_t>(e.tokens.size()));
      model_->backward();
      tokens += scored(e);
    }
    if (cfg_.grad_hook) cfg_.grad_hook(step_ + 1, model_->grad());
    std::vector<std::pair<float*, int64_t>> grads;
    for (auto& g : model_->grad()) {
      for (int p = 0; p < kNumProj; ++p) {
        if (g.A[p].empty()) continue;
        grads.push_back({g.A[p].data(), static_cast<int64_t>(g.A[p].size())});
        grads.push_back({g.B[p].data(), static_cast<int64_t>(g.B[p].size())});
      }
    }
    if (cfg_.grad_accum > 1) {
      const float inv = 1.0f / cfg_.grad_accum;
      for (auto& [g, n] : grads) {
        for (int64_t i = 0; i < n; ++i) g[i] *= inv;
      }
    }
    // FP16: unscale in FP32 and skip the step when anything overflowed (the scaler moves).
    log.skipped = scaling && !scaler_.unscale_and_check(grads);
    log.lr = lr_at(step_, cfg_.warmup, cfg_.steps, cfg_.adam.lr, cfg_.adam.lr * cfg_.min_lr_ratio);
    if (!log.skipped) {
      log.grad_norm = clip_global_norm(grads, cfg_.clip_norm);
      ++updates_;
      size_t k = 0;
      for (int32_t l = 0; l < model_->hparams().n_layer; ++l) {
        for (int p = 0; p < kNumProj; ++p) {
          std::vector<float>& A = model_->lora()[l].A[p];
          if (A.empty()) continue;
          std::vector<float>& B = model_->lora()[l].B[p];
          QILIN_TRY(states_->update(k++, A.data(), model_->grad()[l].A[p].data(), updates_, cfg_.adam, log.lr));
          QILIN_TRY(states_->update(k++, B.data(), model_->grad()[l].B[p].data(), updates_, cfg_.adam, log.lr));
        }
      }
    }
    ++step_;
    log.step = step_;
    log.loss = static_cast<float>(loss_sum / cfg_.grad_accum);
    log.tokens = tokens;
    if (!eval_.empty() && ((cfg_.eval_every > 0 && step_ % cfg_.eval_every == 0) || step_ == cfg_.steps)) {
      log.eval_loss = evaluate();
    }
    if (cfg_.checkpoint_every > 0 && !cfg_.checkpoint_path.empty() && step_ % cfg_.checkpoint_every == 0) {
      QILIN_TRY(save_checkpoint(cfg_.checkpoint_path));
    }
    log.seconds = now_s() - t0;
    if (on_step) on_step(log);
  }
  if (zero_) return zero_->export_weights();  // model().lora() gets the trained weights
  return Status::ok();
}

// One step on this rank's slice of the global batch; the ZeroOptimizer reduces, updates and
// gathers. The same arithmetic as the loop above on the whole batch, up to summation order.
Status Finetuner::data_parallel_step(const std::function<const Example&(int64_t)>& example_at, StepLog* log) {
  const int n_ranks = zero_->size(), local = cfg_.grad_accum / n_ranks;
  const bool scaling = cfg_.precision == Precision::F16;
  zero_->begin_step();
  log->loss_scale = scaling ? scaler_.scale() : 1.0f;
  model_->set_loss_scale(log->loss_scale);
  ZeroOptimizer::StepIn in;
  for (int32_t a = 0; a < local; ++a) {
    const Example& e = example_at(cursor_ + static_cast<int64_t>(zero_->rank()) * local + a);
    in.loss_sum += model_->forward(e.tokens.data(), e.targets.data(), static_cast<int64_t>(e.tokens.size()));
    model_->backward();
    in.tokens += scored(e);
  }
  cursor_ += cfg_.grad_accum;
  log->lr = lr_at(step_, cfg_.warmup, cfg_.steps, cfg_.adam.lr, cfg_.adam.lr * cfg_.min_lr_ratio);
  in.examples = cfg_.grad_accum;
  in.scaler = scaling ? &scaler_ : nullptr;
  in.clip_norm = cfg_.clip_norm;
  in.update = updates_ + 1;
  in.adam = cfg_.adam;
  in.lr = log->lr;
  auto out = zero_->finish_step(in);
  QILIN_TRY(out);
  if (!out->skipped) ++updates_;
  ++step_;
  log->step = step_;
  log->skipped = out->skipped;
  log->grad_norm = out->grad_norm;
  log->loss = static_cast<float>(out->loss_sum / cfg_.grad_accum);
  log->tokens = out->tokens;
  log->comm_bytes = ring_bytes(zero_->step_comm(), n_ranks);
  if (!eval_.empty() && ((cfg_.eval_every > 0 && step_ % cfg_.eval_every == 0) || step_ == cfg_.steps)) {
    log->eval_loss = evaluate();  // every rank evaluates (stage 3 gathers inside forward)
    QILIN_TRY(zero_->error());
  }
  return Status::ok();
}

// ---- checkpoints: one GGUF file (adapter, AdamW moments, position), written atomically ----

Status Finetuner::save_checkpoint(const std::string& path) const {
  if (zero_) return errorf("finetune: checkpoints of sharded optimizer states (--zero) are not written yet");
  GgufWriter w;
  w.set("general.architecture", GgufValue::of_string("qilin-finetune-checkpoint"));
  w.set("qilin.ft.step", GgufValue::of_u64(static_cast<uint64_t>(step_)));
  w.set("qilin.ft.updates", GgufValue::of_u64(static_cast<uint64_t>(updates_)));
  w.set("qilin.ft.cursor", GgufValue::of_u64(static_cast<uint64_t>(cursor_)));
  w.set("qilin.ft.seed", GgufValue::of_u64(cfg_.seed));
  w.set("qilin.ft.rank", GgufValue::of_u32(static_cast<uint32_t>(cfg_.lora.rank)));
  w.set("qilin.ft.alpha", GgufValue::of_f32(cfg_.lora.alpha));
  w.set("qilin.ft.n_train", GgufValue::of_u64(train_.size()));
  const LossScaler::State ls = scaler_.state();
  w.set("qilin.ft.loss_scale", GgufValue::of_f32(ls.scale));
  w.set("qilin.ft.loss_scale_clean", GgufValue::of_u64(static_cast<uint64_t>(ls.clean)));
  w.set("qilin.ft.loss_scale_overflows_left", GgufValue::of_u64(static_cast<uint64_t>(ls.overflows_left)));
  w.set("qilin.ft.skipped", GgufValue::of_u64(static_cast<uint64_t>(ls.skipped)));
  const int32_t n_layer = model_->hparams().n_layer;
  std::deque<std::vector<float>> moments;  // alive until write(); references stay valid
  size_t k = 0;
  for (int32_t l = 0; l < n_layer; ++l) {
    for (int p = 0; p < kNumProj; ++p) {
      const std::vector<float>& A = model_->lora()[l].A[p];
      if (A.empty()) continue;
      const std::vector<float>& B = model_->lora()[l].B[p];
      const std::string base = "blk." + std::to_string(l) + "." + lora_proj_gguf_name(p);
      w.add_tensor(base + ".a", DType::F32, {static_cast<int64_t>(A.size())}, A.data(), A.size() * sizeof(float));
      w.add_tensor(base + ".b", DType::F32, {static_cast<int64_t>(B.size())}, B.data(), B.size() * sizeof(float));
      for (const char* ab : {".a", ".b"}) {
        std::vector<float>& m = moments.emplace_back();
        std::vector<float>& v = moments.emplace_back();
        QILIN_TRY(states_->get(k++, &m, &v));
        w.add_tensor(base + ab + ".m", DType::F32, {static_cast<int64_t>(m.size())}, m.data(), m.size() * sizeof(float));
        w.add_tensor(base + ab + ".v", DType::F32, {static_cast<int64_t>(v.size())}, v.data(), v.size() * sizeof(float));
      }
    }
  }
  return w.write(path);
}

Status Finetuner::load_checkpoint(const std::string& path) {
  if (zero_) return errorf("finetune: --resume does not combine with --zero yet");
  auto f = GgufFile::open(path);
  QILIN_TRY(f);
  const GgufFile& g = **f;
  auto rank = g.get_uint("qilin.ft.rank");
  auto seed = g.get_uint("qilin.ft.seed");
  auto n_train = g.get_uint("qilin.ft.n_train");
  auto step = g.get_uint("qilin.ft.step");
  auto cursor = g.get_uint("qilin.ft.cursor");
  if (!rank || !seed || !n_train || !step || !cursor) return errorf("finetune: %s is not a Qilin fine-tuning checkpoint", path.c_str());
  // Positions become signed counters that index the data: range-check them before use. No run
  // reaches 2^40 steps or examples, so anything larger is a damaged or crafted file.
  constexpr uint64_t kMaxCount = uint64_t{1} << 40;
  auto out_of_range = [&](const char* key, uint64_t v, uint64_t max) {
    return errorf("finetune: %s: key '%s' is %llu, expected at most %llu", path.c_str(), key,
                  static_cast<unsigned long long>(v), static_cast<unsigned long long>(max));
  };
  if (*step > kMaxCount) return out_of_range("qilin.ft.step", *step, kMaxCount);
  if (*cursor > kMaxCount) return out_of_range("qilin.ft.cursor", *cursor, kMaxCount);
  if (*rank != static_cast<uint64_t>(cfg_.lora.rank) || *seed != cfg_.seed || *n_train != train_.size()) {
    return errorf("finetune: %s was made with rank %llu, seed %llu, %llu examples; this run has %d, %llu, %zu",
                  path.c_str(), static_cast<unsigned long long>(*rank), static_cast<unsigned long long>(*seed),
                  static_cast<unsigned long long>(*n_train), cfg_.lora.rank,
                  static_cast<unsigned long long>(cfg_.seed), train_.size());
  }
  // Older checkpoints (before FP16 loss scaling) have no scaler keys: every step was applied.
  auto updates = g.get_uint("qilin.ft.updates");
  if (updates && *updates > *step) return out_of_range("qilin.ft.updates", *updates, *step);
  LossScaler::State ls = scaler_.state();
  if (auto v = g.get_float("qilin.ft.loss_scale")) {
    if (!(*v > 0 && *v <= std::numeric_limits<float>::max())) {
      return errorf("finetune: %s: key 'qilin.ft.loss_scale' is %g, expected a positive finite scale",
                    path.c_str(), *v);
    }
    ls.scale = static_cast<float>(*v);
  }
  constexpr uint64_t kMaxInt = static_cast<uint64_t>(std::numeric_limits<int>::max());
  if (auto v = g.get_uint("qilin.ft.loss_scale_clean")) {
    if (*v > kMaxInt) return out_of_range("qilin.ft.loss_scale_clean", *v, kMaxInt);
    ls.clean = static_cast<int>(*v);
  }
  if (auto v = g.get_uint("qilin.ft.loss_scale_overflows_left")) {
    if (*v > kMaxInt) return out_of_range("qilin.ft.loss_scale_overflows_left", *v, kMaxInt);
    ls.overflows_left = static_cast<int>(*v);
  }
  if (auto v = g.get_uint("qilin.ft.skipped")) {
    if (*v > *step) return out_of_range("qilin.ft.skipped", *v, *step);
    ls.skipped = static_cast<int64_t>(*v);
  }
  const int32_t n_layer = model_->hparams().n_layer;
  size_t k = 0;
  for (int32_t l = 0; l < n_layer; ++l) {
    for (int p = 0; p < kNumProj; ++p) {
      std::vector<float>& A = model_->lora()[l].A[p];
      if (A.empty()) continue;
      std::vector<float>& B = model_->lora()[l].B[p];
      const std::string base = "blk." + std::to_string(l) + "." + lora_proj_gguf_name(p);
      auto read = [&](const std::string& suffix, size_t want, std::vector<float>* out) -> Status {
        const GgufTensorInfo* t = g.find_tensor(base + suffix);
        if (!t) {
          if (*step == 0 && suffix.size() > 2) {  // moments before the first step: zeros
            out->assign(want, 0.0f);
            return Status::ok();
          }
          return errorf("finetune: %s lacks tensor %s%s", path.c_str(), base.c_str(), suffix.c_str());
        }
        if (static_cast<size_t>(t->n_elements()) != want) {
          return errorf("finetune: %s: tensor %s%s has %lld elements, expected %zu", path.c_str(),
                        base.c_str(), suffix.c_str(), static_cast<long long>(t->n_elements()), want);
        }
        auto values = g.read_f32(*t, "a fine-tuning checkpoint");
        QILIN_TRY(values);
        *out = std::move(*values);
        return Status::ok();
      };
      QILIN_TRY(read(".a", A.size(), &A));
      QILIN_TRY(read(".b", B.size(), &B));
      for (const std::string ab : {".a", ".b"}) {
        const size_t want = ab == ".a" ? A.size() : B.size();
        std::vector<float> m, v;
        QILIN_TRY(read(ab + ".m", want, &m));
        QILIN_TRY(read(ab + ".v", want, &v));
        QILIN_TRY(states_->set(k++, m.data(), v.data()));
      }
    }
  }
  step_ = static_cast<int64_t>(*step);
  updates_ = updates ? static_cast<int64_t>(*updates) : step_;
  cursor_ = static_cast<int64_t>(*cursor);
  scaler_.set_state(ls);
  return Status::ok();
}

// ---- adapter export ----

Status Finetuner::save_gguf_adapter(const std::string& path) const {
  GgufWriter w;
  w.set("general.architecture", GgufValue::of_string("llama"));
  w.set("general.type", GgufValue::of_string("adapter"));
  w.set("adapter.type", GgufValue::of_string("lora"));
  w.set("adapter.lora.alpha", GgufValue::of_f32(cfg_.lora.alpha));
  const int32_t n_layer = model_->hparams().n_layer;
  const int64_t r = cfg_.lora.rank;
  for (int32_t l = 0; l < n_layer; ++l) {
    for (int p = 0; p < kNumProj; ++p) {
      const std::vector<float>& A = model_->lora()[l].A[p];
      if (A.empty()) continue;
      const std::vector<float>& B = model_->lora()[l].B[p];
      const std::string base = "blk." + std::to_string(l) + "." + lora_proj_gguf_name(p) + ".weight";
      // ggml shapes: lora_a ne = [in, r], lora_b ne = [r, out].
      w.add_tensor(base + ".lora_a", DType::F32, {model_->proj_in(p), r}, A.data(), A.size() * sizeof(float));
      w.add_tensor(base + ".lora_b", DType::F32, {r, model_->proj_out(p)}, B.data(), B.size() * sizeof(float));
    }
  }
  return w.write(path);
}

Status Finetuner::save_peft(const std::string& dir, const std::string& base_name) const {
  if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return errorf("finetune: cannot create %s: %s", dir.c_str(), std::strerror(errno));
  }
  const LlamaHparams& s = model_->hparams();
  const int64_t r = cfg_.lora.rank;
  nlohmann::json header = nlohmann::json::object();
  header["__metadata__"] = {{"format", "pt"}};
  std::string data;
  std::vector<std::string> targets;
  for (int p = 0; p < kNumProj; ++p) {
    if (cfg_.lora.targets[p]) targets.push_back(std::string(kHfProj[p]).substr(std::string(kHfProj[p]).find('.') + 1));
  }
  auto add = [&](const std::string& name, const std::vector<float>& v, int64_t rows, int64_t cols) {
    const size_t begin = data.size();
    data.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
    header[name] = {{"dtype", "F32"}, {"shape", {rows, cols}}, {"data_offsets", {begin, data.size()}}};
  };
  for (int32_t l = 0; l < s.n_layer; ++l) {
    for (int p = 0; p < kNumProj; ++p) {
      const std::vector<float>& A = model_->lora()[l].A[p];
      if (A.empty()) continue;
      std::vector<float> B = model_->lora()[l].B[p];
      if ((p == kQ || p == kK) && !s.rope.neox) {
        // GGUF (llama.cpp's converter) stores Q/K rows in RoPE pair order: row h*hd + 2i + j
        // is Hugging Face's row h*hd + j*hd/2 + i. lora_B's rows are output rows: undo it.
        const int32_t heads = p == kQ ? s.n_head : s.n_head_kv, hd = s.head_dim;
        std::vector<float> hf(B.size());
        for (int32_t h = 0; h < heads; ++h) {
          for (int32_t i = 0; i < hd / 2; ++i) {
            for (int32_t j = 0; j < 2; ++j) {
              std::copy_n(&B[(static_cast<size_t>(h) * hd + 2 * i + j) * r], r,
                          &hf[(static_cast<size_t>(h) * hd + j * hd / 2 + i) * r]);
            }
          }
        }
        B.swap(hf);
      }
      const std::string prefix = "base_model.model.model.layers." + std::to_string(l) + "." + kHfProj[p];
      add(prefix + ".lora_A.weight", A, r, model_->proj_in(p));
      add(prefix + ".lora_B.weight", B, model_->proj_out(p), r);
    }
  }
  std::string hj = header.dump();
  while (hj.size() % 8 != 0) hj.push_back(' ');
  std::string file(8, '\0');
  const uint64_t hn = hj.size();
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((hn >> (8 * i)) & 0xff);
  file += hj;
  file += data;
  QILIN_TRY(write_file_atomically(dir + "/adapter_model.safetensors", file));
  nlohmann::json cfg = {{"base_model_name_or_path", base_name}, {"peft_type", "LORA"}, {"task_type", "CAUSAL_LM"},
                        {"r", r}, {"lora_alpha", cfg_.lora.alpha}, {"lora_dropout", 0.0},
                        {"target_modules", targets}, {"bias", "none"}, {"fan_in_fan_out", false},
                        {"inference_mode", true}};
  return write_file_atomically(dir + "/adapter_config.json", cfg.dump(2) + "\n");
}

}  // namespace qilin::train

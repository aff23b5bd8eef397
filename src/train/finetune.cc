// Fine-tuning: see finetune.h.
#include "train/finetune.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>
#include <sys/stat.h>
#include <unistd.h>

#include "core/assert.h"
#include "formats/gguf.h"
#include "model/lora_adapter.h"
#include "train/gemm_linear.h"

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

// Writes bytes to path through a temporary file and rename: readers never see a partial file.
Status write_atomically(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) return errorf("cannot write %s: %s", tmp.c_str(), std::strerror(errno));
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size() &&
                  std::fflush(f) == 0 && fsync(fileno(f)) == 0;
  std::fclose(f);
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return errorf("cannot write %s: %s", path.c_str(), std::strerror(errno));
  }
  return Status::ok();
}

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
  std::unique_ptr<GemmLinear> fast;
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
  f->model_ = lora_llama_from(base, cfg.lora);
  f->model_->init_lora(static_cast<uint32_t>(cfg.seed));
  f->impl_->fast = std::make_unique<GemmLinear>(*f->model_, f->impl_->pool);
  f->model_->set_fast_linear(f->impl_->fast.get());
  f->states_.resize(static_cast<size_t>(f->model_->shape().n_layer) * kNumProj * 2);
  return f;
}

float Finetuner::evaluate() {
  double sum = 0;
  int64_t count = 0;
  for (const Example& e : eval_) {
    const int64_t c = scored(e);
    if (c == 0) continue;
    sum += static_cast<double>(model_->forward(e.tokens.data(), e.targets.data(), static_cast<int64_t>(e.tokens.size()))) * c;
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
  while (step_ < cfg_.steps) {
    const double t0 = now_s();
    model_->zero_grad();
    StepLog log;
    double loss_sum = 0;
    int64_t tokens = 0;
    for (int32_t a = 0; a < cfg_.grad_accum; ++a) {
      const Example& e = example_at(cursor_++);
      loss_sum += model_->forward(e.tokens.data(), e.targets.data(), static_cast<int64_t>(e.tokens.size()));
      model_->backward();
      tokens += scored(e);
    }
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
    log.grad_norm = clip_global_norm(grads, cfg_.clip_norm);
    log.lr = lr_at(step_, cfg_.warmup, cfg_.steps, cfg_.adam.lr, cfg_.adam.lr * cfg_.min_lr_ratio);
    const int32_t n_layer = model_->shape().n_layer;
    for (int32_t l = 0; l < n_layer; ++l) {
      for (int p = 0; p < kNumProj; ++p) {
        std::vector<float>& A = model_->lora()[l].A[p];
        if (A.empty()) continue;
        std::vector<float>& B = model_->lora()[l].B[p];
        AdamWState* st = &states_[(static_cast<size_t>(l) * kNumProj + p) * 2];
        adamw_update(A.data(), model_->grad()[l].A[p].data(), static_cast<int64_t>(A.size()), st[0], step_ + 1, cfg_.adam, log.lr);
        adamw_update(B.data(), model_->grad()[l].B[p].data(), static_cast<int64_t>(B.size()), st[1], step_ + 1, cfg_.adam, log.lr);
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
  return Status::ok();
}

// ---- checkpoints: one GGUF file (adapter, AdamW moments, position), written atomically ----

Status Finetuner::save_checkpoint(const std::string& path) const {
  GgufWriter w;
  w.set("general.architecture", GgufValue::of_string("qilin-finetune-checkpoint"));
  w.set("qilin.ft.step", GgufValue::of_u64(static_cast<uint64_t>(step_)));
  w.set("qilin.ft.cursor", GgufValue::of_u64(static_cast<uint64_t>(cursor_)));
  w.set("qilin.ft.seed", GgufValue::of_u64(cfg_.seed));
  w.set("qilin.ft.rank", GgufValue::of_u32(static_cast<uint32_t>(cfg_.lora.rank)));
  w.set("qilin.ft.alpha", GgufValue::of_f32(cfg_.lora.alpha));
  w.set("qilin.ft.n_train", GgufValue::of_u64(train_.size()));
  const int32_t n_layer = model_->shape().n_layer;
  for (int32_t l = 0; l < n_layer; ++l) {
    for (int p = 0; p < kNumProj; ++p) {
      const std::vector<float>& A = model_->lora()[l].A[p];
      if (A.empty()) continue;
      const std::vector<float>& B = model_->lora()[l].B[p];
      const std::string base = "blk." + std::to_string(l) + "." + lora_proj_gguf_name(p);
      const AdamWState* st = &states_[(static_cast<size_t>(l) * kNumProj + p) * 2];
      const std::pair<const char*, const std::vector<float>*> parts[] = {
          {".a", &A}, {".b", &B}, {".a.m", &st[0].m}, {".a.v", &st[0].v}, {".b.m", &st[1].m}, {".b.v", &st[1].v}};
      for (const auto& [suffix, vec] : parts) {
        if (vec->empty()) continue;  // moments before the first step
        w.add_tensor(base + suffix, DType::F32, {static_cast<int64_t>(vec->size())}, vec->data(),
                     vec->size() * sizeof(float));
      }
    }
  }
  return w.write(path);
}

Status Finetuner::load_checkpoint(const std::string& path) {
  auto f = GgufFile::open(path);
  QILIN_TRY(f);
  const GgufFile& g = **f;
  auto rank = g.get_uint("qilin.ft.rank");
  auto seed = g.get_uint("qilin.ft.seed");
  auto n_train = g.get_uint("qilin.ft.n_train");
  auto step = g.get_uint("qilin.ft.step");
  auto cursor = g.get_uint("qilin.ft.cursor");
  if (!rank || !seed || !n_train || !step || !cursor) return errorf("finetune: %s is not a Qilin fine-tuning checkpoint", path.c_str());
  if (*rank != static_cast<uint64_t>(cfg_.lora.rank) || *seed != cfg_.seed || *n_train != train_.size()) {
    return errorf("finetune: %s was made with rank %llu, seed %llu, %llu examples; this run has %d, %llu, %zu",
                  path.c_str(), static_cast<unsigned long long>(*rank), static_cast<unsigned long long>(*seed),
                  static_cast<unsigned long long>(*n_train), cfg_.lora.rank,
                  static_cast<unsigned long long>(cfg_.seed), train_.size());
  }
  const int32_t n_layer = model_->shape().n_layer;
  for (int32_t l = 0; l < n_layer; ++l) {
    for (int p = 0; p < kNumProj; ++p) {
      std::vector<float>& A = model_->lora()[l].A[p];
      if (A.empty()) continue;
      std::vector<float>& B = model_->lora()[l].B[p];
      AdamWState* st = &states_[(static_cast<size_t>(l) * kNumProj + p) * 2];
      const std::string base = "blk." + std::to_string(l) + "." + lora_proj_gguf_name(p);
      const std::pair<const char*, std::vector<float>*> parts[] = {
          {".a", &A}, {".b", &B}, {".a.m", &st[0].m}, {".a.v", &st[0].v}, {".b.m", &st[1].m}, {".b.v", &st[1].v}};
      for (const auto& [suffix, vec] : parts) {
        const GgufTensorInfo* t = g.find_tensor(base + suffix);
        const size_t want = suffix[1] == 'a' ? A.size() : B.size();
        if (!t) {
          if (*step == 0 && std::strlen(suffix) > 2) continue;
          return errorf("finetune: %s lacks tensor %s%s", path.c_str(), base.c_str(), suffix);
        }
        if (t->type != DType::F32 || static_cast<size_t>(t->n_elements()) != want) {
          return errorf("finetune: %s: tensor %s%s has the wrong shape", path.c_str(), base.c_str(), suffix);
        }
        vec->assign(reinterpret_cast<const float*>(t->data), reinterpret_cast<const float*>(t->data) + want);
      }
    }
  }
  step_ = static_cast<int64_t>(*step);
  cursor_ = static_cast<int64_t>(*cursor);
  return Status::ok();
}

// ---- adapter export ----

Status Finetuner::save_gguf_adapter(const std::string& path) const {
  GgufWriter w;
  w.set("general.architecture", GgufValue::of_string("llama"));
  w.set("general.type", GgufValue::of_string("adapter"));
  w.set("adapter.type", GgufValue::of_string("lora"));
  w.set("adapter.lora.alpha", GgufValue::of_f32(cfg_.lora.alpha));
  const int32_t n_layer = model_->shape().n_layer;
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
  const LlamaShape& s = model_->shape();
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
      if ((p == kQ || p == kK) && !s.rope_neox) {
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
  QILIN_TRY(write_atomically(dir + "/adapter_model.safetensors", file));
  nlohmann::json cfg = {{"base_model_name_or_path", base_name}, {"peft_type", "LORA"}, {"task_type", "CAUSAL_LM"},
                        {"r", r}, {"lora_alpha", cfg_.lora.alpha}, {"lora_dropout", 0.0},
                        {"target_modules", targets}, {"bias", "none"}, {"fan_in_fan_out", false},
                        {"inference_mode", true}};
  return write_atomically(dir + "/adapter_config.json", cfg.dump(2) + "\n");
}

}  // namespace qilin::train

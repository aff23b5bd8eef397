// Tiny GGUF builders and the memfd helper of the fuzz targets; see fuzz_util.h.
#include "fuzz_util.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <deque>
#include <random>

#include "cpu/quants.h"
#include "model/lora_adapter.h"

namespace qilin::fuzz {

const char* const kChatmlTemplate =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
const char* const kLlama3Template =
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}";
const char* const kLlama2Template =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}";

namespace {

std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest for 256 + n.
std::vector<std::string> gpt2_byte_chars() {
  std::vector<std::string> out(256);
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    out[b] = utf8(printable ? b : 256 + n++);
  }
  return out;
}

struct Vocab {
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  std::vector<float> scores;
  std::vector<std::string> merges;
  int32_t bos = 0, eos = 0, unk = -1;

  int32_t add(const std::string& t, int32_t type, float score = 0) {
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (tokens[i] == t) return static_cast<int32_t>(i);
    }
    tokens.push_back(t);
    types.push_back(type);
    scores.push_back(score);
    return static_cast<int32_t>(tokens.size() - 1);
  }
};

Vocab gpt2_vocab() {
  Vocab v;
  const std::vector<std::string> bytes = gpt2_byte_chars();
  for (int b = 0; b < 256; ++b) v.add(bytes[b], 1);
  // Words merged left to right, each prefix a token: "h e", "he l", "hel l", "hell o".
  for (const char* w : {"the", " the", " a", "ing", " hello", "hello", "  ", "\n\n", "12", " world",
                        "'s", " 2024", "é", " Ünïcödé"}) {
    std::string cur;
    bool first = true;
    for (unsigned char c : std::string(w)) {
      const std::string& ch = bytes[c];
      if (first) {
        cur = ch;
        first = false;
        continue;
      }
      const std::string merge = cur + " " + ch;
      bool seen = false;
      for (const std::string& m : v.merges) seen = seen || m == merge;
      if (!seen) v.merges.push_back(merge);
      cur += ch;
      v.add(cur, 1);
    }
  }
  v.bos = v.eos = v.add("<|endoftext|>", 3);
  for (const char* s :
       {"<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"}) {
    v.add(s, 3);
  }
  v.add("<tool>", 4);
  return v;
}

Vocab spm_vocab() {
  Vocab v;
  v.unk = v.add("<unk>", 2);
  v.bos = v.add("<s>", 3);
  v.eos = v.add("</s>", 3);
  char buf[8];
  for (int b = 0; b < 256; ++b) {
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    v.add(buf, 6);
  }
  const std::string sp = "\xE2\x96\x81";  // U+2581, SentencePiece's space
  float score = -1;
  for (const std::string& t : std::vector<std::string>{
           sp + "the", sp + "hello", sp + "world", "hello",    "ing",       sp + "a",   sp + "t",
           sp + "th",  sp + "h",     sp + "he",    sp + "hel", sp + "hell", "he",       "ll",
           "llo",      "el",         sp + "w",     "or",       "ld",        sp + "wor", sp + "worl",
           "th",       sp + sp,      "12",         "\xC3\xA9"}) {
    v.add(t, 1, score);
    score -= 1;
  }
  v.add(sp, 1, score--);
  for (char c = 'a'; c <= 'z'; ++c) v.add(std::string(1, c), 1, score--);
  for (char c = '0'; c <= '9'; ++c) v.add(std::string(1, c), 1, score--);
  v.add("[INST]", 4);
  v.add("<<SYS>>", 4);
  return v;
}

// Random values quantized to `type` row by row; the result is owned by `store`.
const std::vector<uint8_t>& random_tensor(std::deque<std::vector<uint8_t>>& store,
                                          std::mt19937& rng, DType type, int64_t ne0, int64_t rows,
                                          float scale) {
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<float> row(static_cast<size_t>(ne0));
  const size_t rb = row_bytes(type, ne0);
  std::vector<uint8_t>& out = store.emplace_back(rb * static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    for (float& x : row) x = u(rng);
    quantize_row_ref(type, row.data(), out.data() + r * rb, ne0);
  }
  return out;
}

// A tensor [ne0, ne1] of random values, or [ne0] when ne1 is 0.
void add(GgufWriter& w, std::deque<std::vector<uint8_t>>& store, std::mt19937& rng,
         const std::string& name, DType type, int64_t ne0, int64_t ne1, float scale) {
  const std::vector<uint8_t>& d = random_tensor(store, rng, type, ne0, ne1 == 0 ? 1 : ne1, scale);
  if (ne1 == 0) {
    w.add_tensor(name, type, {ne0}, d.data(), d.size());
  } else {
    w.add_tensor(name, type, {ne0, ne1}, d.data(), d.size());
  }
}

}  // namespace

VocabLists vocab_lists(VocabKind kind) {
  const Vocab v = kind == VocabKind::Gpt2 ? gpt2_vocab() : spm_vocab();
  return {v.tokens, v.types, v.merges, v.bos, v.eos};
}

void note(const char* what, const Status& st) {
  static const bool verbose = std::getenv("QILIN_FUZZ_VERBOSE") != nullptr;
  if (verbose) std::fprintf(stderr, "%s: %s\n", what, st.is_ok() ? "ok" : st.message().c_str());
}

void use_scalar_kernels() { setenv("QILIN_ISA", "scalar", 1); }

TinyModel lora_base_model() {
  TinyModel m;
  m.n_layer = 2;
  m.n_embd = 32;
  m.n_head = 4;
  m.n_head_kv = 2;
  m.n_ff = 64;
  m.embd_type = DType::F32;
  return m;
}

TinyModel checkpoint_base_model() {
  TinyModel m;
  m.embd_type = DType::F32;
  return m;
}

train::FinetuneConfig checkpoint_config() {
  train::FinetuneConfig c;
  c.lora.rank = 2;
  c.lora.alpha = 4;
  c.lora.targets = {true, false, true, false, false, false, false};  // q and v
  c.steps = 3;
  c.warmup = 1;
  c.seed = 7;
  c.n_threads = 1;
  return c;
}

std::vector<train::Example> checkpoint_examples() {
  std::vector<train::Example> ex(3);
  for (size_t i = 0; i < ex.size(); ++i) {
    for (int32_t k = 0; k < 6; ++k) {
      ex[i].tokens.push_back(static_cast<int32_t>(40 + 7 * i + k));
      ex[i].targets.push_back(k < 2 ? -1 : static_cast<int32_t>(41 + 7 * i + k));
    }
  }
  return ex;
}

std::vector<uint8_t> tiny_llama_gguf(const TinyModel& m) {
  Vocab v = m.vocab == VocabKind::Gpt2 ? gpt2_vocab() : spm_vocab();
  for (const std::string& t : m.extra_tokens) v.add(t, 1, -1000.0f);
  GgufWriter w;
  w.set("general.architecture", GgufValue::of_string("llama"));
  w.set("general.name", GgufValue::of_string("qilin-fuzz-tiny"));
  w.set("llama.context_length", GgufValue::of_u32(64));
  w.set("llama.embedding_length", GgufValue::of_u32(m.n_embd));
  w.set("llama.block_count", GgufValue::of_u32(m.n_layer));
  w.set("llama.feed_forward_length", GgufValue::of_u32(m.n_ff));
  w.set("llama.attention.head_count", GgufValue::of_u32(m.n_head));
  w.set("llama.attention.head_count_kv", GgufValue::of_u32(m.n_head_kv));
  w.set("llama.attention.layer_norm_rms_epsilon", GgufValue::of_f32(1e-5f));
  w.set("llama.rope.freq_base", GgufValue::of_f32(10000.0f));
  w.set("tokenizer.ggml.model",
        GgufValue::of_string(m.vocab == VocabKind::Gpt2 ? "gpt2" : "llama"));
  if (m.vocab == VocabKind::Gpt2 && !m.pre.empty()) {
    w.set("tokenizer.ggml.pre", GgufValue::of_string(m.pre));
  }
  w.set("tokenizer.ggml.tokens", GgufValue::of_strings(v.tokens));
  std::vector<GgufValue> types, scores;
  for (int32_t t : v.types) types.push_back(GgufValue::of_i32(t));
  for (float s : v.scores) scores.push_back(GgufValue::of_f32(s));
  w.set("tokenizer.ggml.token_type", GgufValue::of_array(GgufType::INT32, std::move(types)));
  if (m.vocab == VocabKind::Gpt2) {
    w.set("tokenizer.ggml.merges", GgufValue::of_strings(v.merges));
  } else {
    w.set("tokenizer.ggml.scores", GgufValue::of_array(GgufType::FLOAT32, std::move(scores)));
    w.set("tokenizer.ggml.unknown_token_id", GgufValue::of_u32(v.unk));
    w.set("tokenizer.ggml.add_bos_token", GgufValue::of_bool(true));
  }
  w.set("tokenizer.ggml.bos_token_id", GgufValue::of_u32(v.bos));
  w.set("tokenizer.ggml.eos_token_id", GgufValue::of_u32(v.eos));
  if (!m.chat_template.empty()) {
    w.set("tokenizer.chat_template", GgufValue::of_string(m.chat_template));
  }

  std::deque<std::vector<uint8_t>> store;
  std::mt19937 rng(m.seed);
  const int64_t n_vocab = static_cast<int64_t>(v.tokens.size());
  const int64_t hd = m.n_embd / m.n_head;
  const int64_t d_q = m.n_head * hd, d_kv = m.n_head_kv * hd;
  add(w, store, rng, "token_embd.weight", m.embd_type, m.n_embd, n_vocab, 1.0f);
  for (int32_t il = 0; il < m.n_layer; ++il) {
    const std::string p = "blk." + std::to_string(il) + ".";
    add(w, store, rng, p + "attn_norm.weight", DType::F32, m.n_embd, 0, 1.0f);
    add(w, store, rng, p + "attn_q.weight", m.weight_type, m.n_embd, d_q, 0.3f);
    add(w, store, rng, p + "attn_k.weight", m.weight_type, m.n_embd, d_kv, 0.3f);
    add(w, store, rng, p + "attn_v.weight", m.weight_type, m.n_embd, d_kv, 0.3f);
    add(w, store, rng, p + "attn_output.weight", m.weight_type, d_q, m.n_embd, 0.3f);
    add(w, store, rng, p + "ffn_norm.weight", DType::F32, m.n_embd, 0, 1.0f);
    add(w, store, rng, p + "ffn_gate.weight", m.weight_type, m.n_embd, m.n_ff, 0.3f);
    add(w, store, rng, p + "ffn_up.weight", m.weight_type, m.n_embd, m.n_ff, 0.3f);
    add(w, store, rng, p + "ffn_down.weight", m.weight_type, m.n_ff, m.n_embd, 0.3f);
  }
  add(w, store, rng, "output_norm.weight", DType::F32, m.n_embd, 0, 1.0f);
  if (!m.tied_output) add(w, store, rng, "output.weight", m.weight_type, m.n_embd, n_vocab, 0.3f);
  auto bytes = w.serialize();
  if (!bytes) {
    std::fprintf(stderr, "tiny_llama_gguf: %s\n", bytes.status().message().c_str());
    std::abort();
  }
  return std::move(*bytes);
}

std::vector<uint8_t> tiny_lora_gguf(const LlamaModel& model, int32_t rank, uint32_t proj_mask,
                                    DType a_type, DType b_type, uint32_t seed) {
  GgufWriter w;
  w.set("general.architecture", GgufValue::of_string("llama"));
  w.set("general.type", GgufValue::of_string("adapter"));
  w.set("adapter.type", GgufValue::of_string("lora"));
  w.set("adapter.lora.alpha", GgufValue::of_f32(2.0f * rank));
  std::deque<std::vector<uint8_t>> store;
  std::mt19937 rng(seed);
  const std::vector<LlamaLayer>& layers = model.layers();
  for (size_t il = 0; il < layers.size(); ++il) {
    const LlamaLayer& L = layers[il];
    const WeightView* wv[kLoraNumProj] = {&L.wq,     &L.wk,   &L.wv,    &L.wo,
                                          &L.w_gate, &L.w_up, &L.w_down};
    for (int p = 0; p < kLoraNumProj; ++p) {
      if (!(proj_mask >> p & 1)) continue;
      const std::string base =
          "blk." + std::to_string(il) + "." + lora_proj_gguf_name(p) + ".weight";
      add(w, store, rng, base + ".lora_a", a_type, wv[p]->n_in, rank, 0.5f);
      add(w, store, rng, base + ".lora_b", b_type, rank, wv[p]->n_out, 0.5f);
    }
  }
  auto bytes = w.serialize();
  if (!bytes) {
    std::fprintf(stderr, "tiny_lora_gguf: %s\n", bytes.status().message().c_str());
    std::abort();
  }
  return std::move(*bytes);
}

MemFile::MemFile() {
  fd_ = memfd_create("qilin-fuzz", MFD_CLOEXEC);
  if (fd_ < 0) {
    std::perror("memfd_create");
    std::abort();
  }
  path_ = "/proc/self/fd/" + std::to_string(fd_);
}

MemFile::~MemFile() {
  if (fd_ >= 0) close(fd_);
}

bool MemFile::assign(const uint8_t* data, size_t size) {
  if (ftruncate(fd_, 0) != 0) return false;
  size_t done = 0;
  while (done < size) {
    const ssize_t n = pwrite(fd_, data + done, size - done, static_cast<off_t>(done));
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

Result<std::unique_ptr<LlamaModel>> load_model_bytes(MemFile& file,
                                                     const std::vector<uint8_t>& bytes) {
  if (!file.assign(bytes.data(), bytes.size())) return Status::error("memfd write failed");
  return LlamaModel::load(file.path(), WeightPlacement::Mapped);
}

bool write_file(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return false;
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  return std::fclose(f) == 0 && ok;
}

}  // namespace qilin::fuzz

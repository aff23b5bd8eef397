// Writes the seed corpora of the fuzz targets into fuzz/<target>/corpus (run by hand after a
// change to a target's input format; the outputs are committed): tiny valid GGUF models, LoRA
// adapters and fine-tuning checkpoints made with the same builders the targets use, and small
// hand-written tokenizer, request and chat-template inputs.
//   build-fuzz/fuzz/fuzz_make_seeds fuzz
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "model/lora_adapter.h"
#include "train/finetune.h"

using namespace qilin;

namespace {

std::string g_root;

void put(const std::string& target, const std::string& name, const std::vector<uint8_t>& bytes) {
  const std::string dir = g_root + "/" + target + "/corpus";
  mkdir(dir.c_str(), 0755);
  if (!fuzz::write_file(dir + "/" + name, bytes)) {
    std::fprintf(stderr, "make_seeds: cannot write %s/%s\n", dir.c_str(), name.c_str());
    std::exit(1);
  }
}

void put(const std::string& target, const std::string& name, const std::string& text) {
  put(target, name, std::vector<uint8_t>(text.begin(), text.end()));
}

std::vector<uint8_t> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

void gguf_model_seeds() {
  fuzz::TinyModel m;
  m.chat_template = fuzz::kChatmlTemplate;
  put("gguf_model", "gpt2_gpt-2_chatml.gguf", fuzz::tiny_llama_gguf(m));
  m.pre = "llama-bpe";
  m.n_layer = 2;
  m.tied_output = false;
  m.chat_template = fuzz::kLlama3Template;
  put("gguf_model", "gpt2_llama-bpe_llama3_untied.gguf", fuzz::tiny_llama_gguf(m));
  m = fuzz::TinyModel();
  m.pre = "smollm";
  m.n_head_kv = 2;
  put("gguf_model", "gpt2_smollm_mha.gguf", fuzz::tiny_llama_gguf(m));
  m = fuzz::TinyModel();
  m.pre = "";
  m.n_embd = 32;
  m.n_head = 4;
  m.n_head_kv = 2;
  m.n_ff = 32;
  m.weight_type = DType::Q8_0;
  m.embd_type = DType::Q8_0;
  put("gguf_model", "gpt2_nopre_q8_0.gguf", fuzz::tiny_llama_gguf(m));
  m = fuzz::TinyModel();
  m.vocab = fuzz::VocabKind::Spm;
  m.chat_template = fuzz::kLlama2Template;
  put("gguf_model", "spm_llama2.gguf", fuzz::tiny_llama_gguf(m));
  m.n_embd = 32;
  m.n_head = 2;
  m.n_ff = 32;
  m.weight_type = DType::Q4_0;
  m.embd_type = DType::Q4_1;
  m.chat_template = fuzz::kChatmlTemplate;
  put("gguf_model", "spm_q4_0_chatml.gguf", fuzz::tiny_llama_gguf(m));
}

// Inputs that crashed (or would have) a target: kept as regressions, replayed by scripts/fuzz.sh.
void gguf_model_regressions() {
  // Issue 15: GPT-2 byte decoding of a vocabulary entry was quadratic in its code points (a
  // token of 20,000 code points outside the byte map cost ~1.2 GB at load).
  fuzz::TinyModel m;
  std::string t;
  for (int i = 0; i < 20000; ++i) t += "\xE2\x82\xAC";  // U+20AC, not a GPT-2 byte character
  m.extra_tokens = {t};
  const std::string dir = g_root + "/gguf_model/regressions";
  mkdir(dir.c_str(), 0755);
  if (!fuzz::write_file(dir + "/token_20k_unmapped_codepoints.gguf", fuzz::tiny_llama_gguf(m))) {
    std::exit(1);
  }
}

void lora_seeds() {
  fuzz::MemFile mf;
  auto model = fuzz::load_model_bytes(mf, fuzz::tiny_llama_gguf(fuzz::lora_base_model()));
  if (!model) {
    std::fprintf(stderr, "make_seeds: %s\n", model.status().message().c_str());
    std::exit(1);
  }
  const LlamaModel& lm = **model;
  put("lora", "f32_r2_all.gguf", fuzz::tiny_lora_gguf(lm, 2, 0x7F, DType::F32, DType::F32, 1));
  put("lora", "f16_r4_qv.gguf", fuzz::tiny_lora_gguf(lm, 4, 0x05, DType::F16, DType::F16, 2));
  put("lora", "q8_0_f32_r2_attn.gguf",
      fuzz::tiny_lora_gguf(lm, 2, 0x0F, DType::Q8_0, DType::F32, 3));
  put("lora", "bf16_r1_down.gguf", fuzz::tiny_lora_gguf(lm, 1, 0x40, DType::BF16, DType::BF16, 4));
  put("lora", "q4_0_r32_up.gguf", fuzz::tiny_lora_gguf(lm, 32, 0x20, DType::Q4_0, DType::Q8_0, 5));
}

void checkpoint_seeds() {
  fuzz::MemFile mf;
  auto model = fuzz::load_model_bytes(mf, fuzz::tiny_llama_gguf(fuzz::checkpoint_base_model()));
  if (!model) {
    std::fprintf(stderr, "make_seeds: %s\n", model.status().message().c_str());
    std::exit(1);
  }
  char dir[] = "/tmp/qilin-seeds-XXXXXX";
  if (!mkdtemp(dir)) std::exit(1);
  const std::string path = std::string(dir) + "/ckpt.gguf";
  for (int64_t steps : {0, 1, 2}) {
    // A checkpoint after `steps` optimizer steps (0: as saved before the first).
    train::FinetuneConfig c = fuzz::checkpoint_config();
    c.steps = std::max<int64_t>(steps, 1);
    auto ft = train::Finetuner::create(**model, c, fuzz::checkpoint_examples(), {});
    if (!ft || (steps > 0 && !(*ft)->run(nullptr).is_ok())) std::exit(1);
    if (!(*ft)->save_checkpoint(path).is_ok()) std::exit(1);
    put("checkpoint", "step" + std::to_string(steps) + ".gguf", read_all(path));
  }
  unlink(path.c_str());
  rmdir(dir);
}

void tokenizer_seeds() {
  // Byte 0: tokenizer (0 gpt-2, 1 llama-bpe, 2 smollm, 3 dbrx, 4 default, 5 spm); byte 1: mode.
  const std::vector<std::string> texts = {
      "Hello world, the 2024 release!",
      "  leading spaces\n\n\ttabs and 12345678 digits's",
      "caf\xC3\xA9 \xC3\x9Cn\xC3\xAF"
      "c\xC3\xB6"
      "d\xC3\xA9 \xE4\xB8\xAD\xE6\x96\x87 \xF0\x9F\x98\x80 \xD8\xA7\xD9\x84",
      "<|im_start|>user\nhi<|im_end|> <tool> [INST] <<SYS>> <s></s><|endoftext|>",
      "def f(x):\n    return x**2  # comment\r\n",
      "\xFF\xFE invalid \xC3 utf8 \xED\xA0\x80"};
  for (int kind = 0; kind < 6; ++kind) {
    for (size_t i = 0; i < texts.size(); ++i) {
      const uint8_t mode = static_cast<uint8_t>(i % 2 == 0 ? 0 : 6 | (i & 8));
      std::string in;
      in += static_cast<char>(kind);
      in += static_cast<char>(mode);
      in += texts[i];
      put("tokenizer", "k" + std::to_string(kind) + "_enc" + std::to_string(i), in);
    }
    std::string dec;
    dec += static_cast<char>(kind);
    dec += static_cast<char>(1 | 8);
    for (int32_t id : {0, 1, 2, 3, 40, 100, 255, 256, 258, 300, 1000000, -1}) {
      dec.append(reinterpret_cast<const char*>(&id), 4);
    }
    put("tokenizer", "k" + std::to_string(kind) + "_dec", dec);
  }
}

void tokenizer_vocab_seeds() {
  // See fuzz/tokenizer_vocab/tokenizer_vocab.cc for the layout.
  const std::string z(1, '\0');
  int i = 0;
  for (fuzz::VocabKind kind : {fuzz::VocabKind::Gpt2, fuzz::VocabKind::Spm}) {
    const fuzz::VocabLists v = fuzz::vocab_lists(kind);
    std::string toks, merges;
    for (size_t k = 0; k < v.tokens.size(); ++k) {
      toks += (k ? "\n" : "") + std::string(1, static_cast<char>(v.types[k])) + v.tokens[k];
    }
    for (size_t k = 0; k < v.merges.size(); ++k) merges += (k ? "\n" : "") + v.merges[k];
    for (int pre = 0; pre < (kind == fuzz::VocabKind::Gpt2 ? 5 : 1); ++pre) {
      std::string in;
      in += static_cast<char>(kind == fuzz::VocabKind::Spm ? 1 : pre << 1);
      in += static_cast<char>(v.bos < 255 ? v.bos : 255);
      in += static_cast<char>(v.eos < 255 ? v.eos : 255);
      in += static_cast<char>(kind == fuzz::VocabKind::Spm ? 1 | 4 | 8 : 8);
      in += toks + z + merges + z + "Hello world, the 2024 <|im_start|>caf\xC3\xA9 <tool> [INST]";
      put("tokenizer_vocab", "vocab" + std::to_string(i++), in);
    }
  }
  // A few tokens only: the defaults and fallbacks (no bos/eos keys, no types).
  put("tokenizer_vocab", "small_gpt2",
      std::string("\x00\xFF\xFF\x10", 4) +
          "\x01"
          "a\n\x01"
          "b\n\x01"
          "ab\n\x03<|endoftext|>" +
          z + "a b" + z + "abab<|endoftext|>ba");
  put("tokenizer_vocab", "small_spm",
      std::string("\x01\x00\x01\x04", 4) +
          "\x02<unk>\n\x03<s>\n\x06<0x41>\n\x01\xE2\x96\x81"
          "a" +
          z + z + "a aA\xFF");
}

void openai_seeds() {
  const std::vector<std::pair<int, std::string>> bodies = {
      {0, R"({"model":"m","prompt":"Hello","max_tokens":8,"temperature":0.7,"top_p":0.9})"},
      {0, R"({"prompt":[1,2,3,300],"n":2,"stop":["\n","."],"seed":42,"logprobs":3,"echo":true})"},
      {0,
       R"({"prompt":["a"],"stream":true,"stream_options":{"include_usage":true},"top_k":40,"min_p":0.05,"ignore_eos":true,"presence_penalty":0.5,"frequency_penalty":0.5,"repeat_penalty":1.1,"suffix":null,"best_of":1})"},
      {0, R"({"prompt":"x","logit_bias":{"1":5},"max_tokens":1e3})"},
      {1,
       R"({"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],"max_completion_tokens":16})"},
      {1,
       R"({"messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]},{"role":"assistant","content":"Hello","refusal":null}],"logprobs":true,"top_logprobs":5,"stream":true})"},
      {1,
       R"({"messages":[{"role":"developer","content":"d"},{"role":"tool","content":"t"}],"tools":[],"response_format":{"type":"json_object"},"user":"u"})"},
      {1,
       R"({"messages":[{"role":"user","content":"<|im_start|>x\u00e9\ud83d\ude00"}],"stop":"</s>","n":16,"temperature":2})"},
      {0, R"([{"prompt":1}])"},
      {1, R"({"messages":[],"functions":[{}]})"},
  };
  for (size_t i = 0; i < bodies.size(); ++i) {
    std::string in(1, static_cast<char>(bodies[i].first));
    in += bodies[i].second;
    put("openai_request", (bodies[i].first ? "chat" : "completions") + std::to_string(i) + ".json",
        in);
  }
}

void chat_template_seeds() {
  const std::string z(1, '\0');
  const std::string conv = "system" + z + "Be brief." + z + "user" + z + " Hi \xC3\xA9 " + z +
                           "assistant" + z + "Hello." + z + "user" + z + "2+2?";
  int i = 0;
  for (const char* t : {fuzz::kChatmlTemplate, fuzz::kLlama3Template, fuzz::kLlama2Template}) {
    put("chat_template", "family" + std::to_string(i++),
        std::string(t) + z + "<s>" + z + "</s>" + z + "\x01" + z + conv);
  }
  put("chat_template", "llama2_no_system",
      std::string(fuzz::kLlama2Template) + z + "<s>" + z + "</s>" + z + "\x00" + z + "user" + z +
          "q" + z + "assistant" + z + "a" + z + "user" + z + "q2");
  put("chat_template", "chatml_tool_role",
      std::string("<|im_start|><|im_end|>") + z + z + z + "\x01" + z + "tool" + z + "{}" + z +
          "bogus" + z + "x");
  put("chat_template", "llama31_refused",
      std::string("<|start_header_id|><|end_header_id|>Cutting Knowledge Date") + z + z + z +
          "\x01");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s FUZZ_DIR\n", argv[0]);
    return 2;
  }
  g_root = argv[1];
  gguf_model_seeds();
  gguf_model_regressions();
  lora_seeds();
  checkpoint_seeds();
  tokenizer_seeds();
  tokenizer_vocab_seeds();
  openai_seeds();
  chat_template_seeds();
  std::printf("make_seeds: corpora written under %s\n", g_root.c_str());
  return 0;
}

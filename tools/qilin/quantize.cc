// `qilin quantize IN OUT --type T`: round-to-nearest (Q8_0, Q4_0, Q4_1, INT4-gN, NF4, NF4+DQ)
// and AWQ (--awq, calibrated on a text file) from one GGUF to another (quant/quantize.h), with a
// progress bar on stderr and the summary (sizes, bits per weight, the types written, fallbacks).
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "command.h"
#include "common.h"
#include "core/printable.h"
#include "core/thread_pool.h"
#include "formats/gguf.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "quant/awq.h"
#include "quant/quantize.h"

namespace qilin::cli {
namespace {

struct QuantizeCli {
  std::string in, out, type;
  int threads = 1;
  bool quiet = false;
  bool awq = false;
  std::vector<std::string> calib;
  int32_t calib_ctx = 512;
  int32_t calib_windows = 32;
  int32_t calib_attn_windows = 8;
  bool no_clip = false;
};
// One line, redrawn in place on a terminal; on a pipe or file, a line per 10%.
class ProgressBar {
 public:
  ProgressBar() : tty_(isatty(STDERR_FILENO) == 1) {}
  void update(const QuantizeProgress& p) {
    const double frac = p.n_elements ? static_cast<double>(p.elements) / p.n_elements : 1.0;
    const int pct = static_cast<int>(frac * 100.0);
    if (!tty_ && pct / 10 == last_ / 10 && p.tensor != p.n_tensors) return;
    last_ = pct;
    constexpr int kWidth = 30;
    const int fill = static_cast<int>(frac * kWidth);
    std::string bar(fill, '=');
    bar.resize(kWidth, ' ');
    std::fprintf(stderr, "%s[%s] %3d%% %zu/%zu %-40.40s%s", tty_ ? "\r" : "", bar.c_str(), pct,
                 p.tensor, p.n_tensors, printable(p.name, 40).c_str(), tty_ ? "" : "\n");
    if (tty_ && p.tensor == p.n_tensors) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }

 private:
  bool tty_;
  int last_ = -100;
};

// "x0.261", or a word when RTN is already exact (e.g. Q4_1 of weights on a Q4_1 grid).
std::string ratio(double num, double den) {
  if (!(den > 0.0)) return "unchanged (RTN is exact)";
  char s[32];
  std::snprintf(s, sizeof s, "x%.3f", num / den);
  return s;
}

class QuantizeCommand final : public Command {
 public:
  const char* name() const override { return "quantize"; }
  void add(CLI::App& app) override;
  int run() override;

 private:
  QuantizeCli o_;
};

void QuantizeCommand::add(CLI::App& app) {
  QuantizeCli& o = o_;
  o.threads = ThreadPool::physical_cores();
  CLI::App* q = app.add_subcommand(
      name(), "quantize a GGUF model (round-to-nearest: " + quant_type_names() + ")");
  q->add_option("input", o.in, "input GGUF (F32/F16/BF16, or quantized: requantized)")->required();
  q->add_option("output", o.out, "output GGUF (written to a temp file, then renamed)")->required();
  q->add_option("--type", o.type, "target type: " + quant_type_names())->required();
  q->add_option("-t,--threads", o.threads, "worker threads (default: physical cores)")
      ->check(CLI::Range(1, 1024));
  q->add_flag("-q,--quiet", o.quiet, "no progress bar");
  q->add_flag("--awq", o.awq,
              "activation-aware scaling and clipping (AWQ), calibrated on --calib text; "
              "export as int4-g128 (Qilin) or q4_0 / q4_1 (llama.cpp)");
  q->add_option("--calib", o.calib, "AWQ calibration text file(s)");
  q->add_option("--calib-ctx", o.calib_ctx, "AWQ calibration window in tokens (default 512)")
      ->check(CLI::Range(16, 1 << 16));
  q->add_option("--calib-windows", o.calib_windows,
                "AWQ calibration windows at most (default 32)")
      ->check(CLI::Range(1, 1 << 20));
  q->add_option("--calib-attn-windows", o.calib_attn_windows,
                "AWQ: windows whose attention output the q/k/v search measures (default 8; "
                "0: q, k and v's output error instead)")
      ->check(CLI::Range(0, 1 << 20));
  q->add_flag("--no-clip", o.no_clip, "AWQ: skip the clipping search (scales only)");
}

int QuantizeCommand::run() {
  const QuantizeCli& o = o_;
  auto type = parse_quant_type(o.type);
  if (!type) return fail("quantize: " + type.status().message());
  auto in = GgufFile::open(o.in);
  if (!in) return fail("quantize: " + in.status().message());
  ProgressBar bar;
  QuantizeOptions qo;
  qo.target = *type;
  qo.n_threads = o.threads;
  // AWQ: calibrate on the input model itself, search, and hand the folded weights to the writer.
  std::unique_ptr<LlamaModel> model;
  AwqResult awq;
  if (o.awq) {
    if (o.calib.empty()) return fail("quantize: --awq needs calibration text (--calib FILE)");
    std::string text;
    for (const std::string& path : o.calib) {
      std::ifstream f(path, std::ios::binary);
      if (!f) return fail("quantize: cannot read calibration file '" + path + "'");
      std::stringstream ss;
      ss << f.rdbuf();
      text += ss.str();
      text += "\n";
    }
    auto m = LlamaModel::load(o.in);
    if (!m) return fail("quantize: " + m.status().message());
    model = std::move(*m);
    auto tok = Tokenizer::from_gguf(model->gguf());
    if (!tok) return fail("quantize: " + tok.status().message());
    std::vector<int32_t> tokens = (*tok)->encode(text, false, false);
    const size_t keep = static_cast<size_t>(o.calib_ctx) * o.calib_windows;
    if (tokens.size() > keep) tokens.resize(keep);
    std::fprintf(stderr, "quantize: AWQ calibration on %zu tokens (%zu windows of %d)\n",
                 tokens.size(), tokens.size() / o.calib_ctx, o.calib_ctx);
    ThreadPool pool(o.threads);
    const double tc = now_ms();
    const bool tty = isatty(STDERR_FILENO) == 1 && !o.quiet;
    auto cal = awq_calibrate(*model, tokens, o.calib_ctx, (*tok)->add_bos() ? (*tok)->bos() : -1,
                             pool, o.calib_attn_windows, [&](int done, int total) {
                               if (tty) std::fprintf(stderr, "\rquantize: calibration %d/%d", done, total);
                             });
    if (!cal) return fail("quantize: " + cal.status().message());
    std::fprintf(stderr, "%squantize: calibration done (%.1f s)\n", tty ? "\n" : "",
                 (now_ms() - tc) / 1000.0);
    AwqOptions ao;
    ao.target = *type;
    ao.clip = !o.no_clip;
    const double ts = now_ms();
    ao.progress = [&](int done, int total) {
      if (tty) std::fprintf(stderr, "\rquantize: AWQ search, layer %d/%d", done, total);
    };
    auto r = awq_quantize(*model, *cal, pool, ao);
    if (!r) return fail("quantize: " + r.status().message());
    awq = std::move(*r);
    std::fprintf(stderr, "%squantize: AWQ search done (%.1f s)\n", tty ? "\n" : "",
                 (now_ms() - ts) / 1000.0);
    double rtn = 0, scaled = 0, cb = 0, ca = 0;
    for (size_t il = 0; il < awq.layers.size(); ++il) {
      const AwqLayerReport& l = awq.layers[il];
      rtn += l.loss_rtn, scaled += l.loss_scaled, cb += l.loss_clip_before, ca += l.loss_clip_after;
      std::fprintf(stderr, "quantize: layer %2zu alpha qkv %.2f o %.2f gate/up %.2f down %.2f; "
                   "output error %s\n", il, l.alpha[0], l.alpha[1], l.alpha[2], l.alpha[3],
                   ratio(l.loss_scaled, l.loss_rtn).c_str());
    }
    std::fprintf(stderr, "quantize: AWQ output error vs RTN: %s after scaling",
                 ratio(scaled, rtn).c_str());
    if (ao.clip) std::fprintf(stderr, "; clipping %s", ratio(ca, cb).c_str());
    std::fprintf(stderr, "\n");
    qo.replace = &awq.tensors;
    qo.extra_kvs.push_back({"qilin.awq.calibration_tokens",
                            GgufValue::of_u32(static_cast<uint32_t>(cal->n_tokens))});
    qo.extra_kvs.push_back({"qilin.awq.clip", GgufValue::of_bool(ao.clip)});
  }
  if (!o.quiet) qo.progress = [&](const QuantizeProgress& p) { bar.update(p); };
  const double t0 = now_ms();
  auto rep = quantize_gguf(model ? model->gguf() : **in, o.out, qo);
  if (!rep) return fail("quantize: " + rep.status().message());
  for (const std::string& n : rep->notes) std::fprintf(stderr, "quantize: note: %s\n", n.c_str());
  std::string types;
  for (const auto& [name, count] : rep->types_out) {
    types += (types.empty() ? "" : ", ") + std::to_string(count) + " " + name;
  }
  std::printf("quantize: %s -> %s (%s) in %.1f s\n", o.in.c_str(), o.out.c_str(),
              quant_type_name(*type), (now_ms() - t0) / 1000.0);
  std::printf("quantize: tensors: %s\n", types.c_str());
  std::printf("quantize: size %.2f MiB -> %.2f MiB; %.3f bits per weight overall",
              rep->bytes_in / 1048576.0, rep->bytes_out / 1048576.0,
              8.0 * rep->bytes_out / static_cast<double>(rep->n_elements));
  if (rep->quantized_elements > 0) {
    std::printf(", %.4f in the layers' %llu weights", 8.0 * rep->quantized_bytes / rep->quantized_elements,
                static_cast<unsigned long long>(rep->quantized_elements));
  }
  std::printf("\n");
  return 0;
}

}  // namespace

std::unique_ptr<Command> make_quantize() { return std::make_unique<QuantizeCommand>(); }

}  // namespace qilin::cli

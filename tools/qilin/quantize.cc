// `qilin quantize` (see quantize.h): options, a progress bar on stderr, and the summary (sizes,
// bits per weight, the types written, fallbacks).
#include "quantize.h"

#include <unistd.h>

#include <cstdio>
#include <string>

#include "common.h"
#include "core/thread_pool.h"
#include "formats/gguf.h"
#include "quant/quantize.h"

namespace qilin::cli {
namespace {

struct QuantizeCli {
  std::string in, out, type;
  int threads = 1;
  bool quiet = false;
};
QuantizeCli g_opts;

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
                 p.tensor, p.n_tensors, p.name, tty_ ? "" : "\n");
    if (tty_ && p.tensor == p.n_tensors) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }

 private:
  bool tty_;
  int last_ = -100;
};

}  // namespace

CLI::App* add_quantize(CLI::App& app) {
  QuantizeCli& o = g_opts;
  o.threads = ThreadPool::physical_cores();
  CLI::App* q = app.add_subcommand(
      "quantize", "quantize a GGUF model (round-to-nearest: " + quant_type_names() + ")");
  q->add_option("input", o.in, "input GGUF (F32/F16/BF16, or quantized: requantized)")->required();
  q->add_option("output", o.out, "output GGUF (written to a temp file, then renamed)")->required();
  q->add_option("--type", o.type, "target type: " + quant_type_names())->required();
  q->add_option("-t,--threads", o.threads, "worker threads (default: physical cores)")
      ->check(CLI::Range(1, 1024));
  q->add_flag("-q,--quiet", o.quiet, "no progress bar");
  return q;
}

int run_quantize() {
  const QuantizeCli& o = g_opts;
  auto type = parse_quant_type(o.type);
  if (!type) return fail("quantize: " + type.status().message());
  auto in = GgufFile::open(o.in);
  if (!in) return fail("quantize: " + in.status().message());
  ProgressBar bar;
  QuantizeOptions qo;
  qo.target = *type;
  qo.n_threads = o.threads;
  if (!o.quiet) qo.progress = [&](const QuantizeProgress& p) { bar.update(p); };
  const double t0 = now_ms();
  auto rep = quantize_gguf(**in, o.out, qo);
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
    std::printf(", %.4f in the %llu weights of type %s", 8.0 * rep->quantized_bytes / rep->quantized_elements,
                static_cast<unsigned long long>(rep->quantized_elements), quant_type_name(*type));
  }
  std::printf("\n");
  return 0;
}

}  // namespace qilin::cli

// `qilin serve` (placeholder while the server is written; see serve.h).
#include "serve.h"

#include "common.h"

namespace qilin::cli {

CLI::App* add_serve(CLI::App& app) {
  return app.add_subcommand("serve", "OpenAI-compatible HTTP server (not built yet)");
}

int run_serve() { return fail("serve: not built yet"); }

}  // namespace qilin::cli

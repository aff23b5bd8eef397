// GET /metrics: the Engine's counters, gauges and latency histograms and the HTTP layer's own
// counts in Prometheus' text exposition format (version 0.0.4). Every name starts with qilin_.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>

#include "engine/engine.h"

namespace qilin::server {

// Counted by the HTTP layer (the Engine never sees requests refused before submit).
struct HttpCounters {
  std::map<std::pair<std::string, int>, uint64_t> responses;  // (endpoint, status) -> count
  uint64_t submitted = 0;    // generation requests the Engine accepted
  uint64_t disconnects = 0;  // streams whose client went away before the end
  int64_t in_flight = 0;     // accepted generation requests whose response is not done
};

std::string prometheus_text(const EngineMetrics& m, const HttpCounters& http);

}  // namespace qilin::server

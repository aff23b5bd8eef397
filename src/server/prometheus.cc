// Prometheus text format for /metrics: see prometheus.h.
#include "server/prometheus.h"

#include <cinttypes>
#include <cstdio>
#include <cstdlib>

namespace qilin::server {

namespace {

void header(std::string& out, const char* name, const char* type, const char* help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

// The shortest text that reads back as v (0.025, not 0.025000000000000001).
void number(std::string& out, double v) {
  char buf[64];
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof(buf), "%.*g", prec, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  out += buf;
}

void metric(std::string& out, const char* name, const char* type, const char* help, double v) {
  header(out, name, type, help);
  out += name;
  out += ' ';
  number(out, v);
  out += '\n';
}

// Prometheus buckets are cumulative and end with le="+Inf" (which equals _count).
void histogram(std::string& out, const char* name, const char* help, const Histogram& h) {
  header(out, name, "histogram", help);
  uint64_t cum = 0;
  for (size_t i = 0; i < h.bounds.size(); ++i) {
    if (i < h.counts.size()) cum += h.counts[i];
    out += name;
    out += "_bucket{le=\"";
    number(out, h.bounds[i]);
    out += "\"} ";
    out += std::to_string(cum);
    out += '\n';
  }
  out += name;
  out += "_bucket{le=\"+Inf\"} ";
  out += std::to_string(h.count);
  out += '\n';
  out += name;
  out += "_sum ";
  number(out, h.sum);
  out += '\n';
  out += name;
  out += "_count ";
  out += std::to_string(h.count);
  out += '\n';
}

}  // namespace

std::string prometheus_text(const EngineMetrics& m, const HttpCounters& http) {
  std::string o;
  o.reserve(8192);
  metric(o, "qilin_requests_received_total", "counter",
         "Generation requests submitted to the engine.", static_cast<double>(m.requests_received));
  metric(o, "qilin_requests_finished_total", "counter",
         "Requests whose every choice finished (stop, length or error).",
         static_cast<double>(m.requests_finished));
  metric(o, "qilin_requests_cancelled_total", "counter",
         "Requests cancelled (client gone or shutdown).",
         static_cast<double>(m.requests_cancelled));
  metric(o, "qilin_requests_rejected_total", "counter",
         "Requests the engine refused at submit (invalid, too long, queue full, shutting down).",
         static_cast<double>(m.requests_rejected));
  metric(o, "qilin_prompt_tokens_total", "counter", "Prompt tokens of accepted requests.",
         static_cast<double>(m.prompt_tokens));
  metric(o, "qilin_generation_tokens_total", "counter", "Tokens generated.",
         static_cast<double>(m.generated_tokens));
  metric(o, "qilin_prefix_cache_hit_tokens_total", "counter",
         "Prompt tokens found in the prefix cache instead of computed.",
         static_cast<double>(m.prefix_hit_tokens));
  metric(o, "qilin_preemptions_total", "counter",
         "Sequences preempted because the KV pool was full.", static_cast<double>(m.preemptions));
  metric(o, "qilin_engine_steps_total", "counter", "Engine iterations that ran a batch.",
         static_cast<double>(m.steps));
  metric(o, "qilin_requests_waiting", "gauge", "Requests waiting to be admitted (or preempted).",
         m.waiting);
  metric(o, "qilin_sequences_running", "gauge", "Sequences admitted and running.", m.running);
  metric(o, "qilin_kv_blocks_total", "gauge", "KV cache blocks in the pool.", m.kv.total);
  metric(o, "qilin_kv_blocks_used", "gauge", "KV blocks owned by at least one sequence.",
         m.kv.used);
  metric(o, "qilin_kv_blocks_free", "gauge", "KV blocks holding nothing.", m.kv.free);
  metric(o, "qilin_kv_blocks_cached", "gauge",
         "KV blocks owned by no sequence but kept as prefix-cache entries (reusable).",
         m.kv.cached);
  metric(o, "qilin_kv_blocks_shared", "gauge", "KV blocks owned by more than one sequence.",
         m.kv.shared);
  metric(o, "qilin_kv_evictions_total", "counter", "Prefix-cache blocks evicted for reuse.",
         static_cast<double>(m.kv.evictions));
  histogram(o, "qilin_time_to_first_token_seconds", "Time from submit to the first token.", m.ttft);
  histogram(o, "qilin_inter_token_latency_seconds", "Time between consecutive tokens of a choice.",
            m.itl);

  header(o, "qilin_http_responses_total", "counter", "HTTP responses by endpoint and status.");
  for (const auto& [key, n] : http.responses) {
    o += "qilin_http_responses_total{endpoint=\"" + key.first + "\",status=\"" +
         std::to_string(key.second) + "\"} " + std::to_string(n) + "\n";
  }
  metric(o, "qilin_http_generation_requests_total", "counter",
         "Generation requests accepted by the engine through HTTP.",
         static_cast<double>(http.submitted));
  metric(o, "qilin_http_client_disconnects_total", "counter",
         "Streams cancelled because the client went away.", static_cast<double>(http.disconnects));
  metric(o, "qilin_http_generation_in_flight", "gauge",
         "Accepted generation requests whose HTTP response is not finished.",
         static_cast<double>(http.in_flight));
  return o;
}

}  // namespace qilin::server

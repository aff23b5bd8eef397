// The generation endpoints (/v1/completions, /v1/chat/completions): body -> GenerationRequest
// -> Backend::submit, then the Engine's events gathered into one response or sent as
// Server-Sent Events (keep-alive comments, errors as events, disconnect -> cancel, the
// graceful stop's deadline). See http_server.h.
#include "server/http_server_internal.h"

#include <algorithm>
#include <chrono>
#include <ctime>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

namespace qilin::server {

using namespace http_internal;

namespace {

ApiError submit_error(const SubmitResult& r) {
  switch (r.error) {
    case SubmitError::TooLong:
      return error_of(400, r.message, "invalid_request_error", "context_length_exceeded");
    case SubmitError::QueueFull:
      return error_of(429,
                      "the server is busy (request queue full): " + r.message + "; retry later",
                      "rate_limit_exceeded", "queue_full");
    case SubmitError::ShuttingDown:
      return shutting_down_error();
    default:
      return error_of(400, r.message, "invalid_request_error", "");
  }
}

}  // namespace

void HttpServer::Impl::generate(Endpoint endpoint, const httplib::Request& req,
                                httplib::Response& res, const httplib::ContentReader& reader) {
  std::string body;
  // JSON only: a browser sends text/plain, form and multipart bodies cross-origin without a
  // preflight, so accepting them would let any web page make this server generate.
  const bool is_json = is_json_content_type(req.get_header_value("Content-Type"));
  if (is_json ? !read_body(reader, res, &body) : !discard_body(req, reader, res)) return;
  if (guard(req, res)) return;
  if (!authorized(req)) return send_error(res, unauthorized_error());
  if (!is_json) {
    return send_error(res, error_of(415,
                                    "'Content-Type' must be application/json, got " +
                                        (req.has_header("Content-Type")
                                             ? clipped(req.get_header_value("Content-Type"))
                                             : std::string("none")),
                                    "invalid_request_error", "unsupported_media_type"));
  }
  if (stopping) return send_error(res, shutting_down_error());
  GenerationRequest gr;
  if (auto e = parse_request(endpoint, body, opts.limits, &gr)) return send_error(res, *e);
  body.clear();
  body.shrink_to_fit();
  RequestParams p;
  if (auto e = tokenize_prompt(gr, tok, tmpl, &p.prompt)) return send_error(res, *e);
  const int32_t n_prompt = static_cast<int32_t>(p.prompt.size());
  if (gr.max_tokens > 0) {
    p.max_tokens = gr.max_tokens;
  } else if (endpoint == Endpoint::Completions) {
    p.max_tokens = 16;  // OpenAI's default for completions
  } else {
    // Chat without a limit: whatever the sequence has room for after the prompt.
    p.max_tokens = backend.max_new_tokens(n_prompt, gr.n);
    if (p.max_tokens < 1) {
      ApiError e = error_of(400,
                            "the prompt has " + std::to_string(n_prompt) +
                                " tokens, which leaves no room to generate",
                            "invalid_request_error", "context_length_exceeded");
      e.param = "messages";
      return send_error(res, e);
    }
  }
  p.n = gr.n;
  p.sampling = gr.sampling;
  if (!gr.seed_given) {
    thread_local std::mt19937_64 rng{std::random_device{}()};
    p.sampling.seed = rng();
  }
  p.stop = gr.stop;
  p.ignore_eos = gr.ignore_eos;
  p.logprobs = gr.logprobs;
  p.top_logprobs = gr.top_logprobs;

  ResponseMeta meta;
  meta.id = new_response_id(endpoint);
  meta.created = static_cast<int64_t>(std::time(nullptr));
  meta.model = opts.model_id;
  meta.endpoint = endpoint;
  meta.logprobs = gr.logprobs;
  meta.top_logprobs = gr.top_logprobs;
  if (gr.echo) meta.echo = gr.prompt_is_tokens ? tok.decode(gr.prompt_tokens) : gr.prompt_text;

  auto q = std::make_shared<EventQueue>();
  const int32_t n = p.n;
  SubmitResult sr = backend.submit(std::move(p), [q](const ChoiceEvent& ev) { q->push(ev); });
  if (!sr.ok()) return send_error(res, submit_error(sr));
  {
    std::lock_guard<std::mutex> lock(mu);
    ++counters.submitted;
    ++counters.in_flight;
  }
  if (!gr.stream) return respond_whole(q, sr.id, std::move(meta), n, n_prompt, res);

  auto s = std::make_shared<StreamState>();
  s->events = q;
  s->id = sr.id;
  s->meta = std::move(meta);
  s->n = n;
  s->n_prompt = n_prompt;
  s->include_usage = gr.include_usage;
  res.status = 200;
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, s](size_t, httplib::DataSink& sink) { return pump_stream(*s, sink); },
      // Runs however the response ends (finished, write failed, never started).
      [this, s](bool) {
        if (!s->finished) backend.cancel(s->id);
        finish_in_flight(!s->finished);
      });
}

void HttpServer::Impl::respond_whole(const std::shared_ptr<EventQueue>& q, RequestId id,
                                     ResponseMeta meta, int32_t n, int32_t n_prompt,
                                     httplib::Response& res) {
  std::vector<ChoiceOutput> out(n);
  int32_t finished = 0;
  std::vector<ChoiceEvent> evs;
  Clock::time_point stop_seen{};
  bool timed_out = false;
  while (finished < n) {
    if (past_cancel_time()) {
      if (stop_seen == Clock::time_point{}) {
        stop_seen = Clock::now();
        backend.cancel(id);
      } else if (Clock::now() - stop_seen > kStopGrace) {
        timed_out = true;
        break;
      }
    }
    evs.clear();
    if (!q->pop_all(&evs, kPollInterval)) continue;
    for (const ChoiceEvent& ev : evs) {
      if (ev.index < 0 || ev.index >= n) continue;
      ChoiceOutput& c = out[ev.index];
      if (c.finish != FinishReason::None) continue;
      c.text += ev.text;
      c.tokens.insert(c.tokens.end(), ev.tokens.begin(), ev.tokens.end());
      c.n_generated = ev.n_generated;
      if (ev.n_prompt > 0) n_prompt = ev.n_prompt;
      if (ev.finish != FinishReason::None) {
        c.finish = ev.finish;
        c.error = ev.error;
        ++finished;
      }
    }
  }
  finish_in_flight(false);
  for (const ChoiceOutput& c : out) {
    if (c.finish == FinishReason::Error) {
      return send_error(res, error_of(500, "generation failed: " + c.error, "server_error", ""));
    }
    if (timed_out || c.finish == FinishReason::Cancelled) {
      return send_error(res, shutting_down_error());
    }
  }
  send_json(res, response_json(meta, out, n_prompt, tok));
}

bool HttpServer::Impl::pump_stream(StreamState& s, httplib::DataSink& sink) {
  const bool chat = s.meta.endpoint == Endpoint::Chat;
  auto send = [&](const json& j) {
    const std::string line = "data: " + dump_json(j) + "\n\n";
    return sink.write(line.data(), line.size());
  };
  // An error inside a stream: the status line is long gone, so it travels as an event, and
  // [DONE] ends the stream as usual.
  auto send_error_event = [&](const ApiError& e) {
    const std::string line = "data: " + error_body(e) + "\n\ndata: [DONE]\n\n";
    sink.write(line.data(), line.size());
    backend.cancel(s.id);  // the other choices, if any
    s.finished = true;
    sink.done();
    return true;
  };

  std::vector<int64_t> offsets(s.n, static_cast<int64_t>(s.meta.echo.size()));
  std::vector<int32_t> generated(s.n, 0);
  std::vector<bool> done(s.n, false), started(s.n, false);
  int32_t n_done = 0;
  if (chat) {
    for (int32_t i = 0; i < s.n; ++i) {
      if (!send(chat_role_chunk(s.meta, i, s.include_usage))) return false;
    }
  }
  auto last_write = Clock::now();
  Clock::time_point stop_seen{};
  std::vector<ChoiceEvent> evs;
  while (n_done < s.n) {
    if (past_cancel_time()) {
      if (stop_seen == Clock::time_point{}) {
        stop_seen = Clock::now();
        backend.cancel(s.id);
      } else if (Clock::now() - stop_seen > kStopGrace) {
        return send_error_event(shutting_down_error());
      }
    }
    evs.clear();
    if (!s.events->pop_all(&evs, kPollInterval)) {
      if (Clock::now() - last_write >= kKeepAliveInterval) {
        static const std::string ka = ": keep-alive\n\n";
        if (!sink.write(ka.data(), ka.size())) return false;
        last_write = Clock::now();
      }
      continue;
    }
    for (ChoiceEvent& ev : evs) {
      if (ev.index < 0 || ev.index >= s.n || done[ev.index]) continue;
      const int32_t i = ev.index;
      const FinishReason why = ev.finish;
      generated[i] = ev.n_generated;
      if (ev.n_prompt > 0) s.n_prompt = ev.n_prompt;
      if (ev.finish == FinishReason::Error) {
        return send_error_event(
            error_of(500, "generation failed: " + ev.error, "server_error", ""));
      }
      if (ev.finish == FinishReason::Cancelled) {
        // Not ours (ours ends the stream before): the server is stopping.
        return send_error_event(shutting_down_error());
      }
      if (!chat && !started[i]) ev.text = s.meta.echo + ev.text;
      started[i] = true;
      auto visible = [&](const GeneratedToken& g) { return !tok.is_eog(g.token); };
      const bool has_payload =
          !ev.text.empty() ||
          (s.meta.logprobs && std::any_of(ev.tokens.begin(), ev.tokens.end(), visible));
      if (chat) {
        // OpenAI's order: content deltas, then a chunk with an empty delta and the reason.
        if (has_payload) {
          ev.finish = FinishReason::None;
          if (!send(event_chunk(s.meta, ev, tok, s.include_usage, &offsets[i]))) return false;
        }
        if (why != FinishReason::None) {
          ChoiceEvent last;
          last.index = i;
          last.finish = why;
          if (!send(event_chunk(s.meta, last, tok, s.include_usage, &offsets[i]))) return false;
        }
      } else if (has_payload || ev.finish != FinishReason::None) {
        if (!send(event_chunk(s.meta, ev, tok, s.include_usage, &offsets[i]))) return false;
      }
      last_write = Clock::now();
      if (why != FinishReason::None) {
        done[i] = true;
        ++n_done;
      }
    }
  }
  s.finished = true;
  if (s.include_usage) {
    int32_t total = 0;
    for (int32_t g : generated) total += g;
    if (!send(usage_chunk(s.meta, s.n_prompt, total))) return false;
  }
  static const std::string done_line = "data: [DONE]\n\n";
  if (!sink.write(done_line.data(), done_line.size())) return false;
  sink.done();
  return true;
}

}  // namespace qilin::server

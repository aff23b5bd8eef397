// Who may call the server and what it accepts, per request: the Bearer key (constant-time
// compare), the Host check on loopback (DNS rebinding) and the Origin list, the body limit
// (chunked uploads included), the JSON content type, and the error bodies that refuse. See
// http_server.h.
#include "server/http_server_internal.h"

#include <strings.h>

#include <algorithm>
#include <cctype>
#include <string>

namespace qilin::server {

namespace {

// The key check reads every byte of the expected key whatever the given one is.
bool constant_time_equal(const std::string& given, const std::string& expected) {
  volatile unsigned char diff = given.size() != expected.size();
  for (size_t i = 0; i < expected.size(); ++i) {
    const unsigned char g = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
    diff = diff | (g ^ static_cast<unsigned char>(expected[i]));
  }
  return diff == 0;
}

}  // namespace

namespace http_internal {

ApiError error_of(int status, std::string message, std::string type, std::string code) {
  ApiError e;
  e.status = status;
  e.message = std::move(message);
  e.type = std::move(type);
  e.code = std::move(code);
  return e;
}

ApiError unauthorized_error() {
  return error_of(401, "missing or incorrect API key (send Authorization: Bearer KEY)",
                  "invalid_request_error", "invalid_api_key");
}

ApiError too_large_error(size_t limit) {
  return error_of(
      413, "the request body is larger than the limit of " + std::to_string(limit) + " bytes",
      "invalid_request_error", "request_too_large");
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// An untrusted header value for an error message: clipped (the JSON dump escapes it).
std::string clipped(const std::string& s) {
  return "'" + (s.size() > 100 ? s.substr(0, 97) + "..." : s) + "'";
}

// The media type before any parameters ("application/json; charset=utf-8" is JSON).
bool is_json_content_type(const std::string& value) {
  std::string t = value.substr(0, value.find(';'));
  const size_t b = t.find_first_not_of(" \t");
  const size_t e = t.find_last_not_of(" \t");
  t = b == std::string::npos ? "" : t.substr(b, e - b + 1);
  return lower(t) == "application/json";
}

ApiError shutting_down_error() {
  return error_of(503, "the server is shutting down", "server_error", "shutting_down");
}

}  // namespace http_internal

using namespace http_internal;

bool HttpServer::Impl::authorized(const httplib::Request& req) const {
  if (opts.api_key.empty()) return true;
  const std::string h = req.get_header_value("Authorization");
  std::string given;
  if (h.size() > 7 && strncasecmp(h.c_str(), "Bearer ", 7) == 0) given = h.substr(7);
  return constant_time_equal(given, opts.api_key);
}

// Host must name this server when it listens on loopback: a page on another site whose name a
// DNS-rebinding attacker pointed at 127.0.0.1 sends its own name, and is refused.
bool HttpServer::Impl::host_allowed(const std::string& value) const {
  if (!check_host) return true;
  std::string h = lower(value);
  // Appended, not ":" + to_string(...): inlined here, that operator+ trips GCC 12's false
  // -Wrestrict warning (GCC bug 105329).
  std::string suffix = ":";
  suffix += std::to_string(port.load());
  if (h.size() > suffix.size() && h.compare(h.size() - suffix.size(), suffix.size(), suffix) == 0) {
    h.resize(h.size() - suffix.size());
  }
  return !h.empty() && std::find(hosts.begin(), hosts.end(), h) != hosts.end();
}

bool HttpServer::Impl::origin_allowed(const std::string& origin) const {
  const std::string o = lower(origin);
  for (const std::string& allowed : opts.cors_origins) {
    if (allowed == "*" || lower(allowed) == o) return true;
  }
  return false;
}

std::optional<ApiError> HttpServer::Impl::refused_by_policy(const httplib::Request& req) const {
  if (!host_allowed(req.get_header_value("Host"))) {
    return error_of(403,
                    "the Host header " + clipped(req.get_header_value("Host")) +
                        " does not name this server: on a loopback address it answers to "
                        "localhost, 127.0.0.1, [::1] and its --host-alias names only",
                    "invalid_request_error", "host_not_allowed");
  }
  if (req.has_header("Origin") && !origin_allowed(req.get_header_value("Origin"))) {
    return error_of(403,
                    "requests from the web origin " + clipped(req.get_header_value("Origin")) +
                        " are not allowed (the server allows the origins given with "
                        "--cors-origin)",
                    "invalid_request_error", "origin_not_allowed");
  }
  return std::nullopt;
}

// Every handler's first step (after reading the body): the request is in, so its read deadline
// ends; then the Host and Origin policy. True when the request was refused.
bool HttpServer::Impl::guard(const httplib::Request& req, httplib::Response& res) const {
  Listener::request_read();
  if (auto e = refused_by_policy(req)) {
    send_error(res, *e);
    return true;
  }
  return false;
}

void HttpServer::Impl::send_json(httplib::Response& res, const json& j) const {
  res.status = 200;
  res.set_content(dump_json(j), "application/json");
}

void HttpServer::Impl::send_error(httplib::Response& res, const ApiError& e) const {
  res.status = e.status;
  if (e.status == 401) res.set_header("WWW-Authenticate", "Bearer");
  res.set_content(error_body(e), "application/json");
}

// Reads the body through the content reader so that the size limit also holds for chunked
// uploads (httplib checks it only against Content-Length).
bool HttpServer::Impl::read_body(const httplib::ContentReader& reader, httplib::Response& res,
                                 std::string* body) const {
  bool too_big = false;
  const bool ok = reader([&](const char* data, size_t len) {
    if (body->size() + len > opts.max_body_bytes) {
      too_big = true;
      return false;
    }
    body->append(data, len);
    return true;
  });
  if (ok) return true;
  if (too_big || res.status == 413) {
    send_error(res, too_large_error(opts.max_body_bytes));
  } else {
    send_error(res, error_of(400, "could not read the request body", "invalid_request_error", ""));
  }
  res.set_header("Connection", "close");
  return false;
}

// A body that is refused whatever it holds (not JSON) is still read, under the limit, so that
// the answer reaches the client rather than a reset; multipart goes through httplib's parser,
// which the plain reader refuses. False when it answered (too large).
bool HttpServer::Impl::discard_body(const httplib::Request& req,
                                    const httplib::ContentReader& reader,
                                    httplib::Response& res) const {
  size_t total = 0;
  bool too_big = false;
  auto count = [&](const char*, size_t len) {
    total += len;
    too_big = total > opts.max_body_bytes;
    return !too_big;
  };
  const bool ok = req.is_multipart_form_data()
                      ? reader([](const httplib::MultipartFormData&) { return true; }, count)
                      : reader(count);
  if (ok) return true;
  res.set_header("Connection", "close");  // where the body ends is unknown
  if (too_big || res.status == 413) {
    send_error(res, too_large_error(opts.max_body_bytes));
    return false;
  }
  return true;
}

}  // namespace qilin::server

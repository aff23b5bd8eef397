#!/usr/bin/env python3
"""Integration tests of `qilin serve`: the real binary on a loopback port (port 0), spoken to
over HTTP by the official `openai` client and by raw sockets.

    QILIN_BUILD=build .cache/venv/bin/python -m unittest -v tests/integration/test_server.py

Covers: completions, chat and streaming through the openai client; concurrent greedy requests
equal to the same prompts run alone (on an F32 copy of the model, `qilin quantize --type f32`);
a client disconnecting mid-stream frees its KV blocks; the API key; malformed JSON, wrong
types, huge bodies and absurd max_tokens answered with OpenAI-shaped errors while another
request keeps streaming; a soak of 64 concurrent clients with random cancellations, after
which every KV block is free and every request is accounted for in /metrics. The policy a web
page or a slow client meets (docs/reliability.md, "Server"): cross-origin requests and forged
Host headers refused, a listed origin's preflight, 500 silent connections that do not keep a
client waiting, and SIGTERM under 64 streams: every stream ends with [DONE], /metrics scraped
during the stop shows every KV block free, and the process exits 0 within the deadline.
"""
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import openai

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, os.environ.get("QILIN_BUILD", "build"))
QILIN = os.path.join(BUILD, "qilin")
MODEL = os.path.join(os.environ.get("QILIN_MODELS", os.path.join(ROOT, "models")),
                     "SmolLM2-135M-Instruct.Q4_1.gguf")
KEY = "sk-qilin-test-5f1c2a"


class Server:
    """A `qilin serve` process on 127.0.0.1 and a port it picked; stopped with SIGTERM."""

    def __init__(self, model, extra=(), key=KEY, threads=2):
        args = [QILIN, "serve", "-m", model, "--port", "0", "-t", str(threads)] + list(extra)
        env = dict(os.environ)
        env.pop("QILIN_API_KEY", None)
        if key:
            env["QILIN_API_KEY"] = key  # the environment variable path of the key
        self.key = key
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     env=env, text=True)
        self.log = []
        deadline = time.time() + 120
        self.port = None
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            self.proc.kill()
            raise RuntimeError("qilin serve did not start:\n" + "".join(self.log))
        # Keep draining stderr so the server never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def stop(self):
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("qilin serve did not stop within 30 s of SIGTERM")
        self.proc.stderr.close()
        return code

    @property
    def base(self):
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kw):
        kw.setdefault("api_key", self.key)
        return openai.OpenAI(base_url=self.base + "/v1", max_retries=0, timeout=120, **kw)

    def request(self, method, path, body=None, key=True, headers=None, timeout=120):
        """(status, headers dict, body bytes); body may be bytes, str or a JSON value."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        h = dict(headers or {})
        if key and self.key:
            h["Authorization"] = "Bearer " + (key if isinstance(key, str) else self.key)
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            h["Content-Type"] = "application/json"
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def metrics(self):
        status, _, body = self.request("GET", "/metrics")
        assert status == 200, body
        out = {}
        for line in body.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
        return out

    def wait_quiet(self, timeout=30):
        """Metrics once nothing runs, waits or holds a KV block, and every HTTP worker is done."""
        deadline = time.time() + timeout
        m = self.metrics()
        while time.time() < deadline:
            m = self.metrics()
            if (m["qilin_requests_waiting"] == 0 and m["qilin_sequences_running"] == 0
                    and m["qilin_kv_blocks_used"] == 0
                    and m["qilin_http_generation_in_flight"] == 0
                    and m["qilin_requests_received_total"]
                    == m["qilin_requests_finished_total"] + m["qilin_requests_cancelled_total"]):
                return m
            time.sleep(0.05)
        raise AssertionError("the server did not become idle: " + json.dumps(
            {k: v for k, v in m.items() if "bucket" not in k}, indent=1))


def stream_raw(port, path, body, read_events=None):
    """POSTs a streaming request on a raw socket. read_events=None reads to the end and returns
    the data payloads; an int k reads k data events, then drops the connection."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    payload = json.dumps(body).encode()
    s.sendall((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
               "Connection: close\r\n\r\n").encode() + payload)
    if read_events == 0:
        s.close()
        return []
    buf = b""
    events = []
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
        events = re.findall(rb"data: (.*?)\n\n", buf)
        if read_events is not None and len(events) >= read_events:
            break
    s.close()
    if read_events is not None:
        events = events[:read_events]  # one recv can carry more events than asked for
    return [e.decode() for e in events]


class ServerTest(unittest.TestCase):
    """One server on the default (Q4_1) model for everything but the equality test."""

    @classmethod
    def setUpClass(cls):
        cls.srv = Server(MODEL, ["--max-body-bytes", "65536", "--kv-cache-gb", "0.25"])
        cls.model = cls.srv.client().models.list().data[0].id

    @classmethod
    def tearDownClass(cls):
        code = cls.srv.stop()
        assert code == 0, "qilin serve exited with %d:\n%s" % (code, "".join(cls.srv.log))

    # ---- the openai client ----

    def test_completions(self):
        c = self.srv.client()
        r = c.completions.create(model=self.model, prompt="Once upon a time", max_tokens=12,
                                 temperature=0)
        self.assertEqual(r.object, "text_completion")
        self.assertEqual(len(r.choices), 1)
        self.assertTrue(r.choices[0].text)
        self.assertEqual(r.choices[0].finish_reason, "length")
        self.assertEqual(r.usage.completion_tokens, 12)
        self.assertGreater(r.usage.prompt_tokens, 0)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + 12)
        # Greedy is deterministic, streamed or not.
        chunks = list(c.completions.create(model=self.model, prompt="Once upon a time",
                                           max_tokens=12, temperature=0, stream=True,
                                           stream_options={"include_usage": True}))
        text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
        self.assertEqual(text, r.choices[0].text)
        finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
        self.assertEqual(finals[-1], "length")
        self.assertTrue(all(f is None for f in finals[:-1]))
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, 12)

    def test_chat(self):
        c = self.srv.client()
        msgs = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Name a colour."}]
        r = c.chat.completions.create(model=self.model, messages=msgs, max_tokens=10,
                                      temperature=0)
        self.assertEqual(r.object, "chat.completion")
        self.assertEqual(r.choices[0].message.role, "assistant")
        self.assertTrue(r.choices[0].message.content)
        self.assertIn(r.choices[0].finish_reason, ("stop", "length"))
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)
        stream = c.chat.completions.create(model=self.model, messages=msgs, max_tokens=10,
                                           temperature=0, stream=True)
        chunks = list(stream)
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        self.assertEqual(chunks[-1].choices[0].finish_reason, r.choices[0].finish_reason)
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
        self.assertEqual(text, r.choices[0].message.content)
        self.assertTrue(all(ch.object == "chat.completion.chunk" for ch in chunks))

    def test_logprobs_n_seed_stop(self):
        c = self.srv.client()
        r = c.chat.completions.create(model=self.model, max_tokens=6, temperature=0,
                                      messages=[{"role": "user", "content": "Count to five."}],
                                      logprobs=True, top_logprobs=3)
        content = r.choices[0].logprobs.content
        self.assertGreaterEqual(len(content), r.usage.completion_tokens)
        for t in content:
            self.assertLessEqual(t.logprob, 0.0)
            self.assertEqual(len(t.top_logprobs), 3)
            # Greedy: the chosen token is the most likely one.
            self.assertAlmostEqual(t.top_logprobs[0].logprob, t.logprob, places=4)
        r = c.completions.create(model=self.model, prompt="The sky is", max_tokens=5,
                                 temperature=0, logprobs=2)
        lp = r.choices[0].logprobs
        self.assertEqual(len(lp.tokens), 5)
        self.assertEqual(len(lp.token_logprobs), 5)
        self.assertEqual(len(lp.top_logprobs[0]), 2)
        # n choices; a seed makes sampling repeatable.
        a = c.completions.create(model=self.model, prompt="My favourite animal is", n=3,
                                 max_tokens=8, temperature=1.0, seed=1234)
        b = c.completions.create(model=self.model, prompt="My favourite animal is", n=3,
                                 max_tokens=8, temperature=1.0, seed=1234)
        self.assertEqual(sorted(ch.index for ch in a.choices), [0, 1, 2])
        self.assertEqual([ch.text for ch in a.choices], [ch.text for ch in b.choices])
        self.assertEqual(a.usage.completion_tokens, 24)
        # A stop string cuts the text before it.
        full = c.completions.create(model=self.model, prompt="One, two, three,", max_tokens=16,
                                    temperature=0).choices[0].text
        words = full.split()
        self.assertGreater(len(words), 2, full)
        stop = " " + words[2]
        cut = c.completions.create(model=self.model, prompt="One, two, three,", max_tokens=16,
                                   temperature=0, stop=[stop])
        self.assertEqual(cut.choices[0].finish_reason, "stop")
        self.assertEqual(cut.choices[0].text, full[:full.index(stop)])

    # ---- safety ----

    def test_api_key(self):
        status, _, _ = self.srv.request("GET", "/health", key=False)
        self.assertEqual(status, 200)
        for path in ("/v1/models", "/metrics", "/v1/unknown"):
            status, headers, body = self.srv.request("GET", path, key=False)
            self.assertEqual(status, 401, path)
            self.assertEqual(json.loads(body)["error"]["code"], "invalid_api_key")
        status, _, _ = self.srv.request("POST", "/v1/completions", {"prompt": "hi"},
                                        key="sk-wrong")
        self.assertEqual(status, 401)
        with self.assertRaises(openai.AuthenticationError):
            self.srv.client(api_key="sk-qilin-test-5f1c2b").completions.create(
                model=self.model, prompt="hi", max_tokens=1)

    def test_bad_requests_while_another_streams(self):
        # A long stream runs the whole time.
        result = {}
        body = {"model": self.model, "prompt": "Write a long story.", "max_tokens": 150,
                "temperature": 0, "ignore_eos": True, "stream": True}
        t = threading.Thread(target=lambda: result.update(
            events=stream_raw(self.srv.port, "/v1/completions", body)))
        t.start()
        cases = [
            ("/v1/completions", b'{"prompt": "hi", ', 400, None),
            ("/v1/completions", b'\xff\xfe{}', 400, None),
            ("/v1/completions", {"prompt": 12}, 400, "prompt"),
            ("/v1/completions", {"prompt": "hi", "max_tokens": "many"}, 400, "max_tokens"),
            ("/v1/completions", {"prompt": "hi", "temperature": [1]}, 400, "temperature"),
            ("/v1/completions", {"prompt": "hi", "max_tokens": 10**15}, 400, "max_tokens"),
            ("/v1/completions", {"prompt": "hi", "stop": {"a": 1}}, 400, "stop"),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": {"x": 1}}]}, 400,
             "messages[0].content"),
            ("/v1/chat/completions", {"messages": [{"role": 5, "content": "x"}]}, 400,
             "messages[0].role"),
        ]
        for path, payload, want, param in cases:
            status, _, raw = self.srv.request("POST", path, payload,
                                              headers={"Content-Type": "application/json"})
            self.assertEqual(status, want, (payload, raw))
            err = json.loads(raw)["error"]
            self.assertTrue(err["message"])
            self.assertEqual(err["type"], "invalid_request_error")
            if param:
                self.assertEqual(err["param"], param, raw)
        # Absurd but well-formed max_tokens: the engine refuses it as too long.
        status, _, raw = self.srv.request("POST", "/v1/completions",
                                          {"prompt": "hi", "max_tokens": 10**9})
        self.assertEqual(status, 400, raw)
        self.assertEqual(json.loads(raw)["error"]["code"], "context_length_exceeded")
        # A body over --max-body-bytes.
        status, _, raw = self.srv.request("POST", "/v1/completions",
                                          {"prompt": "x" * (200 * 1024)})
        self.assertEqual(status, 413)
        self.assertEqual(json.loads(raw)["error"]["code"], "request_too_large")
        status, _, raw = self.srv.request("GET", "/v2/nothing")
        self.assertEqual(status, 404)
        self.assertEqual(json.loads(raw)["error"]["code"], "unknown_url")
        with self.assertRaises(openai.BadRequestError):
            self.srv.client().completions.create(model=self.model, prompt="hi", max_tokens=0)
        t.join(120)
        events = result["events"]
        self.assertEqual(events[-1], "[DONE]")
        chunks = [json.loads(e) for e in events[:-1]]
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "length")
        self.assertGreater(len(chunks), 100)  # served all along (~one chunk per token)

    # ---- cancellation ----

    def test_disconnect_frees_blocks(self):
        before = self.srv.wait_quiet()
        body = {"model": self.model, "prompt": "Tell me everything about the sea.",
                "max_tokens": 2000, "ignore_eos": True, "stream": True}
        events = stream_raw(self.srv.port, "/v1/completions", body, read_events=3)
        self.assertEqual(len(events), 3)
        during = self.srv.metrics()
        after = self.srv.wait_quiet(timeout=10)
        self.assertEqual(after["qilin_kv_blocks_used"], 0)
        self.assertEqual(after["qilin_requests_cancelled_total"],
                         before["qilin_requests_cancelled_total"] + 1)
        self.assertEqual(after["qilin_http_client_disconnects_total"],
                         before["qilin_http_client_disconnects_total"] + 1)
        self.assertLess(after["qilin_generation_tokens_total"]
                        - before["qilin_generation_tokens_total"], 2000)
        del during

    def test_soak_64_clients_with_cancellations(self):
        before = self.srv.wait_quiet()
        n_clients, n_requests = 64, 320
        rng = random.Random(6)
        words = ("the quick brown fox jumps over a lazy dog while seven tall ships sail past "
                 "green hills under bright stars").split()
        jobs = []
        for i in range(n_requests):
            prompt = " ".join(rng.choice(words) for _ in range(rng.randint(3, 40)))
            kind = rng.choices(["whole", "stream", "chat", "cancel"], [3, 3, 2, 2])[0]
            jobs.append((i, prompt, kind, rng.randint(1, 8), rng.randint(0, 2)))
        lock = threading.Lock()
        outcome = {"ok": 0, "cancelled": 0, "errors": []}
        queue = list(jobs)

        def worker():
            client = self.srv.client()
            while True:
                with lock:
                    if not queue:
                        return
                    i, prompt, kind, max_tokens, k = queue.pop()
                try:
                    if kind == "whole":
                        r = client.completions.create(model=self.model, prompt=prompt,
                                                      max_tokens=max_tokens, temperature=0.7,
                                                      seed=i)
                        assert r.usage.completion_tokens <= max_tokens
                    elif kind == "stream":
                        chunks = list(client.completions.create(
                            model=self.model, prompt=prompt, max_tokens=max_tokens,
                            stream=True, temperature=0))
                        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
                    elif kind == "chat":
                        chunks = list(client.chat.completions.create(
                            model=self.model, messages=[{"role": "user", "content": prompt}],
                            max_tokens=max_tokens, stream=True))
                        assert chunks[0].choices[0].delta.role == "assistant"
                    else:
                        stream_raw(self.srv.port, "/v1/completions",
                                   {"prompt": prompt, "max_tokens": 64, "ignore_eos": True,
                                    "stream": True}, read_events=k)
                        with lock:
                            outcome["cancelled"] += 1
                        continue
                    with lock:
                        outcome["ok"] += 1
                except Exception as e:  # noqa: BLE001 - collected and reported below
                    with lock:
                        outcome["errors"].append(f"{kind} #{i}: {e!r}")

        threads = [threading.Thread(target=worker) for _ in range(n_clients)]
        t0 = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        elapsed = time.time() - t0
        self.assertEqual(outcome["errors"], [])
        self.assertEqual(outcome["ok"] + outcome["cancelled"], n_requests)
        after = self.srv.wait_quiet(timeout=30)
        received = after["qilin_requests_received_total"] - before["qilin_requests_received_total"]
        finished = after["qilin_requests_finished_total"] - before["qilin_requests_finished_total"]
        cancelled = (after["qilin_requests_cancelled_total"]
                     - before["qilin_requests_cancelled_total"])
        self.assertEqual(received, n_requests)
        self.assertEqual(finished + cancelled, n_requests)
        self.assertGreater(cancelled, 0)
        self.assertEqual(after["qilin_http_generation_requests_total"]
                         - before["qilin_http_generation_requests_total"], n_requests)
        self.assertEqual(after["qilin_kv_blocks_used"], 0)
        self.assertEqual(after["qilin_kv_blocks_free"] + after["qilin_kv_blocks_cached"],
                         after["qilin_kv_blocks_total"])
        print(f"\nsoak: {n_requests} requests from {n_clients} clients in {elapsed:.1f} s, "
              f"{int(cancelled)} cancelled by disconnect", file=sys.stderr)


def raw_response(port, request, timeout=30):
    """Sends a raw request (bytes) on its own connection; (status, headers dict, body bytes)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(request)
        return read_response(s)
    finally:
        s.close()


def read_response(s):
    """Reads one HTTP/1.1 response with a Content-Length (or up to the close) from socket s."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0] else 0
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "-1"))
    while length < 0 or len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


class ServerPolicyTest(unittest.TestCase):
    """What a web page, a DNS-rebinding attacker and a crowd of silent connections meet, on a
    loopback-bound server with one listed origin and one host alias."""

    ORIGIN = "http://app.example"

    @classmethod
    def setUpClass(cls):
        cls.srv = Server(MODEL, ["--kv-cache-gb", "0.1", "--cors-origin", cls.ORIGIN,
                                 "--host-alias", "qilin.test"])

    @classmethod
    def tearDownClass(cls):
        code = cls.srv.stop()
        assert code == 0, "qilin serve exited with %d:\n%s" % (code, "".join(cls.srv.log))

    def post(self, headers, body=b'{"prompt": "hi", "max_tokens": 1}'):
        h = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return raw_response(self.srv.port, (
            f"POST /v1/completions HTTP/1.1\r\n{h}Authorization: Bearer {KEY}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)

    def test_cross_origin_simple_post_is_refused(self):
        # What a page on another site can send without a preflight: a text/plain POST.
        host = f"127.0.0.1:{self.srv.port}"
        before = self.srv.metrics()["qilin_requests_received_total"]
        status, headers, body = self.post({"Host": host, "Origin": "http://evil.example",
                                           "Content-Type": "text/plain;charset=UTF-8"})
        self.assertEqual(status, 403, body)
        self.assertNotIn("access-control-allow-origin", headers)
        self.assertEqual(json.loads(body)["error"]["code"], "origin_not_allowed")
        # The same without Origin (a non-browser client): refused for its Content-Type.
        status, headers, body = self.post({"Host": host, "Content-Type": "text/plain"})
        self.assertEqual(status, 415, body)
        self.assertEqual(json.loads(body)["error"]["code"], "unsupported_media_type")
        self.assertEqual(self.srv.metrics()["qilin_requests_received_total"], before)
        # The listed origin is served and told so.
        status, headers, body = self.post({"Host": host, "Origin": self.ORIGIN,
                                           "Content-Type": "application/json"})
        self.assertEqual(status, 200, body)
        self.assertEqual(headers.get("access-control-allow-origin"), self.ORIGIN)

    def test_preflight(self):
        def preflight(origin):
            return raw_response(self.srv.port, (
                f"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: localhost:{self.srv.port}\r\n"
                f"Origin: {origin}\r\nAccess-Control-Request-Method: POST\r\n"
                "Access-Control-Request-Headers: authorization,content-type\r\n"
                "Connection: close\r\n\r\n").encode())
        status, headers, _ = preflight(self.ORIGIN)
        self.assertEqual(status, 204)
        self.assertEqual(headers["access-control-allow-origin"], self.ORIGIN)
        self.assertIn("POST", headers["access-control-allow-methods"])
        allowed = headers["access-control-allow-headers"].lower()
        self.assertIn("authorization", allowed)
        self.assertIn("content-type", allowed)
        self.assertEqual(headers["vary"], "Origin")
        self.assertGreater(int(headers["access-control-max-age"]), 0)
        status, headers, _ = preflight("http://evil.example")
        self.assertEqual(status, 403)
        self.assertNotIn("access-control-allow-origin", headers)

    def test_forged_host_is_refused(self):
        # DNS rebinding: attacker.example now resolves to 127.0.0.1; the browser sends its name.
        def get(host):
            return raw_response(self.srv.port, (
                f"GET /v1/models HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
                "Connection: close\r\n\r\n").encode())
        status, _, body = get("attacker.example")
        self.assertEqual(status, 403, body)
        self.assertEqual(json.loads(body)["error"]["code"], "host_not_allowed")
        self.assertEqual(get(f"attacker.example:{self.srv.port}")[0], 403)
        for host in ("localhost", f"127.0.0.1:{self.srv.port}", f"[::1]:{self.srv.port}",
                     "qilin.test", f"qilin.test:{self.srv.port}"):
            self.assertEqual(get(host)[0], 200, host)

    def test_500_idle_connections_do_not_block_a_client(self):
        # 500 connections that never send a byte (more than the 160 HTTP workers): each used to
        # hold a worker for the keep-alive timeout, and a client queued behind them.
        idle = []
        try:
            for _ in range(500):
                idle.append(socket.create_connection(("127.0.0.1", self.srv.port), timeout=10))
            time.sleep(0.2)
            t0 = time.time()
            status, _, body = self.srv.request("POST", "/v1/completions",
                                               {"prompt": "Hello", "max_tokens": 2}, timeout=20)
            elapsed = time.time() - t0
            self.assertEqual(status, 200, body)
            self.assertLess(elapsed, 3.0, "a client waited %.1f s behind idle connections"
                            % elapsed)
        finally:
            for s in idle:
                s.close()


class ShutdownTest(unittest.TestCase):
    """SIGTERM while 64 clients stream: every stream ends cleanly ([DONE]), /metrics scraped
    after the streams end (on a request begun before the signal: the listener is closed by
    then) shows every KV block free, and the process exits 0 within the deadline."""

    def test_sigterm_under_64_streams(self):
        shutdown_timeout = 1.0
        srv = Server(MODEL, ["--kv-cache-gb", "0.25", "--shutdown-timeout", str(shutdown_timeout),
                             "--read-timeout", "60"])
        try:
            # Scrapes begun before the signal; their last header line is sent once the streams
            # are over. Three, in case the first reads the gauges a step before they settle.
            scrapes = []
            for _ in range(3):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
                s.sendall((f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
                           f"Authorization: Bearer {KEY}\r\n").encode())
                scrapes.append(s)
            n = 64
            started = threading.Semaphore(0)
            results = [None] * n

            def stream(i):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
                payload = json.dumps({"prompt": f"Story number {i}:", "max_tokens": 4000,
                                      "ignore_eos": True, "stream": True}).encode()
                s.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
                           f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload)
                buf, signalled = b"", False
                try:
                    while True:
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        buf += chunk
                        if not signalled and b"data: " in buf:
                            signalled = True
                            started.release()
                        if buf.endswith(b"0\r\n\r\n"):  # the chunked body's end
                            break
                except OSError as e:
                    buf += f"\n[socket error {e!r}]".encode()
                finally:
                    s.close()
                    if not signalled:
                        started.release()
                results[i] = buf

            threads = [threading.Thread(target=stream, args=(i,)) for i in range(n)]
            for t in threads:
                t.start()
            for _ in range(n):
                self.assertTrue(started.acquire(timeout=120), "a stream never started")
            t_signal = time.time()
            srv.proc.send_signal(signal.SIGTERM)
            for t in threads:
                t.join(60)
            self.assertFalse(any(t.is_alive() for t in threads), "a stream did not end")
            for i, buf in enumerate(results):
                events = re.findall(rb"data: (.*?)\n\n", buf)
                self.assertTrue(events, f"stream {i} sent nothing: {buf[-300:]!r}")
                self.assertEqual(events[-1], b"[DONE]", f"stream {i} ended badly: {buf[-300:]!r}")
                last = json.loads(events[-2])
                if "error" in last:
                    self.assertEqual(last["error"]["code"], "shutting_down")
                else:
                    self.assertIsNotNone(last["choices"][0]["finish_reason"])
            m = None
            while scrapes:
                s = scrapes.pop(0)
                time.sleep(0.1)
                s.sendall(b"\r\n")
                status, _, body = read_response(s)
                s.close()
                self.assertEqual(status, 200, body)
                m = {}
                for line in body.decode().splitlines():
                    if line and not line.startswith("#"):
                        name, value = line.rsplit(" ", 1)
                        m[name] = float(value)
                if m["qilin_kv_blocks_used"] == 0 and m["qilin_http_generation_in_flight"] == 0:
                    break
            for s in scrapes:
                s.close()  # unused: a request begun and never finished would hold the exit
            self.assertEqual(m["qilin_kv_blocks_used"], 0)
            self.assertEqual(m["qilin_sequences_running"], 0)
            self.assertEqual(m["qilin_http_generation_in_flight"], 0)
            self.assertEqual(m["qilin_kv_blocks_free"] + m["qilin_kv_blocks_cached"],
                             m["qilin_kv_blocks_total"])
            self.assertEqual(m["qilin_requests_cancelled_total"], n)
            code = srv.proc.wait(timeout=30)
            elapsed = time.time() - t_signal
            srv.proc.stderr.close()
            self.assertEqual(code, 0, "".join(srv.log))
            # The deadline: the shutdown timeout, the Engine's grace to confirm (10 s), 1 s.
            self.assertLess(elapsed, shutdown_timeout + 11, "".join(srv.log))
            self.assertIn("KV blocks free", "".join(srv.log))
            print(f"\nshutdown: {n} streams ended and the process exited {elapsed:.1f} s after "
                  "SIGTERM", file=sys.stderr)
        finally:
            if srv.proc.poll() is None:
                srv.proc.kill()


class ConcurrencyEqualsSoloTest(unittest.TestCase):
    """Greedy outputs of concurrent requests equal the same prompts run alone. F32 weights:
    with 4-bit weights, batched and single-row matmuls round differently and greedy paths
    part after a few tokens even in a correct engine."""

    def test_concurrent_equals_solo(self):
        tmp = tempfile.mkdtemp(prefix="qilin-f32-")
        f32 = os.path.join(tmp, "smollm2-f32.gguf")
        try:
            subprocess.run([os.path.join(BUILD, "qilin"), "quantize", MODEL, f32, "--type", "f32"],
                           check=True, stdout=subprocess.DEVNULL)
            srv = Server(f32)
            try:
                c = srv.client()
                prompts = ["Once upon a time", "The capital of France is", "def fibonacci(n):",
                           "My favourite food is", "In 1492, Columbus", "Water boils at"]

                def run(p):
                    return c.completions.create(model="m", prompt=p, max_tokens=16,
                                                temperature=0).choices[0].text

                solo = [run(p) for p in prompts]
                together = [None] * len(prompts)

                def one(i):
                    together[i] = run(prompts[i])

                threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(120)
                self.assertEqual(together, solo)
                m = srv.wait_quiet()
                self.assertEqual(m["qilin_kv_blocks_used"], 0)
            finally:
                self.assertEqual(srv.stop(), 0)
        finally:
            if os.path.exists(f32):
                os.unlink(f32)
            os.rmdir(tmp)


if __name__ == "__main__":
    unittest.main(verbosity=2)

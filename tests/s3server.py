"""A fault-injecting HTTP proxy for tests, in front of the real S3-protocol server
(:class:`bench.s3server.MotoServer`): 503 SlowDown answers, or a stalled response."""
from __future__ import annotations

import http.client
import http.server
import threading
import time

SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
            b'<Message>Please reduce your request rate.</Message></Error>')


class FaultProxy:
    """Forwards to ``upstream``; GETs whose path contains ``match`` first get ``fail`` 503 SlowDown
    answers (``fail=-1``: always), or stall ``stall`` seconds. ``hits`` counts matching GETs,
    ``requests`` every request (any method, any path)."""

    def __init__(self, upstream: str):
        self.upstream = upstream.split("://", 1)[1]
        self.match, self.fail, self.stall, self.hits, self.requests = None, 0, 0.0, 0, 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.requests += 1
                if self.command == "GET" and proxy.match and proxy.match in self.path:
                    proxy.hits += 1
                    if proxy.fail:
                        proxy.fail -= proxy.fail > 0
                        self.send_response(503)
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(SLOWDOWN)))
                        self.end_headers()
                        self.wfile.write(SLOWDOWN)
                        return
                    time.sleep(proxy.stall)
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                conn.request(self.command, self.path, body=body or None, headers=dict(self.headers))
                resp = conn.getresponse()
                data = resp.read()
                head = self.command == "HEAD"   # its Content-Length is the object's size
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection") and (head or k.lower() != "content-length"):
                        self.send_header(k, v)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

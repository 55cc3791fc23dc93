"""A local HTTP server for the download benchmark and tests: serves files from memory with Range support (Python's
SimpleHTTPRequestHandler has none), and can misbehave on purpose: drop the connection half-way through a file,
or serve corrupted bytes a given number of times."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        server: RangeServer = self.server.owner
        name = self.path.lstrip("/")
        range_header = self.headers.get("Range")
        with server.lock:
            server.requests.append((name, range_header))
            body = server.files.get(name)
            drop = name in server.drop_once
            server.drop_once.discard(name)
            corrupt = server.corrupt.get(name, 0) > 0
            if corrupt:
                server.corrupt[name] -= 1
        if body is None:
            self.send_error(404)
            return
        if corrupt:
            body = body[:-64] + bytes(b ^ 0xFF for b in body[-64:])
        start = 0
        if range_header and range_header.startswith("bytes=") and server.ranges:
            start = int(range_header[6:].split("-", 1)[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Connection", "close")
        self.end_headers()
        if drop:  # half the bytes, then the connection goes away
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if server.throttle:  # slow server: a few KB at a time, so a test can interrupt the client mid-transfer
            step, pause = server.throttle
            for start in range(0, len(payload), step):
                self.wfile.write(payload[start : start + step])
                self.wfile.flush()
                time.sleep(pause)
            return
        self.wfile.write(payload)


class RangeServer:
    """``with RangeServer(files) as server: server.url`` -> ``http://127.0.0.1:<port>/``."""

    def __init__(self, files: dict[str, bytes], ranges: bool = True, throttle: tuple[int, float] | None = None):
        self.files = dict(files)
        self.ranges, self.throttle = ranges, throttle
        self.drop_once: set[str] = set()
        self.corrupt: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/"

    def __enter__(self) -> RangeServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

"""Real local servers for the channel tests: an HTTP receiver in a thread (``http.server``)
that records every request and answers what the test scripted."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Received:
    at: float
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    port: int = 0
    requests: list[Received] = field(default_factory=list)
    #: per path: answers to give in order (status, headers, body); then 200 {}
    script: dict[str, deque[tuple[int, dict[str, str], bytes]]] = field(default_factory=dict)
    #: per path: a fixed JSON document to answer with (e.g. a User Service record)
    documents: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, path: str, *answers: tuple[int, dict[str, str], bytes]) -> None:
        self.script.setdefault(path, deque()).extend(answers)

    def on(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]


@contextmanager
def http_receiver() -> Iterator[Receiver]:
    receiver = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with receiver.lock:
                receiver.requests.append(
                    Received(time.time(), self.command, self.path, dict(self.headers), body)
                )
                queued = receiver.script.get(self.path)
                answer = queued.popleft() if queued else None
            if answer is None:
                document = receiver.documents.get(self.path)
                if document is None and self.command == "GET":
                    answer = (404, {}, b'{"detail": "not found"}')
                else:
                    answer = (200, {}, json.dumps(document or {}).encode())
            status, headers, payload = answer
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

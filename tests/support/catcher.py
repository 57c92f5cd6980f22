"""A local HTTP server that catches notifications (Apprise ``json://127.0.0.1:PORT/...``)."""

from __future__ import annotations

import http.server
import json
import threading
import time

TOKEN = "tk9Q7xZpSECRET"  # stands for a bot token in the URL: must never show up in logs or output


class Catcher:
    """An HTTP server on 127.0.0.1 that records JSON posts; answers 500 to the first ``fail`` of them
    (or to all with ``fail=None``), or never answers (``hang=True``)."""

    def __init__(self, fail: int | None = 0, hang: bool = False) -> None:
        self.fail, self.hang = fail, hang
        self.requests: list[dict] = []  # every attempt, in order
        self.delivered: list[dict] = []  # the ones answered 200
        self.lock = threading.Lock()
        self.release = threading.Event()
        catcher = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                with catcher.lock:
                    catcher.requests.append({"path": self.path, "body": body, "t": time.monotonic()})
                    n = len(catcher.requests)
                if catcher.hang:
                    catcher.release.wait(30)
                    return
                failing = catcher.fail is None or n <= catcher.fail
                if not failing:  # recorded before answering: the sender's next post cannot overtake it
                    with catcher.lock:
                        catcher.delivered.append(body)
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/hook/{TOKEN}"

    def wait(self, n: int, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.delivered) >= n:
                    return list(self.delivered)
            time.sleep(0.05)
        raise AssertionError(f"{len(self.delivered)} of {n} notifications delivered within {timeout:.0f} s "
                             f"({len(self.requests)} requests)")

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()



"""A labelling page of our own, for teams without a labelling server: one prompt, answers A and B side by side.

A small standard-library HTTP server. Every request needs the access token (`?token=` on the page, a bearer
header on the API), and it binds to 127.0.0.1 unless told otherwise. The page never shows which model wrote an
answer. Each label is appended to the labels JSONL and fsynced before the page hears back (`LabelLog`), so a
crash or a closed tab loses nothing, and a restart resumes at the first pair this annotator has not labelled.
"""

from __future__ import annotations

import hmac
import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from pydantic import ValidationError

from tasks.feedback.records import CHOICES, Label, LabelLog, Pair, prompt_text

_PAGE = (Path(__file__).with_name("page.html")).read_text(encoding="utf-8")
_MAX_BODY = 64 * 1024


class LabellingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], pairs: list[Pair], log: LabelLog, *, token: str, annotator: str):
        super().__init__(address, _Handler)
        self.pairs = {pair.pair_id: pair for pair in pairs}
        self.order = [pair.pair_id for pair in pairs]
        self.log, self.token, self.annotator = log, token, annotator
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/?token={self.token}"

    def state(self) -> dict:
        labels = self.log.current(self.annotator)
        return {
            "annotator": self.annotator,
            # Blind labelling: no sources, no `swapped`.
            "pairs": [{"pair_id": pid, "prompt": prompt_text(self.pairs[pid].prompt),
                       "answer_a": self.pairs[pid].answer_a, "answer_b": self.pairs[pid].answer_b}
                      for pid in self.order],
            "labels": {pid: {"choice": label.choice, "note": label.note} for pid, label in labels.items()
                       if pid in self.pairs},
        }

    def record(self, payload: dict) -> dict:
        label = Label(pair_id=str(payload.get("pair_id")), choice=payload.get("choice"),
                      note=str(payload.get("note") or ""), annotator=self.annotator)
        if label.pair_id not in self.pairs:
            raise ValueError(f"unknown pair_id {label.pair_id!r}")
        with self.lock:
            self.log.append(label)
            labelled = len([pid for pid in self.log.current(self.annotator) if pid in self.pairs])
        return {"labelled": labelled, "total": len(self.order)}


class _Handler(BaseHTTPRequestHandler):
    server: LabellingServer

    def log_message(self, format: str, *args) -> None:
        pass  # one line per request would bury the URL the command printed

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if not self._authorised(url):
            return
        if url.path == "/":
            self._send(HTTPStatus.OK, _PAGE.encode(), "text/html; charset=utf-8")
        elif url.path == "/api/state":
            self._json(HTTPStatus.OK, self.server.state())
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page {url.path}"})

    def do_POST(self) -> None:
        url = urlparse(self.path)
        if not self._authorised(url):
            return
        if url.path != "/api/labels":
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {url.path}"})
            return
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit() or int(length) > _MAX_BODY:
            self._json(HTTPStatus.BAD_REQUEST, {"error": "a label needs a Content-Length of at most 64 KiB"})
            return
        try:
            payload = json.loads(self.rfile.read(int(length)) or b"{}")
            self._json(HTTPStatus.OK, self.server.record(payload if isinstance(payload, dict) else {}))
        except (json.JSONDecodeError, ValidationError, ValueError) as err:
            message = f"choice must be one of {', '.join(CHOICES)}" if isinstance(err, ValidationError) else str(err)
            self._json(HTTPStatus.BAD_REQUEST, {"error": message})

    def _authorised(self, url) -> bool:
        given = parse_qs(url.query).get("token", [""])[0]
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = header.removeprefix("Bearer ")
        if hmac.compare_digest(given.encode(), self.server.token.encode()):
            return True
        self._json(HTTPStatus.UNAUTHORIZED, {"error": "an access token is required: open the URL the serve "
                                             "command printed"})
        return False

    def _json(self, status: HTTPStatus, body: dict) -> None:
        self._send(status, json.dumps(body, ensure_ascii=False).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")  # the token is in the page's URL
        self.end_headers()
        self.wfile.write(body)

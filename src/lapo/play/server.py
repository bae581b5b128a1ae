"""``lapo play``'s web server: one page and a small JSON API over a :class:`PlaySession`.

Standard library only (``http.server``), on the loopback interface by default:

- ``GET /``: the page (``page.html``: the frame on a canvas, buttons, history strip);
- ``GET /api/state``: the session's state (:meth:`PlaySession.state`);
- ``POST /api/reset``, ``POST /api/undo``, ``POST /api/step`` with ``{"button": i}``: act,
  then answer the new state.

A bad request answers 400 with ``{"error": message}``.
"""

from __future__ import annotations

import json
import sys
import threading
import webbrowser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files

from lapo.errors import LapoError, UserError
from lapo.play.session import PlaySession


def page() -> bytes:
    """The page, shipped as package data."""
    return files("lapo.play").joinpath("page.html").read_bytes()


def make_handler(session: PlaySession) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``session``."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args) -> None:
            pass  # one line per request would drown the URL the player needs

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, obj: dict, status: int = HTTPStatus.OK) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, page(), "text/html; charset=utf-8")
            elif self.path == "/api/state":
                with session.lock:
                    self._json(session.state())
            else:
                self._json({"error": f"no page {self.path}"}, HTTPStatus.NOT_FOUND)

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            actions = {
                "/api/reset": lambda body: session.reset(),
                "/api/undo": lambda body: session.undo(),
                "/api/step": lambda body: session.step(button_of(body)),
            }
            if self.path not in actions:
                self._json({"error": f"no action {self.path}"}, HTTPStatus.NOT_FOUND)
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with session.lock:
                    actions[self.path](body)
                    state = session.state()
            except (LapoError, ValueError) as e:
                self._json({"error": str(e)}, HTTPStatus.BAD_REQUEST)
                return
            self._json(state)

    return Handler


def button_of(body: object) -> int:
    """The button index of a step request's JSON ``{"button": i}``."""
    button = body.get("button") if isinstance(body, dict) else None
    if not isinstance(button, int) or isinstance(button, bool):
        raise UserError('a step needs {"button": i} with an integer i')
    return button


def make_server(
    session: PlaySession, host: str = "127.0.0.1", port: int = 0
) -> ThreadingHTTPServer:
    """The server for ``session`` on ``host:port`` (0: a free port), not yet serving."""
    try:
        server = ThreadingHTTPServer((host, port), make_handler(session))
    except OSError as e:
        raise UserError(
            f"cannot serve on {host}:{port} ({e.strerror}): pass another --port"
        ) from None
    server.daemon_threads = True
    return server


def serve(session: PlaySession, host: str, port: int, open_browser: bool = True) -> None:
    """Serve ``session`` until Ctrl-C, printing the URL (and opening it in a browser)."""
    server = make_server(session, host, port)
    url = f"http://{host}:{server.server_address[1]}/"
    game = session.info["game"] or "video"
    print(f"lapo play: {game} world model of {session.info['run']} at {url} "
          "(Ctrl-C to stop)", flush=True)  # fmt: skip
    if open_browser:
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("lapo play: stopped", file=sys.stderr)
    finally:
        server.server_close()

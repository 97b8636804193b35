"""A read-only HTTP server for the dashboard: three static files and five JSON endpoints.

stdlib `ThreadingHTTPServer`: the page is for one person on this machine, so
no framework is needed. The trace is opened read-only and shared under a lock
(one sqlite3 connection is not safe for concurrent cursors). On loopback the
Host header must name a loopback address too, so a web page elsewhere cannot
read the trace through DNS rebinding.
"""

from __future__ import annotations

import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import orjson

from whyprobe.errors import WhyprobeError
from whyprobe.store.reader import TraceDB
from whyprobe.ui.dashboard import data

log = logging.getLogger(__name__)

STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _int_param(query: dict[str, list[str]], name: str, default: int | None) -> int | None:
    values = query.get(name)
    if not values or values[0] == "":
        return default
    try:
        return int(values[0])
    except ValueError:
        raise ValueError(f"query parameter {name!r} must be an integer, got {values[0]!r}") from None


class DashboardState:
    """The open trace, its lock, and a findings cache keyed by the trace's last event id."""

    def __init__(self, db: TraceDB) -> None:
        self.db = db
        self.lock = threading.Lock()
        self._findings_key: Any = None
        self._findings: dict | None = None

    def findings(self) -> dict:
        # explain can take seconds on a big trace; recompute only when events were added or pruned.
        key = self.db.conn.execute("SELECT MIN(rowid), MAX(rowid) FROM events").fetchone()
        if self._findings is None or key != self._findings_key:
            self._findings = data.findings(self.db)
            self._findings_key = key
        return self._findings

    def api(self, path: str, query: dict[str, list[str]]) -> dict:
        routes: dict[str, Callable[[], dict]] = {
            "/api/summary": lambda: data.summary(self.db),
            "/api/timeline": lambda: data.timeline(
                self.db,
                _int_param(query, "start", None),
                _int_param(query, "end", None),
                _int_param(query, "limit", 2000) or 2000,
            ),
            "/api/histograms": lambda: data.histograms(self.db),
            "/api/findings": self.findings,
            "/api/tool_calls": lambda: data.tool_calls(self.db),
        }
        handler = routes.get(path)
        if handler is None:
            raise KeyError(path)
        with self.lock:
            return handler()


class _Handler(BaseHTTPRequestHandler):
    server: "DashboardServer"
    server_version = "whyprobe-dashboard"
    sys_version = ""

    def log_message(self, fmt: str, *args: Any) -> None:
        log.info("%s " + fmt, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str, *, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status: int, message: str, head: bool = False) -> None:
        self._send(status, orjson.dumps({"error": message}), "application/json", head=head)

    def _host_allowed(self) -> bool:
        if self.server.allow_any_host:
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        if host.startswith("["):
            host = host[: host.find("]") + 1]
        else:
            host = host.rsplit(":", 1)[0]
        return host in _LOOPBACK_HOSTS

    def do_GET(self, head: bool = False) -> None:  # noqa: N802 (http.server naming)
        if not self._host_allowed():
            self._error(HTTPStatus.FORBIDDEN, "Host header is not a loopback address", head)
            return
        url = urlsplit(self.path)
        if url.path in STATIC:
            name, ctype = STATIC[url.path]
            body = resources.files(__package__).joinpath(name).read_bytes()
            self._send(HTTPStatus.OK, body, ctype, head=head)
            return
        if url.path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "text/plain", head=head)
            return
        if not url.path.startswith("/api/"):
            self._error(HTTPStatus.NOT_FOUND, f"no such page: {url.path}", head)
            return
        try:
            doc = self.server.state.api(url.path, parse_qs(url.query))
        except KeyError:
            self._error(HTTPStatus.NOT_FOUND, f"no such endpoint: {url.path}", head)
            return
        except ValueError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc), head)
            return
        except WhyprobeError as exc:
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc), head)
            return
        except Exception as exc:  # a bug in one analysis must not take the other panels down
            log.exception("dashboard endpoint %s failed", url.path)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{url.path} failed: {type(exc).__name__}: {exc}", head)
            return
        self._send(HTTPStatus.OK, orjson.dumps(doc), "application/json", head=head)

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET(head=True)

    def _read_only(self) -> None:
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, "the dashboard is read-only")

    do_POST = do_PUT = do_DELETE = do_PATCH = _read_only  # noqa: N815


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: DashboardState, *, allow_any_host: bool = False) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.state = state
        self.allow_any_host = allow_any_host
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"


def make_server(db: TraceDB, host: str = "127.0.0.1", port: int = 0, *, allow_any_host: bool = False) -> DashboardServer:
    """Bind (port 0 = a free port) without serving yet; `serve_forever()` serves, `.url` says where."""
    return DashboardServer((host, port), DashboardState(db), allow_any_host=allow_any_host)

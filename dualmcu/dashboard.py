"""The live dashboard of ``dualmcu fleet --serve HOST:PORT``.

A Starlette app served by uvicorn in a thread of its own, beside the rollout (which runs in
the main thread and never waits on the web):

    GET  /                  the page (dualmcu/web/: HTML, its script, Chart.js)
    GET  /api/summary       the current summary, the same object the last ``--json`` line carries
    GET  /api/stream        server-sent events: the whole board (summary and event log) each
                            time it changes, so a page opened late renders everything at once
    POST /api/pause         operator actions, taken by the rollout between waves; a wave in
    POST /api/resume        progress always finishes.  Each needs ``Content-Type:
    POST /api/stop          application/json``: a page of another site cannot send that without
    POST /api/blocklist     a CORS preflight, which this server never grants, so it cannot press
                            the buttons from a user's browser.  ``blocklist`` takes
                            ``{"build": "1.2.0"}``, by default the build being rolled out.

A slow reader never holds the rollout up: each stream waits on an event that the rollout only
sets, and on waking sends the newest board, skipping any it missed.

Who may press the buttons: the content type keeps other sites' pages out, but not a site that
rebinds its DNS name to 127.0.0.1 (its page is then same-origin), nor, with ``--serve
0.0.0.0:PORT``, anyone on the network.  As Jupyter does it: each run makes a random token, the
printed URL carries it (``/?token=...``), the page keeps it in a cookie, and every ``/api/``
request needs it (the cookie, ``Authorization: token ...``, or ``?token=``); and a request whose
``Host`` is not a name this server is served under is refused (a rebound name never is).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import socket
import threading
from collections import deque
from importlib import resources
from typing import Any

from dualmcu.fleet import ACTIONS, Operator

LOG_LENGTH = 500  # events the page's log keeps (progress events are not logged)
COOKIE = "dualmcu_token"


class Board:
    """What the page shows, shared between the rollout's thread and the server's event loop."""

    def __init__(self, operator: Operator, version: str, summary: dict | None = None) -> None:
        self.operator = operator
        self.version = version
        self._lock = threading.Lock()
        self._summary: dict = summary or {}  # fleet.starting_summary until the rollout publishes
        self._log: deque[dict] = deque(maxlen=LOG_LENGTH)
        self._seq = 0
        self._ended = False
        self._watchers: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def publish(self, event: dict, summary: dict, ended: bool = False) -> None:
        """Called from the rollout's thread after each event."""
        with self._lock:
            self._summary = summary
            if event.get("event") not in ("progress", "summary"):
                self._log.append(event)
            self._ended = self._ended or ended
            self._seq += 1
            watchers = list(self._watchers)
        for loop, wake in watchers:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the server's loop has closed: nobody is watching any more
                pass

    def snapshot(self) -> dict:
        with self._lock:
            return {"seq": self._seq, "ended": self._ended, "summary": self._summary, "log": list(self._log)}

    @property
    def ended(self) -> bool:
        with self._lock:
            return self._ended

    def watch(self, loop: asyncio.AbstractEventLoop, wake: asyncio.Event) -> None:
        with self._lock:
            self._watchers.add((loop, wake))

    def unwatch(self, loop: asyncio.AbstractEventLoop, wake: asyncio.Event) -> None:
        with self._lock:
            self._watchers.discard((loop, wake))


class Guard:
    """The token of this run and the host names it is served under."""

    def __init__(self, host: str, token: str | None = None) -> None:
        self.token = token or secrets.token_urlsafe(24)
        self.wildcard = host in ("0.0.0.0", "::", "")
        self.names = {"localhost", "127.0.0.1", "::1", host.lower(), socket.gethostname().lower(),
                      socket.getfqdn().lower()}

    def host_ok(self, header: str) -> bool:
        """Whether a Host header names this server: one of its names, or (bound to every
        address) any address literal.  A DNS name that was rebound to it is none of these."""
        name = header.lower()
        name = name[1:name.find("]")] if name.startswith("[") else name.rsplit(":", 1)[0] if name.count(":") == 1 else name
        if name in self.names:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return self.wildcard

    def token_ok(self, request: Any) -> bool:
        given = (request.cookies.get(COOKIE) or request.query_params.get("token")
                 or request.headers.get("authorization", "").removeprefix("token ").strip())
        return bool(given) and secrets.compare_digest(given, self.token)


def app(board: Board, guard: Guard) -> Any:
    from sse_starlette import EventSourceResponse
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    web = resources.files("dualmcu") / "web"

    def refused(request: Request) -> JSONResponse | None:
        if not guard.host_ok(request.headers.get("host", "")):
            return JSONResponse({"error": "this server is not served under that host name"}, status_code=403)
        if not guard.token_ok(request):
            return JSONResponse({"error": "open the URL the command printed: it carries this run's token"},
                                status_code=403)
        return None

    async def page(request: Request) -> HTMLResponse | JSONResponse:
        if (no := refused(request)) is not None:
            return no
        response = HTMLResponse((web / "index.html").read_text(encoding="utf-8"))
        # The page's own requests carry the token from here on; scripts cannot read it.
        response.set_cookie(COOKIE, guard.token, httponly=True, samesite="strict")
        return response

    async def summary(request: Request) -> JSONResponse:
        return refused(request) or JSONResponse(board.snapshot()["summary"])

    async def stream(request: Request) -> EventSourceResponse | JSONResponse:
        if (no := refused(request)) is not None:
            return no
        loop, wake = asyncio.get_running_loop(), asyncio.Event()
        board.watch(loop, wake)

        async def boards():
            try:
                seen = -1
                while True:
                    wake.clear()  # before the snapshot: a publish after it sets it again
                    snap = board.snapshot()
                    if snap["seq"] != seen:
                        seen = snap["seq"]
                        yield {"event": "board", "data": json.dumps(snap)}
                    await wake.wait()
            finally:
                board.unwatch(loop, wake)

        return EventSourceResponse(boards(), ping=15)

    async def act(request: Request) -> JSONResponse:
        if (no := refused(request)) is not None:
            return no
        action = request.path_params["action"]
        if action not in ACTIONS:
            return JSONResponse({"error": f"no action {action!r}: one of {', '.join(ACTIONS)}"}, status_code=404)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "send Content-Type: application/json"}, status_code=415)
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        build = body.get("build") if isinstance(body, dict) else None
        if build is not None and not (isinstance(build, str) and 0 < len(build) <= 64):
            return JSONResponse({"error": "build is a version string"}, status_code=400)
        if board.ended:
            return JSONResponse({"error": "the rollout has ended"}, status_code=409)
        board.operator.request(action, build or (board.version if action == "blocklist" else None))
        return JSONResponse({"accepted": action, "build": build, "takes_effect": "between waves"}, status_code=202)

    return Starlette(routes=[
        Route("/", page),
        Route("/api/summary", summary),
        Route("/api/stream", stream),
        Route("/api/{action}", act, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(web)), name="static"),
    ])


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (port 0 picks a free one); a bare port means 127.0.0.1."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--serve {text}: give HOST:PORT, e.g. 127.0.0.1:8750")
    return host, int(port)


class Server:
    """uvicorn in a daemon thread, on a socket bound here first, so that a port in use is one
    clear error before the rollout starts, and the page can connect before uvicorn runs."""

    def __init__(self, board: Board, host: str, port: int, token: str | None = None) -> None:
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as e:
            self.sock.close()
            raise OSError(f"cannot serve on {host}:{port}: {e.strerror}") from None
        self.sock.listen(64)
        self.host, self.port = self.sock.getsockname()[:2]
        self.guard = Guard(host, token)
        self.server = uvicorn.Server(uvicorn.Config(app(board, self.guard), log_level="warning", lifespan="off",
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="dashboard", daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def url(self) -> str:
        """The page's address with this run's token: the one to open."""
        return f"{self.base}?token={self.token}"

    @property
    def token(self) -> str:
        return self.guard.token

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(3)
        self.sock.close()

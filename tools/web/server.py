"""`ktrader web`: the dashboard, its own process. It talks to the gateway only through the wire
protocol, like the console (tools/top/model.py: StatusQuery, GetOrders, Control, and the PUB
socket for prices and system events), and serves one page that refreshes itself by server-sent
events: agents, orders, fills, positions, account, health and alerts, per-agent equity curves and
intraday price charts (uPlot, MIT, served from the package: no CDN).

Bound to 127.0.0.1 by default. A token is required for everything but the page's shell (its HTML,
script and styles, which hold no data): the URL printed at start carries it in its fragment (`#token=`,
which a browser never sends to any server), the page keeps it in its own tab's sessionStorage (one
origin: scheme, host and port) and sends it as `Authorization: Bearer` with every request, the stream
too (read with fetch: EventSource cannot send a header). Never a cookie: a browser sends cookies to
every port of the host, so any local server on 127.0.0.1 the operator visited would collect it.
Operator actions are POSTs that need JSON and the `X-Ktrader` header (a cross-site form can send
neither) and are confirmed in the page; they go to the gateway as Control, journaled there as
`ktrader-web`. A reload is confirmed on what it changes: the page first asks for the preview (each
changed field, old → new, as the gateway compares the card file with the card in force), shows it in
the confirmation, and sends it back with the reload; if the card file says something else by then, or the
card in force changed (another operator's reload: the gateway's preview would now read otherwise), nothing is
applied. The signing key in run/gateway.json never leaves this process."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

import msgspec
from aiohttp import web

from common.connection import ConnectionFileError
from common.errors import KtraderError
from tools.ops.reload import ReloadError
from tools.ops.status import operator_id, send_control
from tools.top.model import ActionError, ConsoleModel, OutcomeUnknown, is_timeout, unknown_outcome_text

log = logging.getLogger("ktrader.web")

STATIC = Path(__file__).parent / "static"
# the cookie earlier versions kept the token in: cleared by the page's shell (it would go on leaking the
# token to every other server on this host the browser visits)
OLD_COOKIE = "ktrader_web"
ACTIONS = frozenset({"pause", "resume", "reduce", "halt", "cancel_all", "flatten", "reconcile", "reload"})
CONTROL_TIMEOUT_S = 5.0  # how long an action waits for the gateway's answer
MAX_CLIENTS = 32
STREAM_RETRY_MS = 1000  # how soon a browser reconnects a lost stream (the SSE retry field)


class Dashboard:
    def __init__(self, run_dir: Path, token: str, cards_dir: Path = Path("cards"), refresh_s: float = 1.0) -> None:
        self.run_dir = Path(run_dir)
        self.token = token
        self.cards_dir = Path(cards_dir)
        self.refresh_s = refresh_s
        self.model = ConsoleModel(
            self.run_dir, cards_dir=self.cards_dir, on_update=self._on_model, sender="ktrader-web"
        )
        self.clients: set[asyncio.Queue[str]] = set()
        self._market_pending = False
        self._tasks: list[asyncio.Task[None]] = []

    # ---- data from the gateway -----------------------------------------------------------------

    def _on_model(self, what: str) -> None:
        if what == "status":
            self.broadcast("status", self._status_json())
        elif what == "orders":
            self.broadcast("orders", self._orders_json())
        elif what == "market" and not self._market_pending:  # at most 4 pushes a second, however busy
            self._market_pending = True
            asyncio.get_running_loop().call_later(0.25, self._push_market)
        elif what == "events":
            lines = list(self.model.events)
            self.model.events.clear()
            self.broadcast("events", json.dumps(lines))

    def _push_market(self) -> None:
        self._market_pending = False
        self.broadcast("market", self._market_json())

    def _status_json(self) -> str:
        st = self.model.status
        if st is None:
            return json.dumps({"error": self.model.error or "connecting to the gateway"})
        if not self.model.error:
            return msgspec.json.encode(st).decode()
        # The gateway crashed or hangs: its last status is all there is. Send it, but with the error
        # and its age, so the page shows it as stale instead of a dead gateway's figures as live.
        return _stale(st, self.model.error, self.model.status_at)

    def _orders_json(self) -> str:
        body = {
            "orders": self.model.orders,
            "fills": self.model.fills,
            "truncated": self.model.orders_cut,  # orders (not open) the limit left out
            "fills_cut": self.model.fills_cut,  # the fills filled the limit: older ones not listed
        }
        if not self.model.orders_error:
            return msgspec.json.encode(body).decode()
        return _stale(body, self.model.orders_error, self.model.orders_at)

    async def _refresh_orders(self) -> None:
        await self.model.refresh_orders()
        if self.model.orders_error:  # the model notifies only on success: tell the page its orders are stale
            self.broadcast("orders", self._orders_json())

    def _market_json(self) -> str:
        return json.dumps(
            {
                m.code: {
                    "last": m.last,
                    "change": m.change,
                    "volume": m.volume,
                    "spread": m.spread,
                    "ticks": m.ticks,
                    "history": list(m.history),
                }
                for m in self.model.market.values()
            }
        )

    def broadcast(self, event: str, data: str) -> None:
        frame = f"event: {event}\ndata: {data}\n\n"
        for q in list(self.clients):
            try:
                q.put_nowait(frame)
            except asyncio.QueueFull:  # a client that does not read: drop it, it reconnects
                self.clients.discard(q)

    async def _refresh(self, fn: Callable[[], Awaitable[object]]) -> None:
        while True:
            try:
                await fn()
            except Exception:  # the dashboard stays up whatever the gateway does
                log.exception("refresh failed")
            await asyncio.sleep(self.refresh_s)

    async def start(self, app: web.Application) -> None:
        self._tasks = [
            asyncio.create_task(self._refresh(self.model.refresh_status)),
            asyncio.create_task(self._refresh(self._refresh_orders)),
        ]

    async def stop(self, app: web.Application) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.model.close()

    # ---- HTTP --------------------------------------------------------------------------------------

    def authorised(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        given = auth[7:] if auth.startswith("Bearer ") else ""
        # (bytes as they came: a header that is not UTF-8 is a wrong key, not a server error)
        return bool(given) and hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self.token.encode())

    @web.middleware
    async def guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # the shell (HTML, script, styles) holds no data: served to anyone, as the files in the package are
        if request.path != "/" and not request.path.startswith("/static/") and not self.authorised(request):
            return web.Response(
                status=401,
                text="ktrader web: token required. Open the URL that `ktrader web` printed (it carries #token=...).\n",
                content_type="text/plain",
            )
        resp = await handler(request)
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["X-Frame-Options"] = "DENY"
        return resp

    async def index(self, request: web.Request) -> web.StreamResponse:
        if "token" in request.query:
            # a URL of an earlier version (?token=): the token goes to the fragment, out of the address bar and
            # any log of requests from here on (the browser's history keeps the URL opened, as it kept this one)
            raise web.HTTPFound(f"/#token={quote(request.query['token'], safe='')}")
        resp = web.FileResponse(STATIC / "index.html")
        if OLD_COOKIE in request.cookies:
            resp.del_cookie(OLD_COOKIE)
        return resp

    async def ping(self, request: web.Request) -> web.Response:
        """Whether the page's token is still good (a 401 from the guard if not): asked when the stream fails."""
        return web.Response(status=204)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        if len(self.clients) >= MAX_CLIENTS:
            return web.Response(status=503, text="too many dashboards open")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await resp.prepare(request)
        q: asyncio.Queue[str] = asyncio.Queue(maxsize=500)
        # the browser reconnects 1 s after losing the stream (its default, 3 s, left a restarted page dark)
        q.put_nowait(f"retry: {STREAM_RETRY_MS}\n\n")
        for event, data in (
            ("status", self._status_json()),
            ("orders", self._orders_json()),
            ("market", self._market_json()),
        ):
            q.put_nowait(f"event: {event}\ndata: {data}\n\n")
        self.clients.add(q)
        try:
            while True:
                try:
                    frame = await asyncio.wait_for(q.get(), 15.0)
                except asyncio.TimeoutError:
                    frame = ": keep-alive\n\n"
                if q not in self.clients and q.empty():
                    break
                await resp.write(frame.encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.clients.discard(q)
        return resp

    async def control(self, request: web.Request) -> web.Response:
        if request.headers.get("X-Ktrader") != "1" or request.content_type != "application/json":
            return web.json_response({"ok": False, "error": "actions are JSON with the X-Ktrader header"}, status=400)
        try:
            body = await request.json()
            action, agent = str(body.get("action", "")), str(body.get("agent", ""))
            all_, preview, expect = body.get("all", False), body.get("preview", False), body.get("expect")
        except (ValueError, AttributeError):
            return web.json_response({"ok": False, "error": "bad JSON"}, status=400)
        if not isinstance(all_, bool) or not isinstance(preview, bool):
            # ("all": "false" is a true string: a hand-written request acted on every agent)
            return web.json_response({"ok": False, "error": "'all' and 'preview' are true or false"}, status=400)
        if action not in ACTIONS:
            return web.json_response({"ok": False, "error": f"unknown action {action!r}"}, status=400)
        try:
            if action == "reload" and preview:  # what it would change: nothing applied, nothing to refresh
                return web.json_response({"ok": True, "message": await self.model.reload_preview(agent)})
            if action == "reload":
                # the changes the operator confirmed (the page always sends them): applied only if still so
                text = await self.model.reload(agent, expect=str(expect) if expect is not None else None)
            else:
                text = await asyncio.to_thread(
                    lambda: send_control(
                        self.run_dir,
                        action,
                        agent,
                        CONTROL_TIMEOUT_S,
                        all_=all_,
                        sender="ktrader-web",
                        by=f"{operator_id()} for {request.remote or '?'}",
                    )
                )
        except OutcomeUnknown as e:  # (a reload, through the model)
            return _unknown(str(e))
        except (ConnectionFileError, KtraderError, ReloadError, ActionError) as e:
            if is_timeout(e) and not preview:  # sent, not answered: not refused, the gateway may still apply it
                log.warning("%s %s: %s", action, agent, e)
                return _unknown(unknown_outcome_text(CONTROL_TIMEOUT_S))
            return web.json_response({"ok": False, "error": str(e)}, status=409)
        asyncio.create_task(self.model.refresh_status())
        return web.json_response({"ok": True, "message": text})

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.guard])
        app.router.add_get("/", self.index)
        app.router.add_get("/api/stream", self.stream)
        app.router.add_get("/api/ping", self.ping)
        app.router.add_post("/api/control", self.control)
        app.router.add_static("/static/", STATIC)
        app.on_startup.append(self.start)
        app.on_shutdown.append(self._close_streams)
        app.on_cleanup.append(self.stop)
        return app

    async def _close_streams(self, app: web.Application) -> None:
        streams = list(self.clients)
        self.clients.clear()
        for q in streams:
            # wakes a handler idle between keep-alives: it ends now, not up to 15 s into a graceful stop
            with contextlib.suppress(asyncio.QueueFull):  # (a full queue: its handler is not idle)
                q.put_nowait("")


def _unknown(text: str) -> web.Response:
    """A control the gateway did not answer in time: neither done nor refused (the page says "outcome
    unknown", not "refused"); 504 as a gateway that did not answer, `outcome` for the page."""
    return web.json_response({"ok": False, "outcome": "unknown", "error": text}, status=504)


def _stale(data: object, error: str, fetched_at: float) -> str:
    """`data` as JSON with `error` and `age_s` (seconds since it was fetched) added: the page's mark
    that these are the last figures a gateway gave before it stopped answering, not current ones."""
    body: dict[str, object] = msgspec.to_builtins(data)
    body["error"] = error
    body["age_s"] = round(max(0.0, time.monotonic() - fetched_at), 1) if fetched_at else None
    return msgspec.json.encode(body).decode()


def new_token() -> str:
    return secrets.token_urlsafe(24)


_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def token_problem(token: str) -> str:
    """Why `token` cannot be the page's key ("" it can): it rides a URL's fragment and a header as it is, so
    only the characters a URL carries unchanged (a '+' arrived as a space, an '&' cut it, a Korean letter made
    every request of the page fail before it was sent)."""
    if not token:
        return "is empty"
    if not set(token) <= _TOKEN_CHARS:
        return "may hold only letters, digits and - . _ ~ (a URL carries them unchanged)"
    return ""


def run_web(
    run_dir: Path, host: str, port: int, token: str, cards_dir: Path, print_fn: Callable[[str], None] = print
) -> None:
    """Serve until SIGINT/SIGTERM. The URL is printed once the socket is bound, with the port it got
    (port 0: the OS picks one, and printing the 0 asked for would give a URL that goes nowhere).
    OSError when the address cannot be bound (e.g. the port is taken)."""
    dash = Dashboard(run_dir, token, cards_dir)
    app = dash.app()

    async def serve() -> None:
        # web.run_app, spelled out: it binds after on_startup, so nothing there can know the port
        runner = web.AppRunner(app, handle_signals=True, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound = next((a[1] for a in runner.addresses if isinstance(a, tuple)), port)
            print_fn(f"ktrader web: http://{_url_host(host)}:{bound}/#token={token}")
            print_fn("  (open it in a browser on this machine; the token is required; Ctrl-C stops)")
            await asyncio.Event().wait()  # until a signal raises GracefulExit
        finally:
            await runner.cleanup()

    try:
        asyncio.run(serve())
    except (web.GracefulExit, KeyboardInterrupt):
        pass


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host  # an IPv6 address in a URL is bracketed

"""The composition root: settings in, a ready aiohttp application out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import jinja2
from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from prometheus_client import CollectorRegistry

from chatroom.broker import Backend, BackendUnavailable, Broker, Fanout, open_backend
from chatroom.config import Settings
from chatroom.transports import longpoll, sse, websocket
from chatroom.web import api, pages
from chatroom.web.edge import ConnectionGate, Edge, policy_of
from chatroom.web.refusals import CLOSE_GOING_AWAY, answer
from chatroom.web.security import Networks, SessionSigner
from chatroom.web.server import ConnectionGuard, guard_key, request_started
from chatroom.web.state import Chat, Limits, chat_key, refusal_response

__all__ = ["create_app"]

log = logging.getLogger("chatroom")

_WEB = Path(__file__).parent / "web"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The edge's checks, then the handler; every refusal answered from one table.

    A streaming connection's place under the caps is given back when its handler ends,
    unless the handler kept it (a WebSocket outlives its handler).
    """
    request_started(request)
    chat = request.app[chat_key]
    route = policy_of(request)
    try:
        result = await chat.edge.check(request, route)
        try:
            return await handler(request)
        finally:
            ticket = result.ticket
            if ticket is not None and not ticket.kept:
                ticket.release()
    except web.HTTPException:
        raise
    except OSError as exc:
        if isinstance(request.match_info.route.resource, web.StaticResource):
            # a name the file system cannot take (too long, say) names no file of ours
            raise web.HTTPNotFound() from exc
        raise
    except Exception as exc:
        refused = answer(exc)
        if refused is None:
            raise
        if refused.status == 503:
            chat.problems.warning(
                "backend", "backend unavailable (%s %s): %s", request.method, request.path, exc
            )
        if route.render != "json":
            try:
                return await pages.render_refusal(request, refused, route.render)
            except BackendUnavailable:
                # the page itself needs the backend that is out: say so plainly
                pass
        return refusal_response(refused)


_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; worker-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response, whatever made it: handlers, redirects, 404, 405, 413, 500."""
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Content-Security-Policy", _CSP)
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    if request.app[chat_key].settings.secure_cookies:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")


async def _expect(request: web.Request) -> None:
    """The answer to an Expect header, before the handler: 100 Continue to
    `100-continue` (HTTP/1.1), else 417. aiohttp's own puts the header's value in its
    answer, and one that is not text made a 500."""
    if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
        raise web.HTTPExpectationFailed(text="the only Expect understood is 100-continue")
    if request.version == HttpVersion11:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0


def create_app(settings: Settings, backend: Backend | None = None) -> web.Application:
    """Build the app. The backend comes from settings.backend unless one is handed in."""
    app = web.Application(middlewares=[edge], client_max_size=settings.max_body)
    app[guard_key] = ConnectionGuard(settings.header_timeout)
    app.on_response_prepare.append(_security_headers)
    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_WEB / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    templates.filters["clock"] = _clock

    async def lifespan(app: web.Application) -> AsyncIterator[None]:
        store = backend or open_backend(settings.backend, retention=settings.retention)
        broker = Broker(
            store,
            fanout=Fanout(max_pending=settings.max_pending, max_unsent=settings.max_unsent),
            presence_ttl=settings.presence_ttl,
            room_idle=settings.room_idle,
        )
        await broker.start()
        signer = SessionSigner(
            settings.secret, settings.old_secrets, max_age=settings.session_max_age
        )
        chat = Chat(
            settings=settings,
            broker=broker,
            signer=signer,
            limits=Limits.from_settings(settings),
            edge=Edge(
                hosts=settings.hosts(),
                allowed_origins=settings.allowed_origins,
                proxies=Networks(settings.trusted_proxies),
                verify_session=signer.verify,
                csrf_ok=signer.csrf_ok,
                gate=ConnectionGate(
                    settings.max_connections,
                    settings.max_connections_per_address,
                    settings.max_connections_per_session,
                    settings.fd_reserve,
                ),
                max_rooms=settings.max_rooms_per_connection,
            ),
            templates=templates,
        )
        app[chat_key] = chat
        registry = CollectorRegistry(auto_describe=True)
        registry.register(api.ChatCollector(chat))
        app[api.registry_key] = registry
        pings = asyncio.create_task(
            websocket.heartbeat(chat, settings.ws_heartbeat), name="chatroom-ws-heartbeat"
        )
        log.info("chatroom ready: backend %s", store.name)
        yield
        pings.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pings
        await broker.close()
        log.info("chatroom stopped: backend %s closed", store.name)

    async def on_shutdown(app: web.Application) -> None:
        chat = app[chat_key]
        # End every subscription: long polls answer [], SSE streams end.
        chat.broker.shutdown()
        await asyncio.gather(
            *(
                ws.close(
                    code=CLOSE_GOING_AWAY,
                    message=b"server shutting down",
                    # well inside the runner's shutdown timeout
                    within=1.0,
                )
                for ws in list(chat.sockets)
            )
        )

    app.cleanup_ctx.append(lifespan)
    app.on_shutdown.append(on_shutdown)
    for table in (pages.routes, longpoll.routes, websocket.routes, sse.routes, api.routes):
        for route in table:
            if isinstance(route, web.RouteDef):
                route.kwargs.setdefault("expect_handler", _expect)
        app.add_routes(table)
    static = app.router.add_static(
        "/static", _WEB / "static", append_version=True, name="static", expect_handler=_expect
    )
    templates.globals["static"] = lambda name: str(static.url_for(filename=name))
    # the room pages' scripts share a connection among tabs: so many rooms on one
    templates.globals["max_rooms"] = settings.max_rooms_per_connection
    return app


def _clock(timestamp_ms: int) -> str:
    """HH:MM UTC: what a page shows before its script puts it in the reader's time zone."""
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC).strftime("%H:%M")

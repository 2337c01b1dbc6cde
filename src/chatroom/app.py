"""The composition root: settings in, a ready aiohttp application out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import jinja2
from aiohttp import web
from prometheus_client import CollectorRegistry

from chatroom.broker import Backend, BackendUnavailable, Broker, open_backend
from chatroom.config import Settings
from chatroom.core.presence import LeftRoom, NicknameTaken
from chatroom.core.validation import InvalidInput
from chatroom.transports import longpoll, sse, websocket
from chatroom.web import api, pages
from chatroom.web.security import RateLimiter, SessionSigner
from chatroom.web.state import Chat, NoSession, chat_key, json_error

__all__ = ["create_app"]

log = logging.getLogger("chatroom")

_WEB = Path(__file__).parent / "web"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn the domain's refusals into clear answers; log the unexpected once."""
    try:
        return await handler(request)
    except InvalidInput as exc:
        return json_error(400, "invalid", exc.reason, field=exc.field)
    except NicknameTaken as exc:
        return json_error(409, "nickname_taken", str(exc))
    except LeftRoom as exc:
        return json_error(410, "left", str(exc))
    except NoSession as exc:
        return json_error(401, "no_session", str(exc))
    except BackendUnavailable as exc:
        request.app[chat_key].problems.warning(
            "backend", "backend unavailable (%s %s): %s", request.method, request.path, exc
        )
        return json_error(503, "unavailable", str(exc))


@web.middleware
async def headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if not response.prepared:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; "
            "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
        )
    return response


def create_app(settings: Settings, backend: Backend | None = None) -> web.Application:
    """Build the app. The backend comes from settings.backend unless one is handed in."""
    app = web.Application(
        middlewares=[headers, errors], client_max_size=settings.max_body
    )
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
            max_pending=settings.max_pending,
            max_unsent=settings.max_unsent,
            presence_ttl=settings.presence_ttl,
        )
        await broker.start()
        chat = Chat(
            settings=settings,
            broker=broker,
            signer=SessionSigner(settings.secret),
            limiter=RateLimiter(settings.rate, settings.burst),
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
                    code=websocket.CLOSE_GOING_AWAY,
                    message=b"server shutting down",
                    # well inside the runner's shutdown timeout
                    within=1.0,
                )
                for ws in list(chat.sockets)
            )
        )

    app.cleanup_ctx.append(lifespan)
    app.on_shutdown.append(on_shutdown)
    app.add_routes(pages.routes)
    app.add_routes(longpoll.routes)
    app.add_routes(websocket.routes)
    app.add_routes(sse.routes)
    app.add_routes(api.routes)
    static = app.router.add_static(
        "/static", _WEB / "static", append_version=True, name="static"
    )
    templates.globals["static"] = lambda name: str(static.url_for(filename=name))
    return app


def _clock(timestamp_ms: int) -> str:
    """HH:MM UTC: what a page shows before its script puts it in the reader's time zone."""
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC).strftime("%H:%M")

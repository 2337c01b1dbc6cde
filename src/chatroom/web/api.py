"""JSON API, health and metrics: /api/rooms..., /healthz, /readyz, /metrics.

Every route is described by the OpenAPI document served at /api/openapi.json (the file
openapi.json beside this module); tests/web/test_openapi.py holds them to it. Every
value a request carries is parsed by chatroom.web.params before anything is read.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from pathlib import Path

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from chatroom.broker import BackendUnavailable
from chatroom.web.edge import policy
from chatroom.web.params import (
    RoomKey,
    cursor_param,
    int_param,
    room_key_param,
    room_param,
    single,
)
from chatroom.web.state import TECHNIQUES, Chat, chat_key, json_error

__all__ = ["ChatCollector", "routes"]

routes = web.RouteTableDef()

# most events one history page holds; most rooms one listing page holds
MAX_HISTORY = 500
MAX_ROOMS_PAGE = 100
DEFAULT_PAGE = 50

_OPENAPI = Path(__file__).with_name("openapi.json")


@functools.cache
def openapi_document() -> bytes:
    """The OpenAPI 3.1 document of this API, read once."""
    return _OPENAPI.read_bytes()


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _query(request: web.Request, name: str) -> str | None:
    """The one value of query parameter `name`; None when absent; InvalidInput if repeated."""
    return single(request.query.getall(name, []), name)


@routes.get("/api/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=openapi_document(), content_type="application/json")


@routes.get("/api/rooms")
async def rooms(request: web.Request) -> web.Response:
    """Live and recent rooms, busiest first; `next` is the cursor of the next page."""
    chat = request.app[chat_key]
    limit = int_param(
        _query(request, "limit"), name="limit", default=DEFAULT_PAGE, lo=1, hi=MAX_ROOMS_PAGE
    )
    after = room_key_param(_query(request, "cursor"), "cursor")
    listed = await chat.broker.rooms(limit + 1, after)
    page = listed[:limit]
    following = str(RoomKey(page[-1][1], page[-1][0])) if len(listed) > limit else None
    return _json(
        {"rooms": [{"name": name, "members": count} for name, count in page], "next": following}
    )


@routes.get("/api/rooms/{room}/history")
async def history(request: web.Request) -> web.Response:
    chat = request.app[chat_key]
    room = room_param(request.match_info["room"])
    limit = int_param(
        _query(request, "limit"), name="limit", default=DEFAULT_PAGE, lo=1, hi=MAX_HISTORY
    )
    before = cursor_param(_query(request, "before"), "before")
    events = await chat.broker.history(room, before, limit)
    body = (
        b'{"room":' + orjson.dumps(room)
        + b',"events":[' + b",".join(e.data for e in events) + b"]"
        + b',"before":' + orjson.dumps(events[0].id if events else None) + b"}"
    )
    return web.Response(body=body, content_type="application/json")


@routes.get("/api/rooms/{room}/presence")
async def presence(request: web.Request) -> web.Response:
    chat = request.app[chat_key]
    room = room_param(request.match_info["room"])
    return _json({"room": room, "members": await chat.broker.members(room)})


@routes.get("/api/{path:.*}")
async def no_such_route(request: web.Request) -> web.Response:
    """Below /api/, a path no route serves is answered in JSON too (registered last)."""
    return json_error(404, "not_found", "no such API route: see /api/openapi.json")


@routes.get("/healthz")
@policy(host=False)
async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


@routes.get("/readyz")
@policy(host=False)
async def readyz(request: web.Request) -> web.Response:
    chat = request.app[chat_key]
    if chat.broker.closing:
        return web.Response(status=503, text="shutting down\n")
    try:
        async with asyncio.timeout(2.0):
            await chat.broker.backend.ping()
    except (BackendUnavailable, TimeoutError, OSError) as exc:
        return web.Response(status=503, text=f"backend unreachable: {exc}\n")
    return web.Response(text="ready\n")


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    registry = request.app[registry_key]
    return web.Response(
        body=generate_latest(registry),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


class ChatCollector(Collector):
    """Reads the broker's plain counters when scraped: nothing is counted twice on the hot path."""

    def __init__(self, chat: Chat) -> None:
        self._chat = chat

    def collect(self) -> Iterator[Metric]:
        chat = self._chat
        stats = chat.broker.stats
        connections = GaugeMetricFamily(
            "chatroom_connections",
            "Open WebSocket and SSE connections and parked long polls, by technique",
            labels=["technique"],
        )
        for technique in TECHNIQUES:
            connections.add_metric([technique], chat.connections.get(technique, 0))
        yield connections
        yield CounterMetricFamily(
            "chatroom_events_published", "Events stored by this process", stats.published
        )
        yield CounterMetricFamily(
            "chatroom_deliveries", "Events handed to local subscribers", stats.deliveries
        )
        yield CounterMetricFamily(
            "chatroom_clients_cut_off", "Subscribers cut off as too slow", stats.cut_off
        )
        yield GaugeMetricFamily(
            "chatroom_subscribers", "Live subscriptions in this process", chat.broker.subscribers()
        )


registry_key = web.AppKey("metrics_registry", CollectorRegistry)
__all__ += ["registry_key"]

"""JSON API, health and metrics: /api/rooms..., /healthz, /readyz, /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from chatroom.broker import BackendUnavailable
from chatroom.core.events import read_cursor
from chatroom.web.edge import checked, policy
from chatroom.web.state import TECHNIQUES, Chat, chat_key, json_error

__all__ = ["ChatCollector", "routes"]

routes = web.RouteTableDef()

MAX_HISTORY = 500


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


@routes.get("/api/rooms")
async def rooms(request: web.Request) -> web.Response:
    chat = request.app[chat_key]
    listed = await chat.broker.rooms()
    return _json({"rooms": [{"name": name, "members": count} for name, count in listed]})


@routes.get("/api/rooms/{room}/history")
@policy(room=True)
async def history(request: web.Request) -> web.Response:
    chat = request.app[chat_key]
    room = checked(request).room
    raw_limit = request.query.get("limit", "50")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_HISTORY:
        return json_error(400, "bad_limit", f"limit must be a number from 1 to {MAX_HISTORY}")
    before = read_cursor(request.query.get("before"))
    events = await chat.broker.history(room, before, int(raw_limit))
    body = (
        b'{"room":' + orjson.dumps(room)
        + b',"events":[' + b",".join(e.data for e in events) + b"]"
        + b',"before":' + orjson.dumps(events[0].id if events else None) + b"}"
    )
    return web.Response(body=body, content_type="application/json")


@routes.get("/api/rooms/{room}/presence")
@policy(room=True)
async def presence(request: web.Request) -> web.Response:
    chat = request.app[chat_key]
    room = checked(request).room
    return _json({"room": room, "members": await chat.broker.members(room)})


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

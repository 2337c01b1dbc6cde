"""Long Polling: GET waits up to 25 s for events after `lastReceived`; POST says."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from chatroom.broker import Delivery, SlowConsumer, Subscription
from chatroom.core.events import read_cursor
from chatroom.core.presence import LeftRoom
from chatroom.web.edge import checked, policy
from chatroom.web.saying import enter_room, say
from chatroom.web.server import gone
from chatroom.web.state import chat_key

__all__ = ["routes"]

routes = web.RouteTableDef()


def _json_array(batch: list[Delivery]) -> bytes:
    # The events are encoded already: join their bytes, never re-serialise them.
    return b"[" + b",".join(item.data for item in batch) + b"]"


@routes.get("/longpolling/room/messages")
@policy(origin=True, session="required", room=True, stream="longpolling")
async def wait_for_news(request: web.Request) -> web.Response:
    """Answers the events after lastReceived, waiting up to longpoll_timeout for one;
    answered at once if the client goes meanwhile."""
    chat = request.app[chat_key]
    edge = checked(request)
    room, session = edge.room, edge.require_session()
    await enter_room(chat, room, edge.address)
    await chat.broker.keep_present(room, session.user, session.sid)
    cursor = read_cursor(request.query.get("lastReceived"))
    batch: list[Delivery] = []
    chat.connections["longpolling"] += 1
    try:
        async with chat.broker.subscribe(room, cursor, session=session.sid) as sub:
            batch = await _first(sub, gone(request), chat.settings.longpoll_timeout)
    finally:
        chat.connections["longpolling"] -= 1
    if sub.reason == "left":
        raise LeftRoom(room, session.user)
    response = web.Response(body=_json_array(batch), content_type="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


async def _first(
    sub: Subscription, client_gone: Coroutine[Any, Any, None], wait: float
) -> list[Delivery]:
    """The subscription's next batch; [] on timeout, when it ends, or when the client goes."""
    news = asyncio.ensure_future(anext(sub))
    away = asyncio.ensure_future(client_gone)
    try:
        done, _ = await asyncio.wait({news, away}, timeout=wait,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (news, away):
            if not task.done():
                task.cancel()
        await asyncio.gather(news, away, return_exceptions=True)
    if news not in done:
        return []
    try:
        return news.result()
    except (StopAsyncIteration, SlowConsumer):
        return []


@routes.post("/longpolling/room/messages")
@policy(origin=True, csrf=True, session="required", body=True, room=True)
async def say_message(request: web.Request) -> web.Response:
    chat = request.app[chat_key]
    edge = checked(request)
    form = edge.form
    stored = await say(
        chat, edge.require_session(), edge.address, edge.room,
        form.get("message"), form.get("client_id"),
    )
    return web.Response(body=stored.event.data, content_type="application/json")

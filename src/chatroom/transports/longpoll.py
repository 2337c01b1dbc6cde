"""Long Polling: GET waits up to 25 s for events after `lastReceived`; POST says."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from aiohttp import web

from chatroom.broker import Delivery, SlowConsumer
from chatroom.core.events import read_cursor
from chatroom.core.presence import LeftRoom
from chatroom.web.pages import say_from_form
from chatroom.web.state import chat_key, json_error, room_of

__all__ = ["routes"]

routes = web.RouteTableDef()


def _json_array(batch: list[Delivery]) -> bytes:
    # The events are encoded already: join their bytes, never re-serialise them.
    return b"[" + b",".join(item.data for item in batch) + b"]"


@routes.get("/longpolling/room/messages")
async def poll(request: web.Request) -> web.Response:
    chat = request.app[chat_key]
    room = room_of(request)
    session = chat.require_session(request)
    await chat.broker.poll(room, session.user, session.sid)
    cursor = read_cursor(request.query.get("lastReceived"))
    batch: list[Delivery] = []
    chat.connections["longpolling"] += 1
    try:
        async with chat.broker.subscribe(room, cursor, session=session.sid) as sub:
            with contextlib.suppress(TimeoutError, StopAsyncIteration, SlowConsumer):
                batch = await asyncio.wait_for(
                    anext(sub), timeout=chat.settings.longpoll_timeout
                )
    finally:
        chat.connections["longpolling"] -= 1
    if sub.reason == "left":
        return json_error(410, "left", str(LeftRoom(room, session.user)))
    response = web.Response(body=_json_array(batch), content_type="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


@routes.post("/longpolling/room/messages")
async def say(request: web.Request) -> web.Response:
    chat = request.app[chat_key]
    room = room_of(request)
    session = chat.require_session(request)
    data: dict[str, Any]
    if request.content_type == "application/json":
        try:
            parsed = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return json_error(400, "bad_json", f"the body is not valid JSON: {exc}")
        if not isinstance(parsed, dict):
            return json_error(400, "bad_json", 'send a JSON object: {"message": "..."}')
        data = parsed
    else:
        data = dict(await request.post())
    status, error, stored = await say_from_form(request, chat, session, room, data)
    if error is not None:
        codes = {
            400: "invalid", 403: "forbidden", 409: "nickname_taken", 410: "left",
            429: "rate_limited",
        }
        return json_error(status, codes.get(status, "error"), error)
    return web.Response(body=stored.event.data, content_type="application/json")

"""Long Polling: GET waits up to 25 s for events after `lastReceived`; POST says."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from chatroom.broker import Delivery, SlowConsumer, Subscription
from chatroom.core.presence import LeftRoom, NicknameTaken
from chatroom.transports.rooms import LEFT, ended, named, room_refused
from chatroom.web.edge import checked, policy
from chatroom.web.params import Follow
from chatroom.web.saying import enter_room, say
from chatroom.web.server import gone
from chatroom.web.state import chat_key

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.get("/longpolling/room/messages")
@policy(origin=True, session="required", rooms=True, stream="longpolling")
async def wait_for_news(request: web.Request) -> web.Response:
    """Answers the events after lastReceived, waiting up to longpoll_timeout for one;
    answered at once if the client goes meanwhile.

    In the multi-room form (`?follow=R:C&follow=...`), the events of every room that has
    any, each room's in its id order, and a notice for each room that ended for this
    session (see transports.rooms); waiting for the first event of any of them.
    """
    chat = request.app[chat_key]
    edge = checked(request)
    session = edge.require_session()
    for follow in edge.follows:
        await enter_room(chat, follow.room, edge.address)
    notices: list[bytes] = []
    live: list[Follow] = []
    for follow in edge.follows:
        try:
            await chat.broker.keep_present(follow.room, session.user, session.sid)
        except (LeftRoom, NicknameTaken) as exc:
            notices.append(ended(follow.room, room_refused(exc, edge.named)))
            continue
        live.append(follow)
    parts: list[bytes] = notices
    if live and not notices:
        subs = [
            chat.broker.subscribe(follow.room, follow.cursor, session=session.sid)
            for follow in live
        ]
        chat.connections["longpolling"] += 1
        try:
            news = await _first(subs, gone(request), chat.settings.longpoll_timeout)
        finally:
            chat.connections["longpolling"] -= 1
            for sub in subs:
                sub.close()
        for sub, batch in zip(subs, news, strict=True):
            if sub.reason == "left" and not edge.named:
                raise LeftRoom(sub.room, session.user)
            if batch:
                items = named(batch, sub.room) if edge.named else batch
                # The events are encoded already: join their bytes, never re-serialise them.
                parts.extend(item.data for item in items)
            if sub.reason == "left":
                # (it left while this poll waited: its leave came first, if it had come)
                parts.append(ended(sub.room, LEFT))
    response = web.Response(body=b"[" + b",".join(parts) + b"]", content_type="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


async def _first(
    subs: list[Subscription], client_gone: Coroutine[Any, Any, None], wait: float
) -> list[list[Delivery]]:
    """Each subscription's next batch, as soon as one has one: [] for those that have
    none then, for all on timeout, when they end, or when the client goes."""
    news = [asyncio.ensure_future(anext(sub)) for sub in subs]
    away = asyncio.ensure_future(client_gone)
    try:
        done, _ = await asyncio.wait({*news, away}, timeout=wait,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (*news, away):
            if not task.done():
                task.cancel()
        await asyncio.gather(*news, away, return_exceptions=True)
    if away in done:
        return [[] for _ in subs]
    batches: list[list[Delivery]] = []
    for task in news:
        batch: list[Delivery] = []
        if not task.cancelled():
            error = task.exception()
            if error is None:
                batch = task.result()
            elif not isinstance(error, (StopAsyncIteration, SlowConsumer)):
                raise error
        batches.append(batch)
    return batches


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

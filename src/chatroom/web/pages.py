"""HTML pages: welcome, /demo (claim a nickname), the room pages, Active Refresh, leave."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from chatroom.core.presence import LeftRoom, NicknameTaken
from chatroom.core.validation import InvalidInput, validate_nickname, validate_room
from chatroom.web.security import COOKIE, Session
from chatroom.web.state import TECHNIQUES, Chat, chat_key, require_post_allowed, room_of

__all__ = ["routes"]

routes = web.RouteTableDef()

_HTML = "text/html"


def _render(chat: Chat, name: str, status: int = 200, **context: Any) -> web.Response:
    body = chat.templates.get_template(name).render(techniques=TECHNIQUES, **context)
    response = web.Response(text=body, content_type=_HTML, status=status)
    response.headers["Cache-Control"] = "no-store"
    return response


async def _welcome(
    chat: Chat,
    status: int = 200,
    error: str | None = None,
    user: str = "",
    room: str = "lobby",
    demo: str = "websocket",
) -> web.Response:
    # the 50 busiest live rooms, and whether there are more (GET /api/rooms lists them all)
    rooms = await chat.broker.rooms(51)
    return _render(
        chat,
        "welcome.html",
        status,
        error=error,
        rooms=rooms[:50],
        more_rooms=len(rooms) > 50,
        form={"user": user, "room": room, "demo": demo},
    )


@routes.get("/")
async def welcome(request: web.Request) -> web.Response:
    chat = request.app[chat_key]
    session = chat.session(request)
    return await _welcome(
        chat,
        error=request.query.get("error"),
        user=session.user if session else "",
        room=request.query.get("room", "lobby"),
        demo=request.query.get("demo", "websocket"),
    )


@routes.get("/demo")
async def demo(request: web.Request) -> web.StreamResponse:
    """Claim a nickname in a room, set the signed session cookie, go to the room page."""
    chat = request.app[chat_key]
    raw_user = request.query.get("user", "")
    raw_room = request.query.get("room", "lobby")
    technique = request.query.get("demo", "websocket")
    form = {"user": raw_user[:64], "room": raw_room[:80], "demo": technique}
    if technique not in TECHNIQUES:
        return await _welcome(chat, 400, "choose one of the four techniques", **form)
    try:
        user = validate_nickname(raw_user)
        room = validate_room(raw_room)
    except InvalidInput as exc:
        return await _welcome(chat, 400, exc.reason, **form)
    current = chat.session(request)
    session = current if current and current.user == user else chat.signer.new_session(user)
    try:
        await chat.broker.claim(room, user, session.sid)
    except NicknameTaken:
        return await _welcome(
            chat,
            409,
            f"the nickname {user!r} is already in use in room {room!r}: pick another",
            **form,
        )
    response = web.HTTPFound(f"/{technique}/room?room={room}")
    response.set_cookie(
        COOKIE,
        chat.signer.sign(session),
        httponly=True,
        samesite="Lax",
        secure=chat.settings.secure_cookies,
        path="/",
    )
    raise response


def _to_welcome(room: str, technique: str, error: str) -> web.HTTPSeeOther:
    from urllib.parse import urlencode

    query = urlencode({"room": room, "demo": technique, "error": error})
    return web.HTTPSeeOther(f"/?{query}")


async def _room_page(
    request: web.Request,
    technique: str,
    *,
    status: int = 200,
    error: str | None = None,
    draft: str = "",
) -> web.Response:
    chat = request.app[chat_key]
    try:
        room = room_of(request)
    except InvalidInput as exc:
        return await _welcome(chat, 400, exc.reason, demo=technique)
    session = chat.session(request)
    if session is None:
        raise _to_welcome(room, technique, "pick a nickname first")
    try:
        # Any page view keeps a poller present (the refresh page reloads every 5 s).
        await chat.broker.poll(room, session.user, session.sid)
    except NicknameTaken:
        raise _to_welcome(
            room, technique, f"the nickname {session.user!r} is in use in room {room!r}"
        ) from None
    except LeftRoom as exc:
        raise _to_welcome(room, technique, str(exc)) from None
    events, head = await chat.broker.recent(room)
    return _render(
        chat,
        "room.html",
        status,
        technique=technique,
        technique_label=TECHNIQUES[technique],
        room=room,
        user=session.user,
        events=[e.as_dict() for e in events],
        last_id=str(head) if head else "",
        members=await chat.broker.members(room),
        csrf=chat.signer.csrf(session),
        error=error,
        draft=draft,
    )


def _page_route(technique: str) -> None:
    async def page(request: web.Request) -> web.Response:
        return await _room_page(request, technique)

    page.__name__ = f"{technique}_page"
    routes.get(f"/{technique}/room")(page)


for _technique in TECHNIQUES:
    _page_route(_technique)


async def say_from_form(
    request: web.Request, chat: Chat, session: Session, room: str, data: dict[str, Any]
) -> tuple[int, str | None, Any]:
    """Shared by the refresh form and the long-poll POST: (status, error, stored or None)."""
    refusal = require_post_allowed(request, chat, session, data.get("csrf"))
    if refusal is not None:
        return 403, refusal, None
    wait = chat.limiter.check(session.sid)
    if wait > 0:
        return 429, f"too many messages: wait {wait:.1f} s and send again", None
    try:
        stored = await chat.broker.say(
            room, session.user, session.sid, data.get("message"), data.get("client_id")
        )
    except InvalidInput as exc:
        return 400, exc.reason, None
    except NicknameTaken as exc:
        return 409, str(exc), None
    except LeftRoom as exc:
        return 410, str(exc), None
    return 200, None, stored


@routes.post("/refresh/room")
async def refresh_say(request: web.Request) -> web.StreamResponse:
    chat = request.app[chat_key]
    try:
        room = room_of(request)
    except InvalidInput as exc:
        return await _welcome(chat, 400, exc.reason, demo="refresh")
    session = chat.session(request)
    if session is None:
        raise _to_welcome(room, "refresh", "pick a nickname first")
    form = dict(await request.post())
    status, error, _ = await say_from_form(request, chat, session, room, form)
    if error is not None:
        draft = form.get("message")
        return await _room_page(
            request,
            "refresh",
            status=status,
            error=error,
            draft=draft if isinstance(draft, str) else "",
        )
    raise web.HTTPSeeOther(f"/refresh/room?room={room}")


def _leave_route(technique: str) -> None:
    async def leave(request: web.Request) -> web.StreamResponse:
        chat = request.app[chat_key]
        room = room_of(request)
        session = chat.session(request)
        if session is None:
            raise web.HTTPSeeOther("/")
        form = dict(await request.post())
        token = form.get("csrf")
        refusal = require_post_allowed(
            request, chat, session, token if isinstance(token, str) else None
        )
        if refusal is not None:
            return web.Response(status=403, text=refusal)
        await chat.broker.leave(room, session.user, session.sid)
        raise web.HTTPSeeOther(f"/?room={room}")

    leave.__name__ = f"{technique}_leave"
    routes.post(f"/{technique}/room/leave")(leave)


for _technique in TECHNIQUES:
    _leave_route(_technique)


def new_conn_id() -> str:
    return uuid.uuid4().hex

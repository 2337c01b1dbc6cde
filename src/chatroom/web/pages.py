"""HTML pages: welcome, /demo (claim a nickname), the room pages, Active Refresh, leave.

Every request has passed the edge (`chatroom.web.edge`) before a handler here runs:
its host, origin, CSRF token, session and room are checked, and its form parsed.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from chatroom.core.events import Event, Position
from chatroom.core.presence import NicknameTaken
from chatroom.core.validation import InvalidInput, validate_nickname, validate_room
from chatroom.web.edge import checked, checked_so_far, policy
from chatroom.web.params import cursor_param, single
from chatroom.web.refusals import Refused
from chatroom.web.saying import enter_room, say
from chatroom.web.security import COOKIE
from chatroom.web.state import TECHNIQUES, Chat, chat_key

__all__ = ["WELCOME_ERRORS", "render_refusal", "routes"]

routes = web.RouteTableDef()

_HTML = "text/html"

# events one page of a room's history shows: the archive a room page opens with, and
# each page the "Older messages" link (or scrolling to the top) goes back
PAGE = 50

# What the welcome page may be sent to say (?error=CODE): codes only, never text.
WELCOME_ERRORS: dict[str, str] = {
    "nickname": "pick a nickname first",
    "taken": "that nickname is in use in this room: pick another",
    "left": "you left this room: enter it again below",
    "cross_site": "you followed a link from another site: check the room and press Enter",
    "session": "your session has expired: pick a nickname again",
}


def _render(chat: Chat, name: str, status: int = 200, **context: Any) -> web.Response:
    body = chat.templates.get_template(name).render(techniques=TECHNIQUES, **context)
    response = web.Response(text=body, content_type=_HTML, status=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def _form_value(value: object, default: str, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else default


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
        form={"user": user, "room": room, "demo": demo if demo in TECHNIQUES else "websocket"},
    )


def _with_retry_after(response: web.Response, refused: Refused) -> web.Response:
    if refused.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(refused.retry_after)))
    return response


def _to_welcome(room: str, technique: str, code: str) -> web.HTTPSeeOther:
    query = urlencode({"room": room, "demo": technique, "error": code})
    return web.HTTPSeeOther(f"/?{query}")


def _valid_room(raw: str | None) -> str:
    try:
        return validate_room(raw)
    except InvalidInput:
        return "lobby"


@routes.get("/")
@policy(session="optional")
async def welcome(request: web.Request) -> web.Response:
    chat = request.app[chat_key]
    session = checked(request).session
    code = request.query.get("error")
    return await _welcome(
        chat,
        error=WELCOME_ERRORS.get(code) if code else None,
        user=session.user if session else "",
        room=_valid_room(request.query.get("room")),
        demo=request.query.get("demo", "websocket"),
    )


@routes.get("/demo")
@policy(session="optional")
async def demo(request: web.Request) -> web.StreamResponse:
    """Claim a nickname in a room, set the signed session cookie, go to the room page."""
    chat = request.app[chat_key]
    edge = checked(request)
    raw_user = request.query.get("user", "")
    raw_room = request.query.get("room", "lobby")
    technique = request.query.get("demo", "websocket")
    form = {"user": raw_user[:64], "room": raw_room[:80], "demo": technique}
    if edge.cross_site:
        # Login CSRF: another site may not sign this browser in, nor pick its room. The
        # invitation still works: the welcome page, with the room filled in.
        raise _to_welcome(_valid_room(raw_room), technique, "cross_site")
    if technique not in TECHNIQUES:
        return await _welcome(chat, 400, "choose one of the four techniques", **form)
    try:
        user = validate_nickname(raw_user)
        room = validate_room(raw_room)
    except InvalidInput as exc:
        return await _welcome(chat, 400, exc.reason, **form)
    wait = chat.limits.demo.check(edge.address)
    if wait > 0:
        refused = Refused(
            429, "rate_limited",
            f"too many nicknames claimed from your address: wait {math.ceil(wait)} s",
            retry_after=wait,
        )
        return _with_retry_after(await _welcome(chat, 429, refused.reason, **form), refused)
    try:
        await enter_room(chat, room, edge.address)
    except Refused as refused:
        page = await _welcome(chat, refused.status, refused.reason, **form)
        return _with_retry_after(page, refused)
    current = edge.session
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
        max_age=int(chat.settings.session_max_age),
    )
    raise response


async def _room_page(
    request: web.Request,
    technique: str,
    *,
    status: int = 200,
    error: str | None = None,
    draft: str = "",
    enter: bool = True,
    before: Position | None = None,
) -> web.Response:
    """A room page. `enter`: the view keeps a poller present (the refresh page reloads
    every 5 s); a page re-rendered to show a refusal changes nothing. `before`: the
    page of history before that event (the "Older messages" link), not the newest."""
    chat = request.app[chat_key]
    edge = checked(request)
    room = edge.room
    session = edge.session
    if session is None:
        raise _to_welcome(room, technique, "nickname")
    if enter:
        if edge.cross_site:
            raise _to_welcome(room, technique, "cross_site")
        await enter_room(chat, room, edge.address)
        try:
            await chat.broker.keep_present(room, session.user, session.sid)
        except NicknameTaken:
            raise _to_welcome(room, technique, "taken") from None
    if before is None:
        events, head = await chat.broker.recent(room)
        older = bool(events) and bool(await chat.broker.history(room, events[0].position, 1))
        shown, live = events, events
    else:
        shown, older = await _page_before(chat, room, before)
        newest = await chat.broker.history(room, None, 1)
        head = newest[0].position if newest else None
        live = []
    return _render(
        chat,
        "room.html",
        status,
        technique=technique,
        technique_label=TECHNIQUES[technique],
        room=room,
        user=session.user,
        # a page of history (?before=) goes in the list above the live thread
        events=[e.as_dict() for e in live],
        earlier=[e.as_dict() for e in shown] if before is not None else [],
        # where the "Older messages" link goes; None: the room's history begins here
        older_than=shown[0].id if older and shown else None,
        history_view=before is not None,
        last_id=str(head) if head else "",
        members=await chat.broker.members(room),
        csrf=chat.signer.csrf(session),
        error=error,
        draft=draft,
    )


async def _page_before(chat: Chat, room: str, before: Position) -> tuple[list[Event], bool]:
    """The PAGE events before `before`, oldest first, and whether any older are kept."""
    events = await chat.broker.history(room, before, PAGE + 1)
    return events[-PAGE:], len(events) > PAGE


def _page_route(technique: str) -> None:
    @policy(session="optional", room=True, render="welcome")
    async def page(request: web.Request) -> web.Response:
        # parsed before the page enters the room: a bad link is 400 and changes nothing
        before = cursor_param(single(request.query.getall("before", []), "before"), "before")
        return await _room_page(request, technique, before=before)

    page.__name__ = f"{technique}_page"
    routes.get(f"/{technique}/room")(page)


for _technique in TECHNIQUES:
    _page_route(_technique)


@routes.post("/refresh/room")
@policy(origin=True, csrf=True, session="required", body=True, room=True, render="room")
async def refresh_say(request: web.Request) -> web.StreamResponse:
    chat = request.app[chat_key]
    edge = checked(request)
    session = edge.require_session()
    form = edge.form
    await say(chat, session, edge.address, edge.room, form.get("message"), form.get("client_id"))
    raise web.HTTPSeeOther(f"/refresh/room?room={edge.room}")


async def render_refusal(request: web.Request, refused: Refused, render: str) -> web.Response:
    """A refused page request, shown as a page: the room page with the error and the
    typed text kept, or the welcome page. Rendering it changes nothing."""
    chat = request.app[chat_key]
    edge = checked_so_far(request)
    technique = request.path.split("/")[1]
    technique = technique if technique in TECHNIQUES else "refresh"
    room = _valid_room(request.query.get("room"))
    goes_to_welcome = {"nickname_taken": "taken", "left": "left", "no_session": "nickname"}
    if refused.code in goes_to_welcome:
        # this browser is not (or no longer) in the room: the welcome page says why
        raise _to_welcome(room, technique, goes_to_welcome[refused.code])
    if render == "room" and edge is not None and edge.session is not None:
        edge.room = edge.room or room
        return _with_retry_after(await _room_page(
            request,
            technique,
            status=refused.status,
            error=refused.reason,
            draft=_form_value(edge.form.get("message"), "", chat.settings.max_body),
            enter=False,
        ), refused)
    page = await _welcome(chat, refused.status, refused.reason, room=room, demo=technique)
    return _with_retry_after(page, refused)


def _leave_route(technique: str) -> None:
    @policy(origin=True, csrf=True, session="required", body=True, room=True, render="welcome")
    async def leave(request: web.Request) -> web.StreamResponse:
        chat = request.app[chat_key]
        edge = checked(request)
        session = edge.require_session()
        await chat.broker.leave(edge.room, session.user, session.sid)
        raise web.HTTPSeeOther(f"/?room={edge.room}")

    leave.__name__ = f"{technique}_leave"
    routes.post(f"/{technique}/room/leave")(leave)


for _technique in TECHNIQUES:
    _leave_route(_technique)

"""Helpers for tests that talk to a real server over real loopback sockets."""

from tests.redis_server import free_port
from tests.support.clock import ManualClock
from tests.support.http import (
    HasUrl,
    Login,
    Thread,
    cookie_of,
    history,
    login,
    poll,
    press_leave,
    publish,
    room_page,
    say_lp,
    thread_items,
    thread_messages,
)
from tests.support.server import (
    PRESENT_FOR,
    SECRET,
    UNLIMITED,
    Server,
    eventually,
    new_client,
    present,
    serving,
    start_server,
)
from tests.support.sse import (
    SSEEvent,
    SSEStream,
)
from tests.support.websocket import (
    HasPort,
    RawWebSocket,
    client_frame,
    frame_header,
    open_ws,
    ws_json,
    ws_until,
)

__all__ = [
    "PRESENT_FOR",
    "SECRET",
    "UNLIMITED",
    "HasPort",
    "HasUrl",
    "Login",
    "ManualClock",
    "RawWebSocket",
    "SSEEvent",
    "SSEStream",
    "Server",
    "Thread",
    "client_frame",
    "cookie_of",
    "eventually",
    "frame_header",
    "free_port",
    "history",
    "login",
    "new_client",
    "open_ws",
    "poll",
    "present",
    "press_leave",
    "publish",
    "room_page",
    "say_lp",
    "serving",
    "start_server",
    "thread_items",
    "thread_messages",
    "ws_json",
    "ws_until",
]

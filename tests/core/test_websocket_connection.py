"""The WebSocket connection's state machine, server side: bytes in, texts out, bytes to
send. No socket, no loop, no sleep."""

from __future__ import annotations

from chatroom.core.websocket import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    ServerConnection,
    close_frame,
    control_frame,
    parse_close,
)
from tests.support import client_frame

LIMIT = 1024


def sent_frames(conn: ServerConnection) -> list[tuple[int, bytes]]:
    """What the server queued, parsed back (server frames are unmasked: mask them with
    zeros so the client-side parser reads them)."""
    raw = conn.data_to_send()
    frames: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(raw):
        b0, b1 = raw[pos], raw[pos + 1]
        length = b1 & 0x7F
        head = 2
        if length == 126:
            length, head = int.from_bytes(raw[pos + 2 : pos + 4], "big"), 4
        frames.append((b0 & 0x0F, raw[pos + head : pos + head + length]))
        pos += head + length
    return frames


def test_text_messages_come_out_in_order() -> None:
    conn = ServerConnection(LIMIT)
    data = client_frame(b"one") + client_frame(b"tw", fin=False) + client_frame(b"o", 0, fin=True)
    assert conn.receive_data(data) == ["one", "two"]
    assert conn.data_to_send() == b""


def test_a_ping_is_answered_with_its_payload() -> None:
    conn = ServerConnection(LIMIT)
    assert conn.receive_data(client_frame(b"are you there", OP_PING)) == []
    assert sent_frames(conn) == [(OP_PONG, b"are you there")]


def test_a_client_close_is_echoed_and_the_server_hangs_up() -> None:
    conn = ServerConnection(LIMIT)
    conn.receive_data(client_frame((4321).to_bytes(2, "big") + b"bye", OP_CLOSE))
    assert sent_frames(conn) == [(OP_CLOSE, (4321).to_bytes(2, "big"))]
    assert (conn.close_sent, conn.failed, conn.hang_up, conn.half_close) == (
        True, True, True, False,
    )
    # nothing it sends afterwards is read or answered
    assert conn.receive_data(client_frame(b"late") + client_frame(b"", OP_PING)) == []
    assert conn.data_to_send() == b""


def test_an_empty_close_gets_1000_and_a_bad_one_its_error() -> None:
    conn = ServerConnection(LIMIT)
    conn.receive_data(client_frame(b"", OP_CLOSE))
    assert parse_close(sent_frames(conn)[0][1])[0] == 1000
    conn = ServerConnection(LIMIT)
    conn.receive_data(client_frame((999).to_bytes(2, "big"), OP_CLOSE))
    assert parse_close(sent_frames(conn)[0][1])[0] == 1002
    assert conn.hang_up


def test_a_server_close_waits_for_the_client_s_then_hangs_up() -> None:
    conn = ServerConnection(LIMIT)
    assert conn.close(4000, "you left the room")
    assert not conn.close(4008, "twice")  # one close frame only
    assert sent_frames(conn) == [(OP_CLOSE, close_frame(4000, "you left the room")[2:])]
    # after the close frame nothing may be sent, texts are not handled, pings not answered
    assert not conn.send(b"an event")
    assert conn.receive_data(client_frame(b"still talking")) == []
    conn.receive_data(client_frame(b"", OP_PING))
    assert conn.data_to_send() == b""
    assert not conn.hang_up
    conn.receive_data(client_frame((4000).to_bytes(2, "big"), OP_CLOSE))
    assert conn.hang_up
    assert conn.data_to_send() == b""  # no second close frame


def test_a_violation_fails_the_connection_after_what_came_before_it() -> None:
    conn = ServerConnection(LIMIT)
    data = client_frame(b"kept") + client_frame(b"\x00", 0x2)  # then a binary frame
    assert conn.receive_data(data) == ["kept"]
    (opcode, payload), = sent_frames(conn)
    assert opcode == OP_CLOSE
    assert parse_close(payload)[0] == 1003
    assert (conn.failed, conn.half_close, conn.hang_up) == (True, True, False)
    assert conn.receive_data(client_frame(b"more")) == []


def test_invalid_utf8_and_oversized_messages_close_with_their_codes() -> None:
    for data, code in (
        (client_frame(b"\xff\xfe"), 1007),
        (client_frame(b"x" * (LIMIT + 1)), 1009),
        (client_frame(b"x", masked=False), 1002),
    ):
        conn = ServerConnection(LIMIT)
        conn.receive_data(data)
        assert parse_close(sent_frames(conn)[0][1])[0] == code


def test_the_heartbeat_drops_a_silent_client_unless_excused() -> None:
    conn = ServerConnection(LIMIT)
    assert conn.ping()
    assert sent_frames(conn) == [(OP_PING, b"")]
    # nothing came since: gone
    assert not conn.ping()
    assert conn.data_to_send() == b""
    # unless it is not being read (its messages wait to be stored)
    assert conn.ping(excused=True)
    # a pong (or anything) shows it is there
    conn.receive_data(client_frame(b"", OP_PONG))
    assert conn.ping()


def test_what_is_sent_goes_out_in_order_once() -> None:
    conn = ServerConnection(LIMIT)
    conn.send(b"first")
    conn.receive_data(client_frame(b"p", OP_PING))
    conn.send(b"third")
    assert conn.data_to_send() == b"first" + control_frame(OP_PONG, b"p") + b"third"
    assert conn.data_to_send() == b""


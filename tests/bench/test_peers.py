"""The peers of `chatroom bench --compare` work: each broadcasts every message to every
subscriber under a short run, and stops cleanly on SIGTERM.

No timing is asserted: speed is for the benchmark to print, not for tests to judge.
"""

from __future__ import annotations

import pytest
from bench.compare import PEERS, run_peer
from bench.peers.floor import FloorProtocol, server_frame, unmask

from chatroom.bench.run import Load
from chatroom.bench.wire import mask_frame


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PEERS))
async def test_a_short_run_on_each_peer_counts_every_delivery(name: str) -> None:
    load = Load(subscribers=50, rate=20, duration=1.5, processes=1, drain=1.0)
    result = await run_peer(load, name, command="test")
    sent = int(load.rate * load.duration)
    assert (result.server, result.technique) == (name, "websocket")
    assert result.sent == sent
    assert result.connect_failures == 0
    assert result.deliveries == load.subscribers * sent
    assert (result.lost, result.duplicated, result.out_of_order) == (0, 0, 0)
    # /proc accounting sees the peer (the publishing window alone may be under a tick)
    assert result.extra["server_cpu_total_s"] > 0
    assert result.cpu_us_per_delivery is None or result.cpu_us_per_delivery > 0
    assert result.extra["exit_code"] == 0  # SIGTERM ends it cleanly


def test_every_peer_binds_loopback_and_takes_a_port() -> None:
    for peer in PEERS.values():
        argv = peer.argv(12345)
        assert argv[-2:] == ["--port", "12345"]
        assert peer.client_technique in ("websocket", "socketio")
        assert peer.frame_kind in ("text", "json", "socketio")


class _Transport:
    """Enough of a transport for FloorProtocol: records what is written."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def test_floor_upgrades_then_broadcasts_one_frame_to_every_client() -> None:
    clients: set[FloorProtocol] = set()
    transports = [_Transport(), _Transport()]
    protocols = [FloorProtocol(clients) for _ in transports]
    request = (
        b"GET /any/path HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    for protocol, transport in zip(protocols, transports, strict=True):
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.data_received(request)
        # RFC 6455's own example key and answer
        assert transport.written[0].startswith(b"HTTP/1.1 101 ")
        assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in transport.written[0]
    frame = mask_frame(b"hello")
    # a frame split across reads, then a ping
    protocols[0].data_received(frame[:3])
    protocols[0].data_received(frame[3:] + mask_frame(b"p", opcode=9))
    assert transports[0].written[1:] == [server_frame(b"hello"), server_frame(b"p", opcode=10)]
    assert transports[1].written[1:] == [server_frame(b"hello")]
    # close: echoed, and the connection ends
    protocols[1].data_received(mask_frame(b"\x03\xe8", opcode=8))
    assert transports[1].written[-1] == server_frame(b"\x03\xe8", opcode=8)
    assert transports[1].closed


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 100, 125, 126, 127, 128, 1000, 65535, 65536])
def test_client_frames_unmask_to_their_payload(n: int) -> None:
    payload = bytes(i % 251 for i in range(n))
    frame = mask_frame(payload)
    head = 2 if n < 126 else 4 if n < 1 << 16 else 10
    assert unmask(frame[head : head + 4], frame[head + 4 :]) == payload
    assert server_frame(payload)[head:] == payload

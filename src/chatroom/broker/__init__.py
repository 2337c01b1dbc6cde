"""The broker: rooms, publish, subscribe from a cursor, presence; over a Backend."""

from chatroom.broker.backend import Backend, BackendUnavailable, Draft, Page, Stored
from chatroom.broker.broker import (
    Broker,
    Delivery,
    Fanout,
    Framing,
    Reset,
    Sink,
    SlowConsumer,
    Subscription,
)
from chatroom.broker.registry import open_backend

__all__ = [
    "Backend",
    "BackendUnavailable",
    "Broker",
    "Delivery",
    "Draft",
    "Fanout",
    "Framing",
    "Page",
    "Reset",
    "Sink",
    "SlowConsumer",
    "Stored",
    "Subscription",
    "open_backend",
]

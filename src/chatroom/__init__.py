"""chatroom: a real-time chat server (Active Refresh, Long Polling, WebSocket, SSE)."""

__all__ = ["__version__"]

__version__ = "0.1.0"

"""Many `chatroom serve` processes sharing one Redis, tested over real sockets."""

"""Settings: one frozen object, each field declared once with its flag, variable and help.

`chatroom serve` derives its flags from these fields (`--max-body`, environment
`CHATROOM_MAX_BODY`), and the `--workers` supervisor derives each worker's command
line from them: a new setting is one field here, nothing else.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import socket
import stat
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from chatroom.broker.registry import DEFAULT_BACKEND

__all__ = [
    "MIN_SECRET",
    "SecretError",
    "Settings",
    "default_allowed_hosts",
    "load_secret",
    "setting",
]

# Shortest cookie-signing secret accepted, in bytes.
MIN_SECRET = 32


def setting(
    default: Any,
    help: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    flag: str | None = None,
    env: str | None = None,
    cli: bool = True,
) -> Any:
    """A Settings field: its default, its one-line help, and the smallest and largest
    values allowed.

    `flag` and `env` override the names derived from the field's (`max_body` ->
    `--max-body`, `CHATROOM_MAX_BODY`); a tuple field's flag is repeatable and its
    variable comma-separated.
    """
    meta = {
        "help": help, "minimum": minimum, "maximum": maximum, "flag": flag, "env": env,
        "cli": cli,
    }
    return field(default=default, metadata=meta)


def _random_secret() -> bytes:
    return secrets.token_hex(32).encode()


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = setting("127.0.0.1", "address to bind")
    port: int = setting(9000, "port to listen on (0: any free port)", minimum=0)
    backend: str = setting(
        DEFAULT_BACKEND, "where history lives: sqlite:///path, memory:// or redis://host:port/db"
    )
    # Signs session cookies; every node of one chat must share it. Loaded by the
    # command line from --secret or --secret-file (see load_secret), never a plain flag.
    secret: bytes = field(default_factory=_random_secret, repr=False, metadata={"cli": False})
    # Earlier secrets: cookies they signed still verify (rotation); the newest signs.
    old_secrets: tuple[bytes, ...] = field(default=(), repr=False, metadata={"cli": False})
    session_max_age: float = setting(
        30 * 24 * 3600.0, "seconds a session cookie stays valid after it was issued", minimum=60
    )
    retention: int = setting(10_000, "events kept per room", minimum=1)
    max_pending: int = setting(
        1024, "events a subscriber may have waiting before it is cut off as too slow", minimum=1
    )
    max_unsent: int = setting(
        1 << 20,
        "bytes a streaming client may have unsent in this process before it is cut off",
        minimum=1024,
    )
    socket_send_buffer: int = setting(
        64 * 1024,
        "kernel send buffer of each streaming socket, in bytes (bounds what a client that "
        "stops reading holds in the kernel; 0 keeps the system's)",
        minimum=0,
    )
    rate_limit: float = setting(5.0, "messages a second one session may say", minimum=0.001)
    rate_burst: float = setting(10.0, "messages one session may say at once", minimum=1)
    address_rate_limit: float = setting(
        20.0, "messages a second all sessions of one client address may say", minimum=0.001
    )
    address_rate_burst: float = setting(
        40.0, "messages all sessions of one client address may say at once", minimum=1
    )
    demo_rate_limit: float = setting(
        1.0, "nicknames a second one client address may claim (GET /demo)", minimum=0.001
    )
    demo_rate_burst: float = setting(
        20.0, "nicknames one client address may claim at once", minimum=1
    )
    room_rate_limit: float = setting(
        0.05, "new rooms a second one client address may open", minimum=0.0001
    )
    room_rate_burst: float = setting(
        10.0, "new rooms one client address may open at once", minimum=1
    )
    room_idle: float = setting(
        3600.0, "seconds an empty room stays listed after its last event", minimum=0
    )
    max_connections: int = setting(
        10_000, "open streaming connections (WebSocket, SSE, parked long polls)", minimum=1
    )
    max_connections_per_address: int = setting(
        256, "open connections from one client address", minimum=1
    )
    max_connections_per_session: int = setting(
        32, "open streaming connections of one session", minimum=1
    )
    max_rooms_per_connection: int = setting(
        32,
        "rooms one streaming connection may follow (follow=R:C, repeated: the tabs of one "
        "browser share a connection; at most 48, so that the URL stays under 8 KB)",
        minimum=1,
        maximum=48,
    )
    fd_reserve: int = setting(
        64,
        "file descriptors kept free for health checks, the API and pages when the "
        "streaming connections fill the process's limit",
        minimum=0,
    )
    header_timeout: float = setting(
        10.0, "seconds a new connection has to send its request headers", minimum=0.1
    )
    keepalive_timeout: float = setting(
        60.0, "seconds an idle keep-alive connection is kept open", minimum=0.1
    )
    max_body: int = setting(
        16 * 1024, "largest request body and WebSocket message, in bytes", minimum=64
    )
    longpoll_timeout: float = setting(
        25.0, "seconds a long poll waits for news before answering []", minimum=0.1
    )
    sse_heartbeat: float = setting(
        15.0, "seconds between SSE heartbeat comments", minimum=0.1
    )
    ws_heartbeat: float = setting(
        20.0,
        "seconds between WebSocket pings; a socket that answered nothing since the last "
        "is dropped",
        minimum=0.1,
    )
    presence_ttl: float = setting(
        30.0, "seconds a poller stays present after its last request", minimum=0.1
    )
    allowed_origins: tuple[str, ...] = setting(
        (),
        "another origin (scheme://host[:port]) allowed to open sockets and POST",
        flag="--allowed-origin",
    )
    allowed_hosts: tuple[str, ...] = setting(
        (),
        "a Host name this server answers to ('*': any); default: the bound address's "
        "names, and localhost on loopback",
        flag="--allowed-host",
    )
    trusted_proxies: tuple[str, ...] = setting(
        (),
        "a proxy address or network whose X-Forwarded-For, -Proto and -Host are believed",
        flag="--trusted-proxy",
    )
    secure_cookies: bool = setting(
        False, "mark the session cookie Secure and send HSTS (serve behind HTTPS)"
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            minimum, maximum = f.metadata.get("minimum"), f.metadata.get("maximum")
            value = getattr(self, f.name)
            flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            if minimum is not None and value < minimum:
                raise ValueError(f"{flag} must be at least {minimum:g}, not {value:g}")
            if maximum is not None and value > maximum:
                raise ValueError(f"{flag} must be at most {maximum:g}, not {value:g}")
        for secret in (self.secret, *self.old_secrets):
            if len(secret) < MIN_SECRET:
                raise ValueError(
                    f"the session secret is {len(secret)} bytes; at least {MIN_SECRET} are "
                    "needed: give --secret a long random value, or remove the secret file "
                    "to have one generated"
                )
        for network in self.trusted_proxies:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(
                    f"--trusted-proxy {network!r} is not an IP address or network"
                ) from None

    def hosts(self) -> frozenset[str]:
        """The Host names this server answers to (lower case, IPv6 in brackets)."""
        return frozenset(h.lower() for h in self.allowed_hosts) or default_allowed_hosts(
            self.host
        )


def _bracket(name: str) -> str:
    return f"[{name}]" if ":" in name else name


def default_allowed_hosts(bound: str) -> frozenset[str]:
    """The names of the bound address, and `localhost` on loopback.

    A wildcard address (0.0.0.0, ::) answers to this machine's name and addresses.
    """
    names = {_bracket(bound.lower())}
    try:
        address = ipaddress.ip_address(bound)
    except ValueError:
        # a name: it, and the addresses it resolves to
        try:
            infos = socket.getaddrinfo(bound, None)
        except OSError:
            infos = []
        names.update(_bracket(str(info[4][0])) for info in infos)
        address = None
    if address is not None and address.is_loopback:
        names.update({"localhost", "127.0.0.1", "[::1]"})
    if address is not None and address.is_unspecified:
        names.update({"localhost", "127.0.0.1", "[::1]"})
        hostname = socket.gethostname()
        names.update({hostname.lower(), socket.getfqdn().lower()})
        try:
            infos = socket.getaddrinfo(hostname, None)
        except OSError:
            infos = []
        names.update(_bracket(str(info[4][0])) for info in infos)
    return frozenset(names)


class SecretError(Exception):
    """The secret cannot be had: the message is one line saying why and how to fix it."""


def load_secret(value: bytes | None, path: str | None) -> tuple[bytes, list[str]]:
    """The cookie secret, and warnings to log.

    Given outright, it is used as it is; else it is read from `path`, or generated
    there (atomically: a temp file of mode 0600, fsync, rename) when the file does not
    exist. Raises SecretError, with a one-line reason, for a secret under MIN_SECRET
    bytes or a file that cannot be read or written.
    """
    warnings: list[str] = []
    if value:
        secret = value.strip()
        if len(secret) < MIN_SECRET:
            raise SecretError(
                f"--secret (or CHATROOM_SECRET) is {len(secret)} bytes; at least "
                f"{MIN_SECRET} are needed: use e.g. `python3 -c 'import secrets; "
                "print(secrets.token_hex(32))'`"
            )
        return secret, warnings
    if not path:
        return _random_secret(), warnings
    file = Path(path)
    try:
        info = file.stat()
    except FileNotFoundError:
        return _write_secret(file), warnings
    except OSError as exc:
        raise SecretError(f"cannot read the secret file {path}: {exc.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise SecretError(
            f"the secret file {path} is a directory: give --secret-file a file's path"
        )
    try:
        secret = file.read_bytes().strip()
    except OSError as exc:
        raise SecretError(f"cannot read the secret file {path}: {exc.strerror}") from None
    if len(secret) < MIN_SECRET:
        raise SecretError(
            f"the secret file {path} holds {len(secret)} bytes; at least {MIN_SECRET} are "
            "needed: delete it to have a new one generated, or write a long random value in it"
        )
    if info.st_mode & 0o077:
        warnings.append(
            f"the secret file {path} can be read by other users (mode "
            f"{stat.S_IMODE(info.st_mode):o}): chmod 600 {path}"
        )
    return secret, warnings


def _write_secret(file: Path) -> bytes:
    token = _random_secret()
    directory = file.parent
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{file.name}.", dir=directory)
    except OSError as exc:
        raise SecretError(
            f"cannot create the secret file {file} in {directory}: {exc.strerror}"
        ) from None
    try:
        try:
            # mkstemp makes it 0600 already; say so, whatever the umask
            os.fchmod(fd, 0o600)
            os.write(fd, token)
            os.fsync(fd)
        finally:
            os.close(fd)
        # link, not rename: if another process made the file meanwhile, keep its secret
        try:
            os.link(temp, file)
        except FileExistsError:
            secret, _ = load_secret(None, str(file))
            return secret
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise SecretError(f"cannot write the secret file {file}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)
    return token


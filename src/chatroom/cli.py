"""`chatroom serve`: flags, each with a CHATROOM_* environment variable as its default."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence

from aiohttp import web

from chatroom.app import create_app
from chatroom.broker.registry import DEFAULT_BACKEND, is_shared
from chatroom.config import Settings, load_secret

__all__ = ["build_parser", "main", "serve", "settings_from"]

log = logging.getLogger("chatroom")

# How long a graceful stop may take before open connections are dropped.
SHUTDOWN_TIMEOUT = 4.0


def build_parser(env: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    def default(name: str, fallback: str) -> str:
        return env.get(f"CHATROOM_{name}") or fallback

    parser = argparse.ArgumentParser(prog="chatroom", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the chat server")
    serve_cmd.add_argument(
        "--host", default=default("HOST", "127.0.0.1"), help="address to bind (CHATROOM_HOST)"
    )
    serve_cmd.add_argument(
        "--port", type=int, default=int(default("PORT", "9000")), help="port (CHATROOM_PORT)"
    )
    serve_cmd.add_argument(
        "--backend",
        default=default("BACKEND", DEFAULT_BACKEND),
        help="sqlite:///path (default), memory:// or redis://host:port/db (CHATROOM_BACKEND)",
    )
    serve_cmd.add_argument(
        "--secret",
        default=default("SECRET", ""),
        help="cookie signing secret; every node of one chat must share it (CHATROOM_SECRET)",
    )
    serve_cmd.add_argument(
        "--secret-file",
        default=default("SECRET_FILE", ".chatroom-secret"),
        help="where the secret is kept when --secret is not given (CHATROOM_SECRET_FILE)",
    )
    serve_cmd.add_argument(
        "--retention",
        type=int,
        default=int(default("RETENTION", "10000")),
        help="events kept per room (CHATROOM_RETENTION)",
    )
    serve_cmd.add_argument(
        "--allowed-origin",
        action="append",
        default=[o for o in default("ALLOWED_ORIGINS", "").split(",") if o],
        help="another origin allowed to open sockets and POST (CHATROOM_ALLOWED_ORIGINS)",
    )
    serve_cmd.add_argument(
        "--secure-cookies",
        action="store_true",
        default=default("SECURE_COOKIES", "") in ("1", "true", "yes"),
        help="mark the session cookie Secure, behind HTTPS (CHATROOM_SECURE_COOKIES)",
    )
    serve_cmd.add_argument(
        "--workers",
        type=int,
        default=int(default("WORKERS", "1")),
        help="processes serving one port (SO_REUSEPORT); needs a shared backend such as "
        "redis:// (CHATROOM_WORKERS)",
    )
    serve_cmd.add_argument(
        "--rate-limit",
        type=float,
        default=float(default("RATE_LIMIT", "5")),
        help="messages a second one session may say (CHATROOM_RATE_LIMIT)",
    )
    serve_cmd.add_argument(
        "--rate-burst",
        type=float,
        default=float(default("RATE_BURST", "10")),
        help="messages one session may say at once (CHATROOM_RATE_BURST)",
    )
    # set by the --workers supervisor for each worker it starts
    serve_cmd.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve_cmd.add_argument(
        "--log-level", default=default("LOG_LEVEL", "INFO"), help="(CHATROOM_LOG_LEVEL)"
    )
    bench_cmd = commands.add_parser(
        "bench", help="measure fan-out: deliveries/s, latency, CPU per delivery"
    )
    from chatroom.bench.run import add_arguments

    add_arguments(bench_cmd)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    if args.retention < 1:
        raise ValueError("--retention must be at least 1")
    if args.rate_limit <= 0 or args.rate_burst < 1:
        raise ValueError("--rate-limit must be above 0 and --rate-burst at least 1")
    return Settings(
        host=args.host,
        port=args.port,
        backend=args.backend,
        secret=load_secret(args.secret, args.secret_file),
        retention=args.retention,
        allowed_origins=tuple(args.allowed_origin),
        secure_cookies=args.secure_cookies,
        rate=args.rate_limit,
        burst=args.rate_burst,
    )


async def serve(settings: Settings, reuse_port: bool = False) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully within SHUTDOWN_TIMEOUT seconds."""
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port or None)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise SystemExit(
            f"chatroom: cannot listen on {settings.host}:{settings.port}: {exc}"
        ) from None
    log.info(
        "chatroom serving on http://%s:%d (pid %d)",
        settings.host if ":" not in settings.host else f"[{settings.host}]",
        settings.port,
        os.getpid(),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("chatroom stopping: closing connections")
    await runner.cleanup()
    log.info("chatroom stopped")


def _loop_factory() -> type[asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return None
    return uvloop.Loop


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )


def _run_one(settings: Settings, reuse_port: bool, log_level: str) -> None:
    """One serving process (the only one, or a worker started by _run_workers)."""
    _setup_logging(log_level)
    if reuse_port:
        # The supervisor forwards SIGTERM; a terminal's Ctrl-C reaches it, not us twice.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(settings, reuse_port=reuse_port))


def _run_workers(settings: Settings, workers: int, log_level: str) -> int:
    """Start `workers` processes on one port and supervise them until SIGTERM/SIGINT.

    Each worker is `chatroom serve` with SO_REUSEPORT: the kernel spreads connections
    over them. A worker that dies is started again.
    """
    import subprocess
    import time

    argv = [
        sys.executable, "-m", "chatroom", "serve", "--reuse-port",
        "--host", settings.host, "--port", str(settings.port),
        "--backend", settings.backend, "--retention", str(settings.retention),
        "--log-level", log_level,
        "--rate-limit", str(settings.rate), "--rate-burst", str(settings.burst),
    ]
    for origin in settings.allowed_origins:
        argv += ["--allowed-origin", origin]
    if settings.secure_cookies:
        argv.append("--secure-cookies")
    # Every worker must sign cookies with the same secret.
    env = {**os.environ, "CHATROOM_SECRET": settings.secret.decode("latin-1")}
    stopping = False

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, env=env)

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    procs = [start() for _ in range(workers)]
    log.info("chatroom supervising %d workers on port %d", workers, settings.port)
    while not stopping:
        time.sleep(0.2)
        for i, proc in enumerate(procs):
            if proc.poll() is not None and not stopping:
                log.error("worker %d exited with %s: starting another", proc.pid, proc.returncode)
                time.sleep(1.0)
                procs[i] = start()
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + SHUTDOWN_TIMEOUT + 1
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log.info("chatroom stopped: all workers exited")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(str(getattr(args, "log_level", "INFO")))
    if args.command == "bench":
        from chatroom.bench.run import main as bench_main

        return bench_main(args)
    if args.command == "serve":
        try:
            settings = settings_from(args)
            if args.workers < 1:
                raise ValueError("--workers must be at least 1")
            if args.workers > 1:
                if not is_shared(settings.backend):
                    raise ValueError(
                        f"--workers {args.workers} needs a backend every process can share, "
                        f"such as redis://127.0.0.1:6379/0; {settings.backend} lives in one "
                        "process, so the chat would split into separate rooms"
                    )
                return _run_workers(settings, args.workers, str(args.log_level))
            _run_one(settings, args.reuse_port, str(args.log_level))
        except ValueError as exc:
            print(f"chatroom: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

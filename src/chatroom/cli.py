"""The `chatroom` command: `serve` runs the chat server, `bench` measures it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import Field, fields
from typing import Any

from chatroom import __version__
from chatroom.app import create_app
from chatroom.broker.registry import is_shared
from chatroom.config import SecretError, Settings, load_secret
from chatroom.web.server import GuardedRunner, listen

__all__ = ["build_parser", "main", "serve", "settings_from", "worker_argv"]

log = logging.getLogger("chatroom")

# How long a graceful stop may take before open connections are dropped.
SHUTDOWN_TIMEOUT = 4.0


def _flag(f: Field[Any]) -> str:
    return str(f.metadata.get("flag") or "--" + f.name.replace("_", "-"))


def _env(f: Field[Any]) -> str:
    return str(f.metadata.get("env") or "CHATROOM_" + f.name.upper())


def _kind(f: Field[Any]) -> type[Any]:
    """The type of a setting's values: that of its default."""
    default: Any = f.default
    return type(default)


def _settings_fields() -> list[Field[Any]]:
    return [f for f in fields(Settings) if f.metadata.get("cli", True)]


def _from_env(f: Field[Any], raw: str) -> Any:
    """A setting's value from its environment variable; ValueError names the variable."""
    kind = _kind(f)
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered not in _BOOLEANS:
                raise ValueError(raw)
            return _BOOLEANS[lowered]
        if kind is tuple:
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        return kind(raw)
    except ValueError:
        raise ValueError(f"{_env(f)}={raw!r} is not a valid {kind.__name__}") from None


_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True,
             "0": False, "false": False, "no": False, "off": False, "": False}


def build_parser(env: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    """`chatroom serve` and `chatroom bench`; serve's flags come from the Settings fields."""
    parser = argparse.ArgumentParser(
        prog="chatroom",
        description="A real-time chat server: Active Refresh, Long Polling, WebSocket and "
        "Server-Sent Events in one room.",
    )
    parser.add_argument("--version", action="version", version=f"chatroom {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser(
        "serve",
        help="run the chat server",
        description="Run the chat server. Each flag's environment variable (shown in "
        "brackets) is its default.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in _settings_fields():
        default = f.default
        raw = env.get(_env(f))
        if raw is not None:
            default = _from_env(f, raw)
        help_text = f"{f.metadata['help']} [{_env(f)}]"
        kind = _kind(f)
        if kind is bool:
            serve_cmd.add_argument(
                _flag(f), dest=f.name, action=argparse.BooleanOptionalAction,
                default=default, help=help_text,
            )
        elif kind is tuple:
            serve_cmd.add_argument(
                _flag(f), dest=f.name, action="append", default=None,
                help=help_text + " (repeatable)",
            )
            serve_cmd.set_defaults(**{f"{f.name}_env": default})
        else:
            serve_cmd.add_argument(
                _flag(f), dest=f.name, type=kind, default=default, metavar=f.name.upper(),
                help=help_text,
            )
    serve_cmd.add_argument(
        "--secret", default=None,
        help="cookie signing secret, at least 32 bytes; every node of one chat must share "
        "it [CHATROOM_SECRET] (default: read from --secret-file)",
    )
    serve_cmd.add_argument(
        "--secret-file", default=env.get("CHATROOM_SECRET_FILE", ".chatroom-secret"),
        help="where the secret is kept, generated on first start (mode 600) "
        "[CHATROOM_SECRET_FILE]",
    )
    serve_cmd.add_argument(
        "--old-secret", action="append", default=None,
        help="an earlier secret: cookies it signed still verify, so secrets can be rotated "
        "(repeatable) [CHATROOM_OLD_SECRETS, comma-separated]",
    )
    serve_cmd.add_argument(
        "--workers", type=int, default=int(env.get("CHATROOM_WORKERS") or 1),
        help="processes serving one port (SO_REUSEPORT); needs a shared backend such as "
        "redis:// [CHATROOM_WORKERS]",
    )
    serve_cmd.add_argument(
        "--log-level", default=env.get("CHATROOM_LOG_LEVEL") or "INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper,
        help="one line per start, stop and error [CHATROOM_LOG_LEVEL]",
    )
    # set by the --workers supervisor for each worker it starts
    serve_cmd.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    # its flags are its own parser's (chatroom.bench.run), read only when it runs: serving
    # imports nothing of the benchmark
    commands.add_parser(
        "bench", add_help=False,
        help="measure fan-out: deliveries/s, latency, CPU per delivery (chatroom bench -h)",
    )
    return parser


def settings_from(
    args: argparse.Namespace, env: Mapping[str, str] = os.environ
) -> tuple[Settings, list[str]]:
    """Settings from parsed flags, and warnings to log.

    Raises ValueError (or SecretError) with a one-line reason for a value out of range.
    """
    values: dict[str, Any] = {}
    for f in _settings_fields():
        value = getattr(args, f.name)
        if _kind(f) is tuple:
            value = tuple(value) if value is not None else getattr(args, f"{f.name}_env")
        values[f.name] = value
    given = args.secret if args.secret is not None else env.get("CHATROOM_SECRET")
    secret, warnings = load_secret(
        os.fsencode(given) if given else None, args.secret_file
    )
    old = args.old_secret
    if old is None:
        old = [s for s in env.get("CHATROOM_OLD_SECRETS", "").split(",") if s]
    return Settings(
        secret=secret, old_secrets=tuple(os.fsencode(s).strip() for s in old), **values
    ), warnings


def worker_argv(settings: Settings, log_level: str) -> list[str]:
    """A worker's `chatroom serve` command line: every setting that is not its default.

    The secrets are not on it (a command line is visible to every user): they go in the
    environment.
    """
    argv = [sys.executable, "-m", "chatroom", "serve", "--reuse-port", "--log-level", log_level]
    for f in _settings_fields():
        value = getattr(settings, f.name)
        kind = _kind(f)
        if kind is tuple:
            for item in value:
                argv += [_flag(f), item]
        elif kind is bool:
            argv.append(_flag(f) if value else "--no-" + _flag(f)[2:])
        else:
            argv += [_flag(f), str(value)]
    return argv


def worker_env(settings: Settings) -> dict[bytes, bytes]:
    env = {k: v for k, v in os.environb.items() if not k.startswith(b"CHATROOM_")}
    env[b"CHATROOM_SECRET"] = settings.secret
    if settings.old_secrets:
        env[b"CHATROOM_OLD_SECRETS"] = b",".join(settings.old_secrets)
    return env


async def serve(settings: Settings, reuse_port: bool = False) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully within SHUTDOWN_TIMEOUT seconds."""
    app = create_app(settings)
    runner = GuardedRunner(app, settings, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        await listen(runner, settings.host, settings.port, reuse_port)
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

    argv = worker_argv(settings, log_level)
    # Every worker must sign cookies with the same secret.
    env = worker_env(settings)
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from chatroom.bench.run import main as bench_main

        _setup_logging("WARNING")
        return bench_main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except ValueError as exc:
        # a CHATROOM_* variable that is not a valid value
        print(f"chatroom: {exc}", file=sys.stderr)
        return 2
    _setup_logging(str(getattr(args, "log_level", "INFO")))
    if args.command == "serve":
        try:
            settings, warnings = settings_from(args)
            for warning in warnings:
                log.warning("%s", warning)
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
        except (ValueError, SecretError) as exc:
            print(f"chatroom: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

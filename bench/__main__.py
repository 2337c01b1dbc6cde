"""python -m bench: `chatroom bench`'s load, beside the peer servers, swept, plotted.

Run from the repository's root. Takes every flag of `chatroom bench`, and:
--compare [peers]  the same load on the peer servers of bench/peers/
--sweep            rising rates per server until p99 passes --p99-limit
--plot FILE.png    a picture of the runs
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import tempfile
from collections.abc import Sequence

from bench.compare import PEERS, run_peer
from bench.sweep import first_failure, knee, knee_table, sweep
from chatroom.bench.run import (
    Load,
    Result,
    Runner,
    build_parser,
    chatroom_failed,
    load_of,
    markdown,
    measure_all,
    report,
)


def _parser() -> argparse.ArgumentParser:
    parser = build_parser(prog="python -m bench")
    parser.add_argument("--compare", nargs="?", const="all", default="",
                        help="also run the peer servers with the same load: 'all' or a "
                        "comma-separated list of " + ", ".join(PEERS))
    parser.add_argument("--sweep", action="store_true",
                        help="stress to the knee: rising publish rates for each server "
                        "(--rate ignored) until p99 passes --p99-limit or anything is lost")
    parser.add_argument("--sweep-rates", default="",
                        help="comma-separated msg/s for --sweep (default: a 1.6x ladder "
                        "from about 5,000 deliveries/s)")
    parser.add_argument("--p99-limit", type=float, default=100.0, help="ms, for --sweep")
    parser.add_argument("--max-steps", type=int, default=8, help="steps per --sweep")
    parser.add_argument("--plot", default="", metavar="FILE",
                        help="write a PNG of the results (needs bench/requirements.txt)")
    return parser


def _peers(spec: str) -> list[str]:
    if not spec:
        return []
    names = list(PEERS) if spec == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise SystemExit(f"unknown peer(s): {', '.join(unknown)}; peers: {', '.join(PEERS)}")
    return names


def _peer_runner(name: str) -> Runner:
    async def run(load: Load, command: str) -> Result:
        return await run_peer(load, name, command)

    return run


def _sweeps(
    args: argparse.Namespace, load: Load, peers: list[str], command: str,
    results: list[Result],
) -> int:
    rates = [float(r) for r in args.sweep_rates.split(",") if r.strip()] or None
    rows: list[tuple[str, int, Result | None, Result | None]] = []

    async def run_all(backend: str) -> None:
        for server in ["chatroom", *peers]:
            steps = await sweep(
                load, server, rates, backend=backend, workers=args.workers,
                command=command, p99_limit_ms=args.p99_limit,
                max_steps=max(1, args.max_steps),
                # each step as it ends: a crash later keeps what was measured
                on_step=lambda r: report(r, args.json),
            )
            results.extend(steps)
            rows.append(
                (server, load.subscribers, knee(steps, args.p99_limit),
                 first_failure(steps, args.p99_limit))
            )

    with tempfile.TemporaryDirectory(prefix="chatroom-bench-") as tmp:
        asyncio.run(run_all(args.backend or f"sqlite:///{tmp}/bench.db"))
    print()
    print(markdown(results))
    print()
    print(knee_table(rows))
    # a failing last step is where a sweep stops, not an error: fail only when chatroom
    # has no knee at all
    return 1 if any(k is None for server, _, k, _ in rows if server == "chatroom") else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    techniques: list[str] = args.technique
    load = load_of(args)
    peers = _peers(args.compare)
    if peers and "websocket" not in techniques:
        raise SystemExit("--compare measures WebSocket: the peers speak nothing else")
    if args.sweep and len(techniques) > 1:
        raise SystemExit("--sweep takes one technique")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit(
                "--plot needs matplotlib: pip install -r bench/requirements.txt"
            ) from None
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    results: list[Result] = []
    if args.sweep:
        status = _sweeps(args, load, peers, command, results)
    else:
        with tempfile.TemporaryDirectory(prefix="chatroom-bench-") as tmp:
            backend = args.backend or f"sqlite:///{tmp}/bench.db"
            results = asyncio.run(
                measure_all(
                    load, techniques, backend, args.workers, max(1, args.runs), command,
                    [(name, _peer_runner(name)) for name in peers],
                )
            )
        for result in results:
            report(result, args.json)
        print()
        print(markdown(results))
        status = 1 if chatroom_failed(results) else 0
    print(f"\nmeasured with: {command}")
    if args.plot:
        from bench.plot import plot

        plot(results, args.plot, p99_limit_ms=args.p99_limit if args.sweep else None)
        print(f"plot: {args.plot}")
    return status


if __name__ == "__main__":
    sys.exit(main())

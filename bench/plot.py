"""A PNG of bench results: latency and server CPU against deliveries per second.

Left: p50 (solid) and p99 (dashed) latency; right: server CPU microseconds per
delivery; both against deliveries per second on a log scale. One colour per server,
one marker per subscriber count. Steps of a sweep (extra["sweep"]) are joined by
lines; other results are single points. Steps that lost, duplicated or reordered
a message, or failed to connect, are crossed out.

matplotlib is imported only here, so `chatroom bench` runs without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from chatroom.bench.run import Result

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["load_results", "main", "plot"]

_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">"]


def _lossy(result: Result) -> bool:
    return bool(
        result.lost or result.duplicated or result.out_of_order or result.connect_failures
    )


def _series(results: Sequence[Result], value: str) -> tuple[list[float], list[float]]:
    """(deliveries/s, value) of the results where both can go on a log axis."""
    xs: list[float] = []
    ys: list[float] = []
    for r in results:
        y = getattr(r, value)
        if r.deliveries_per_s > 0 and y is not None and y > 0:
            xs.append(r.deliveries_per_s)
            ys.append(float(y))
    return xs, ys


def _plain(value: float, _pos: int | None = None) -> str:
    return f"{value:,.0f}" if value >= 1 else f"{value:.2g}"


def _plain_two_five(value: float, _pos: int | None = None) -> str:
    """Minor ticks of a log axis: label only those at 2 and 5 times a power of ten."""
    if value <= 0:
        return ""
    leading = round(value / 10 ** math.floor(math.log10(value) + 1e-9))
    return _plain(value) if leading in (2, 5) else ""


def plot(results: list[Result], path: str, *, p99_limit_ms: float | None = None) -> None:
    """Write a PNG of `results` to `path`; with `p99_limit_ms`, the sweep's limit is drawn."""
    try:
        from matplotlib import figure, layout_engine, lines, ticker
        from matplotlib.backends import backend_agg
    except ImportError as exc:
        raise RuntimeError("plotting needs matplotlib: pip install -e .[bench]") from exc

    if not results:
        raise ValueError("no results to plot")

    groups: dict[tuple[str, int], list[Result]] = {}
    for r in results:
        groups.setdefault((r.server, r.subscribers), []).append(r)
    servers = list(dict.fromkeys(r.server for r in results))
    subscriber_counts = sorted({r.subscribers for r in results})
    palette = [f"C{i % 10}" for i in range(len(servers))]
    colour = dict(zip(servers, palette, strict=True))
    marker = {
        n: _MARKERS[i % len(_MARKERS)] for i, n in enumerate(subscriber_counts)
    }

    # with a caption, a strip at the bottom is kept for it
    commands = list(dict.fromkeys(r.command for r in results if r.command))
    strip = 0.035 * len(commands)
    rect = (0.0, strip, 1.0, 1.0 - strip)
    fig = figure.Figure(figsize=(13, 5.5), layout=layout_engine.ConstrainedLayoutEngine(rect=rect))
    backend_agg.FigureCanvasAgg(fig)
    latency_ax: Axes
    cpu_ax: Axes
    latency_ax, cpu_ax = fig.subplots(1, 2)

    any_lossy = False
    # what went on each log axis
    latency_xs: list[float] = []
    latency_ys: list[float] = []
    cpu_xs: list[float] = []
    for (server, subscribers), group in groups.items():
        group.sort(key=lambda r: r.deliveries_per_s)
        label = f"{server} {subscribers} subs"
        # a sweep is a curve; a lone run is a point
        style = "-" if any(r.extra.get("sweep") for r in group) else "none"
        kw: dict[str, Any] = {
            "color": colour[server], "marker": marker[subscribers], "markersize": 5,
        }
        xs, ys = _series(group, "p50_ms")
        latency_xs += xs
        latency_ys += ys
        if xs:
            latency_ax.plot(xs, ys, linestyle=style, label=label, **kw)
        xs, ys = _series(group, "p99_ms")
        latency_xs += xs
        latency_ys += ys
        if xs:
            latency_ax.plot(
                xs, ys, linestyle="--" if style == "-" else "none", mfc="none",
                **kw,
            )
        xs, ys = _series(group, "cpu_us_per_delivery")
        cpu_xs += xs
        if xs:
            cpu_ax.plot(xs, ys, linestyle=style, label=label, **kw)
        lossy = [r for r in group if _lossy(r)]
        for ax, value in ((latency_ax, "p99_ms"), (cpu_ax, "cpu_us_per_delivery")):
            xs, ys = _series(lossy, value)
            if xs:
                any_lossy = True
                ax.plot(xs, ys, linestyle="none", marker="x", color="red", markersize=10,
                        markeredgewidth=2)

    if p99_limit_ms is not None and p99_limit_ms > 0:
        latency_ys.append(p99_limit_ms)
        latency_ax.axhline(p99_limit_ms, color="grey", linestyle=":", linewidth=1)

    first = results[0]
    fig.suptitle(
        f"chatroom bench: {first.technique}, {first.payload} B messages"
        + (f", {first.duration:g} s per run" if first.duration else "")
    )
    latency_ax.set_title("delivery latency (p50 solid, p99 dashed)")
    latency_ax.set_xlabel("deliveries per second (log)")
    latency_ax.set_ylabel("latency from intended send, ms (log)")
    cpu_ax.set_title("server CPU per delivery (user + system)")
    cpu_ax.set_xlabel("deliveries per second (log)")
    cpu_ax.set_ylabel("CPU microseconds per delivery")
    for ax in (latency_ax, cpu_ax):
        ax.grid(True, which="both", alpha=0.3)
    def plain_axis(axis: Any, values: list[float]) -> None:
        """12,000 rather than 1.2 x 10^4; between decades, as many labels as fit."""
        axis.set_major_formatter(ticker.FuncFormatter(_plain))
        span = max(values) / min(values) if values else 1e9
        minor = (
            _plain if span < 10 else _plain_two_five if span < 30 else lambda _v, _p=None: ""
        )
        axis.set_minor_formatter(ticker.FuncFormatter(minor))

    if latency_xs:
        latency_ax.set_xscale("log")
        latency_ax.set_yscale("log")
        plain_axis(latency_ax.xaxis, latency_xs)
        plain_axis(latency_ax.yaxis, latency_ys)
        handles, _ = latency_ax.get_legend_handles_labels()
        handles += [
            lines.Line2D([], [], color="black", linestyle="-", label="p50"),
            lines.Line2D([], [], color="black", linestyle="--", marker="o", mfc="none",
                   label="p99"),
        ]
        if p99_limit_ms is not None and p99_limit_ms > 0:
            handles.append(lines.Line2D([], [], color="grey", linestyle=":",
                                  label=f"p99 limit {p99_limit_ms:g} ms"))
        if any_lossy:
            handles.append(lines.Line2D([], [], color="red", linestyle="none", marker="x",
                                  markeredgewidth=2, label="lost / dup / reordered"))
        latency_ax.legend(handles=handles, fontsize="x-small", ncol=2)
    else:
        latency_ax.text(0.5, 0.5, "no latency samples", ha="center",
                        transform=latency_ax.transAxes)
    if cpu_xs:
        cpu_ax.set_xscale("log")
        plain_axis(cpu_ax.xaxis, cpu_xs)
        # log too: a peer ten times dearer must not flatten the rest
        cpu_ax.set_yscale("log")
        cpu_ax.yaxis.set_major_formatter(ticker.FuncFormatter(_plain))
        cpu_ax.yaxis.set_minor_formatter(ticker.FuncFormatter(_plain_two_five))
        cpu_ax.legend(fontsize="x-small", ncol=2)
    else:
        cpu_ax.text(0.5, 0.5, "no CPU figures", ha="center", transform=cpu_ax.transAxes)
    if commands:
        fig.text(0.01, 0.01, "measured with: " + "\n".join(commands), fontsize="x-small",
                 color="dimgrey", ha="left", va="bottom")
    fig.savefig(path, format="png", dpi=110)


def load_results(paths: Sequence[str]) -> list[Result]:
    """The Results in `chatroom bench --json` files (one JSON object a line)."""
    import orjson

    results: list[Result] = []
    for path in paths:
        with open(path, "rb") as f:
            results.extend(Result(**orjson.loads(line)) for line in f if line.strip())
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """python -m bench.plot OUT.png RUNS.jsonl [RUNS.jsonl ...]: one plot of
    several `chatroom bench --json` files (e.g. sweeps at 1,000 and 5,000 subscribers)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.plot")
    parser.add_argument("out")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--p99-limit", type=float, default=None)
    args = parser.parse_args(argv)
    plot(load_results(args.runs), args.out, p99_limit_ms=args.p99_limit)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

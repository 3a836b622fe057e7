"""Draw the Grafana dashboards of dashboards/grafana/ from a Prometheus, as PNGs, with matplotlib.

For a machine without Grafana (the README's screenshots come from here): every
panel is queried the way Grafana would query it (variables from their own
``label_values`` queries, ``$__rate_interval`` from the scrape interval) and
drawn where its ``gridPos`` puts it, so the picture is the dashboard's layout
with real data. Time series become lines, stats their last value, bar gauges
horizontal bars. It reads Prometheus and writes PNGs; nothing else.

    pip install matplotlib
    python dashboards/render.py --prometheus http://127.0.0.1:9090 --start -30m --out docs/img

``FRONTDESK_RENDER_DIR=docs/img pytest tests/test_prometheus_live.py`` runs it
against the live test's Prometheus and load (README, "Ops view").
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
from matplotlib.axes import Axes

HERE = Path(__file__).resolve().parent
BACKGROUND, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
COLORS = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0", "#37872d"]
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
LABEL_VALUES = re.compile(r"label_values\((?P<selector>.+),\s*(?P<label>\w+)\s*\)", re.S)


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def get(self, path: str, **params: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}?{urllib.parse.urlencode(params)}", timeout=30) as r:
            body = json.loads(r.read())
        if body["status"] != "success":
            raise RuntimeError(body)
        return body["data"]

    def label_values(self, selector: str, label: str, start: float, end: float) -> list[str]:
        series = self.get("/api/v1/series", **{"match[]": selector, "start": str(start), "end": str(end)})
        return sorted({s[label] for s in series if label in s})


def substitute(expr: str, values: Mapping[str, str]) -> str:
    return VARIABLE.sub(lambda m: values[next(g for g in m.groups() if g)], expr)


def seconds(text: str) -> float:
    """'90' (seconds), '15s', '5m', '1h', or '-30m' (relative to now, for --start)."""
    m = re.fullmatch(r"(-?[\d.]+)([smhd]?)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a time: {text}")
    return float(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]


def duration(s: float) -> str:
    return f"{max(1, round(s))}s"


def variable_values(
    prom: Prometheus, board: Mapping[str, Any], start: float, end: float, scrape: float, given: Mapping[str, str]
) -> dict[str, str]:
    """What Grafana would put in: built-ins for the range, then each variable from its query (or --var)."""
    step = max(scrape, (end - start) / 250)
    values = {
        "__interval": duration(step),
        "__rate_interval": duration(max(step + scrape, 4 * scrape)),
        "__range": duration(end - start),
    }
    for var in board["templating"]["list"]:
        name = var["name"]
        if name in given:
            values[name] = given[name]
        elif var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = LABEL_VALUES.fullmatch(query.strip())
            assert m, query
            found = prom.label_values(substitute(m["selector"], values), m["label"], start, end)
            if not found:
                raise SystemExit(f"variable ${name}: no value in Prometheus ({query})")
            values[name] = found[0] if not var.get("multi") else "|".join(found)
    return values


def legend(fmt: str, labels: Mapping[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), fmt) or "value"


def number(v: str) -> float:
    return float(v.replace("+Inf", "inf").replace("-Inf", "-inf"))


def formatted(value: float, unit: str) -> str:
    if math.isnan(value):
        return "No data"
    if math.isinf(value):
        return "∞"
    if unit == "percentunit":
        return f"{100 * value:.1f} %"
    if unit in ("bool_on_off", "bool_yes_no"):
        return {"bool_on_off": ("Off", "On"), "bool_yes_no": ("No", "Yes")}[unit][bool(value)]
    if unit == "s":
        return f"{value * 1000:.1f} ms" if 0 < value < 1 else f"{value:.1f} s"
    return f"{value:.3g}"


UNIT_AXIS = {
    "percentunit": "%",
    "s": "seconds",
    "cpm": "per minute",
    "reqps": "requests/s",
    "ops": "per second",
    "pps": "packets/s",
    "short": "",
    "bool_on_off": "off / on",
    "bool_yes_no": "no / yes",
}


def style(ax: Axes, title: str) -> None:
    ax.set_facecolor(PANEL)
    ax.set_title(title, color=TEXT, fontsize=8, loc="left")
    ax.tick_params(colors=TEXT, labelsize=6)
    for spine in ax.spines.values():
        spine.set_color(GRID)


def draw_timeseries(ax: Axes, prom: Prometheus, panel: Mapping[str, Any], values: Mapping[str, str], rng: Any) -> None:
    start, end, step = rng
    unit = panel["fieldConfig"]["defaults"]["unit"]
    custom = panel["fieldConfig"]["defaults"].get("custom", {})
    scale = 100 if unit == "percentunit" else 1
    drawstyle = "steps-post" if custom.get("lineInterpolation") == "stepAfter" else "default"
    n = 0
    for target in panel["targets"]:
        expr = substitute(target["expr"], values)
        params = {"query": expr, "start": str(start), "end": str(end), "step": str(step)}
        for series in prom.get("/api/v1/query_range", **params)["result"]:
            xs = [mdates.date2num(datetime.fromtimestamp(float(t))) for t, _ in series["values"]]
            ys = [number(v) * scale for _, v in series["values"]]
            ys = [y if math.isfinite(y) else math.nan for y in ys]
            ax.plot(xs, ys, color=COLORS[n % len(COLORS)], lw=1.2, drawstyle=drawstyle,
                    label=legend(target.get("legendFormat", ""), series["metric"]))  # fmt: skip
            n += 1
    if custom.get("scaleDistribution", {}).get("type") == "log":
        ax.set_yscale("log")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.xaxis.set_major_locator(mticker.MaxNLocator(4))
    ax.grid(color=GRID, lw=0.5)
    ax.set_ylabel(UNIT_AXIS.get(unit, unit), color=TEXT, fontsize=6)
    if n:
        ax.legend(fontsize=5, facecolor=PANEL, edgecolor=GRID, labelcolor=TEXT, loc="upper left")
    else:
        ax.text(0.5, 0.5, "No data", color=TEXT, ha="center", va="center", transform=ax.transAxes)


def instant(
    prom: Prometheus, panel: Mapping[str, Any], values: Mapping[str, str], end: float
) -> list[tuple[str, float]]:
    out = []
    for target in panel["targets"]:
        result = prom.get("/api/v1/query", query=substitute(target["expr"], values), time=str(end))["result"]
        for series in result:
            out.append((legend(target.get("legendFormat", ""), series["metric"]), number(series["value"][1])))
    return out


def draw_stat(ax: Axes, prom: Prometheus, panel: Mapping[str, Any], values: Mapping[str, str], end: float) -> None:
    unit = panel["fieldConfig"]["defaults"]["unit"]
    found = instant(prom, panel, values, end) or [("", math.nan)]
    ax.set_xticks([])
    ax.set_yticks([])
    for i, (name, value) in enumerate(found):
        y = 1 - (i + 0.5) / len(found)
        ax.text(0.5, y, formatted(value, unit), color=COLORS[0], ha="center", va="center", fontsize=16,
                transform=ax.transAxes, weight="bold")  # fmt: skip
        ax.text(0.5, y - 0.28 / len(found), name, color=TEXT, ha="center", va="center", fontsize=6,
                transform=ax.transAxes)  # fmt: skip


def draw_bargauge(ax: Axes, prom: Prometheus, panel: Mapping[str, Any], values: Mapping[str, str], end: float) -> None:
    found = instant(prom, panel, values, end)[:12]
    names = [n for n, _ in found][::-1]
    ax.barh(names, [v for _, v in found][::-1], color=COLORS[0])
    ax.tick_params(axis="y", labelsize=5)
    ax.grid(color=GRID, lw=0.5, axis="x")


def render(
    prom: Prometheus, board: Mapping[str, Any], start: float, end: float, scrape: float, given: Mapping[str, str]
) -> plt.Figure:
    values = variable_values(prom, board, start, end, scrape, given)
    step = max(scrape, (end - start) / 250)
    panels = board["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels) + 1.5  # + the dashboard's title
    unit = 0.3  # inches per grid row; 24 columns across 16 inches, like Grafana's proportions
    fig = plt.figure(figsize=(16, rows * unit), facecolor=BACKGROUND)
    chosen = ", ".join(f"{k}={v}" for k, v in values.items() if not k.startswith("__"))
    fig.text(0.01, 1 - 0.6 / rows, f"{board['title']}   ({chosen})", color=TEXT, fontsize=12, va="center")

    def rect(g: Mapping[str, int], left: float, top: float, bottom: float) -> tuple[float, float, float, float]:
        """Figure coordinates of a grid cell, less room for the y-axis label, the title and the ticks."""
        x0, x1 = g["x"] / 24 + 0.004 + left, (g["x"] + g["w"]) / 24 - 0.006
        y1 = 1 - (g["y"] + 1.5 + top) / rows
        y0 = 1 - (g["y"] + g["h"] + 1.5 - bottom) / rows
        return (x0, y0, x1 - x0, y1 - y0)

    for panel in panels:
        g = panel["gridPos"]
        if panel["type"] == "row":
            fig.text(0.01, 1 - (g["y"] + 2.0) / rows, panel["title"], color=TEXT, fontsize=10, weight="bold")
            continue
        series = panel["type"] == "timeseries"
        left = {"timeseries": 0.025, "bargauge": 0.06}.get(panel["type"], 0.0)
        ax = fig.add_axes(rect(g, left, 0.75, 0.75 if series else 0.2))
        style(ax, panel["title"])
        if panel["type"] == "timeseries":
            draw_timeseries(ax, prom, panel, values, (start, end, step))
        elif panel["type"] == "stat":
            draw_stat(ax, prom, panel, values, end)
        elif panel["type"] == "bargauge":
            draw_bargauge(ax, prom, panel, values, end)
    return fig


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prometheus", required=True, help="Prometheus base URL")
    ap.add_argument("--start", default="-1h", help="unix time, or relative like -30m (default -1h)")
    ap.add_argument("--end", default="0", help="unix time, or 0 for now")
    ap.add_argument("--scrape-interval", type=seconds, default=15.0, help="of the frontdesk job (default 15s)")
    ap.add_argument("--dashboards", type=Path, default=HERE / "grafana", help="folder of dashboard JSON")
    ap.add_argument("--out", type=Path, default=Path("."), help="folder for the PNGs")
    ap.add_argument("--var", action="append", default=[], help="NAME=VALUE for a variable (else from its query)")
    ap.add_argument("--only", action="append", default=[], help="UID of a dashboard to draw (default: all)")
    ap.add_argument("--suffix", default="", help="added to each PNG's name (frontdesk-overview<suffix>.png)")
    args = ap.parse_args(argv)
    matplotlib.use("Agg")  # files only, no display
    now = time.time()
    end = seconds(args.end) or now
    start = seconds(args.start)
    start = now + start if start <= 0 else start
    given = dict(v.split("=", 1) for v in args.var)
    prom = Prometheus(args.prometheus)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in sorted(args.dashboards.glob("*.json")):
        board = json.loads(path.read_text())
        if args.only and board["uid"] not in args.only:
            continue
        fig = render(prom, board, start, end, args.scrape_interval, given)
        out = args.out / f"{path.stem}{args.suffix}.png"
        fig.savefig(out, dpi=110, facecolor=BACKGROUND)
        plt.close(fig)
        print(out)


if __name__ == "__main__":
    main()

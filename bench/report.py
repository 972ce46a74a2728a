"""Results: JSON and Markdown under bench/results/, a chart of the ratios, BENCHMARKS.md.

A run of some benchmarks (`--only`) replaces their sections in the size's results and keeps
the others, each section stamped with when it ran, so one slow benchmark can be rerun alone.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.stats import Row

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
TITLES = {
    "B1": "initial sync vs mbsync and the raw fetch ceiling",
    "B2": "resync (no-op, 10 / 1000 changes) vs mbsync",
    "B3": "API throughput and latency vs gunicorn and a bare WSGI hello",
    "B4": "search latency vs the same SQL in psql",
    "B5": "send throughput vs smtp-source",
    "B6": "memory and idle CPU per account",
}


@dataclass
class Result:
    """One benchmark's rows, the data it ran on, and what a reader needs to know."""

    bench: str
    rows: list[Row]
    corpus: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    details: str = ""  # Markdown: per-query tables and the like
    ran_at: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return any(r.error is not None for r in self.rows)

    def as_dict(self) -> dict:
        return {
            "bench": self.bench,
            "title": TITLES.get(self.bench, ""),
            "ran_at": self.ran_at,
            "seconds": round(self.seconds, 1),
            "corpus": self.corpus,
            "notes": self.notes,
            "details": self.details,
            "rows": [r.as_dict() for r in self.rows],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Result:
        return cls(
            data["bench"],
            [Row.from_dict(r) for r in data["rows"]],
            data.get("corpus", {}),
            data.get("notes", []),
            data.get("details", ""),
            data.get("ran_at", ""),
            data.get("seconds", 0.0),
        )


def _first_line(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def machine() -> dict:
    """Cores, memory and CPU model: what a reader needs to compare a rerun."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    except (OSError, StopIteration):
        kib = 0
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def versions() -> dict:
    """Every server and comparator the suite drives, as each reports itself."""
    from devstack import packages

    bindir = packages.postgres_bindir()
    postgres = str(bindir / "postgres") if bindir else "postgres"
    found = {
        "postgresql": _first_line([postgres, "--version"]),
        "psql": _first_line(["psql", "--version"]),
        "redis": _first_line(["redis-server", "--version"]),
        "dovecot": _first_line(["dovecot", "--version"]),
        "postfix": _first_line(["/usr/sbin/postconf", "-dh", "mail_version"]),
        "mbsync": _first_line(["mbsync", "--version"]),
        "wrk": _first_line(["wrk", "--version"]).replace("  ", " "),
    }
    for module in ("waitress", "gunicorn", "sqlalchemy", "psycopg", "flask"):
        try:
            from importlib.metadata import version

            found[module] = version(module)
        except Exception:
            found[module] = "not installed"
    found["project_commit"] = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    return found


def load(size: str, directory: Path = RESULTS) -> dict:
    path = directory / f"{size}.json"
    if path.is_file():
        return json.loads(path.read_text())
    return {"size": size, "benchmarks": {}}


def save(
    size: str,
    results: list[Result],
    directory: Path = RESULTS,
    summary: Path | None = ROOT / "BENCHMARKS.md",
    with_chart: bool = True,
) -> dict:
    """Merge `results` into <directory>/<size>.json; rewrite the .md, the chart, `summary`."""
    directory.mkdir(parents=True, exist_ok=True)
    data = load(size, directory)
    data["size"] = size
    data["updated_at"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    data["machine"] = machine()
    data["versions"] = versions()
    for result in results:
        data["benchmarks"][result.bench] = result.as_dict()
    data["benchmarks"] = dict(sorted(data["benchmarks"].items()))
    (directory / f"{size}.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    (directory / f"{size}.md").write_text(markdown(data))
    if with_chart:
        chart(data, directory / f"{size}.png")
    if summary is not None:
        update_benchmarks_md(summary, directory)
    return data


def _num(value: float | None) -> str:
    if value is None:
        return ""
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def table(data: dict) -> str:
    """The results table: one line per measurement, ratio and goal side by side."""
    lines = [
        "| id | measurement | project (median, min-max) | comparator | comparator (median) "
        "| ratio (range) | goal | met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for bench in data["benchmarks"].values():
        for raw in bench["rows"]:
            row = Row.from_dict(raw)
            if row.error:
                lines.append(
                    f"| {row.bench} | {row.metric} | **not measured**: {row.error} | | | | "
                    f"{row.goal_text()} | **no** |"
                )
                continue
            p = row.project
            project = f"{_num(p.median)} {row.unit} ({_num(p.low)}-{_num(p.high)})"
            comparator = ""
            if row.comparator is not None:
                comparator = f"{_num(row.comparator.median)} {row.unit}"
            ratio = ""
            if row.ratio is not None:
                low, high = row.ratio_range or (row.ratio, row.ratio)
                ratio = f"{_num(row.ratio)}x ({_num(low)}-{_num(high)})"
            met = {True: "yes", False: "**no**", None: ""}[row.met]
            lines.append(
                f"| {row.bench} | {row.metric} | {project} | {row.comparator_name or ''} | "
                f"{comparator} | {ratio} | {row.goal_text()} | {met} |"
            )
    return "\n".join(lines) + "\n"


def markdown(data: dict) -> str:
    m, v = data["machine"], data["versions"]
    out = [
        f"# Benchmark results ({data['size']})\n",
        f"Updated {data['updated_at']}. Machine: {m['cores']} cores ({m['cpu']}), "
        f"{m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}.\n",
        "Versions: " + "; ".join(f"{k} {val}" for k, val in v.items()) + ".\n",
        table(data),
        "Ratio = project / comparator in the row's unit (for times, lower is better; for "
        "rates, higher). The range pairs the worst and best repetitions of each side.\n",
    ]
    for bench in data["benchmarks"].values():
        out.append(f"## {bench['bench']}: {bench['title']}\n")
        out.append(f"Ran {bench['ran_at']} in {bench['seconds']} s.\n")
        if bench["corpus"]:
            corpus = ", ".join(f"{k}: {val}" for k, val in bench["corpus"].items())
            out.append(f"Data: {corpus}.\n")
        for note in bench["notes"]:
            out.append(f"- {note}")
        if bench["notes"]:
            out.append("")
        if bench.get("details"):
            out.append(bench["details"])
    return "\n".join(out) + "\n"


def chart(data: dict, path: Path) -> None:
    """One panel per benchmark: each ratio with its range and the goal it is held to."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for bench in data["benchmarks"].values():
        rows = [Row.from_dict(r) for r in bench["rows"]]
        rows = [r for r in rows if r.ratio is not None]
        if rows:
            panels.append((bench["bench"], bench["title"], rows))
    if not panels:
        return
    heights = [max(1.2, 0.45 * len(rows) + 0.8) for _, _, rows in panels]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(10, sum(heights)), gridspec_kw={"height_ratios": heights}
    )
    if len(panels) == 1:
        axes = [axes]
    for ax, (bench, title, rows) in zip(axes, panels, strict=True):
        labels = [f"{r.metric} / {r.comparator_name}" for r in rows]
        ratios = [r.ratio for r in rows]
        lows = [r.ratio - (r.ratio_range or (r.ratio, r.ratio))[0] for r in rows]
        highs = [(r.ratio_range or (r.ratio, r.ratio))[1] - r.ratio for r in rows]
        colors = ["#2e7d32" if r.met else "#c62828" if r.met is False else "#546e7a" for r in rows]
        y = range(len(rows))
        ax.barh(list(y), ratios, xerr=[lows, highs], color=colors, alpha=0.85, capsize=3)
        for i, r in enumerate(rows):
            if r.goal is not None and r.goal_on == "ratio":
                ax.plot([r.goal[1]] * 2, [i - 0.4, i + 0.4], color="black", linewidth=2)
        ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_yticks(list(y))
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{bench}: {title}", fontsize=10, loc="left")
    axes[-1].set_xlabel(
        "ratio project / comparator (log scale; black tick: goal; green met, red missed)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"


def update_benchmarks_md(path: Path, directory: Path = RESULTS) -> None:
    """Put the latest tables (quick, and full when there is one) into BENCHMARKS.md."""
    if not path.is_file():
        return
    parts = []
    for size in ("quick", "full"):
        if not (directory / f"{size}.json").is_file():
            continue
        data = load(size, directory)
        m = data["machine"]
        parts.append(
            f"### Latest {size} run\n\n"
            f"Updated {data['updated_at']} on {m['cores']} cores, {m['memory_gib']} GiB "
            f"(details, versions and data sizes: [bench/results/{size}.md]"
            f"(bench/results/{size}.md); chart: [bench/results/{size}.png]"
            f"(bench/results/{size}.png)).\n\n" + table(data)
        )
    text = path.read_text()
    block = BEGIN + "\n" + "\n".join(parts) + END
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text += "\n" + block + "\n"
    path.write_text(text)

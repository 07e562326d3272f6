"""The printed table: medians with min-max per peer, taskq's ratios, versions and settings."""

from __future__ import annotations

from benchmarks.figures import ROWS
from benchmarks.measure import spread

# results[broker][peer] -> one dict of figure values per run
Results = dict[str, dict[str, list[dict[str, float]]]]


def _fmt(value: float, key: str) -> str:
    if key in ("publish", "drain", "results") or key.startswith(("LPUSH", "RPOP", "cpu_")):
        return f"{value:,.0f}"
    if key.startswith(("pss", "rss")):
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(values: list[float], key: str) -> str:
    if not values:
        return "-"
    s = spread(values)
    if len(values) == 1:
        return _fmt(s.median, key)
    return f"{_fmt(s.median, key)} ({_fmt(s.low, key)}-{_fmt(s.high, key)})"


def _values(runs: list[dict[str, float]], key: str) -> list[float]:
    return [run[key] for run in runs if key in run]


def broker_table(broker: str, peers: dict[str, list[dict[str, float]]]) -> list[str]:
    names = list(peers)
    lines = [f"### {broker}", "", "| figure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key, (label, _) in ROWS.items():
        if not any(_values(runs, key) for runs in peers.values()):
            continue
        lines.append(f"| {label} | " + " | ".join(_cell(_values(peers[n], key), key) for n in names) + " |")
    ours_names = [n for n in names if n.startswith("taskq")]  # taskq, taskq-tuned
    others = [n for n in names if n not in ours_names]
    for mine in ours_names if others else []:
        lines += ["", f"{mine} ÷ peer (medians; rates: above 1 is taskq ahead, ms/MiB/s/us: below 1 is):", ""]
        lines += ["| figure | " + " | ".join(others) + " | vs best peer |", "|---" * (len(others) + 2) + "|"]
        lines += _ratio_rows(peers, mine, others)
    return lines


def _ratio_rows(peers: dict[str, list[dict[str, float]]], mine: str, others: list[str]) -> list[str]:
    rows = []
    for key, (label, higher) in ROWS.items():
        values = _values(peers[mine], key)
        if not values:
            continue
        ours = spread(values).median
        theirs = {n: spread(v).median for n in others if (v := _values(peers[n], key))}
        cells = [f"{ours / theirs[n]:.2f}x" if theirs.get(n) else "-" for n in others]
        best = (max if higher else min)(theirs.values()) if theirs else 0.0
        tail = f"{ours / best:.2f}x" if best else "-"
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {tail} |")
    return rows


def render(
    results: Results, info: dict[str, dict[str, dict]], ceiling: dict[str, list[float]], header: str
) -> str:
    lines = [header, ""]
    for broker, peers in results.items():
        lines += [*broker_table(broker, peers), ""]
    if ceiling:
        lines += [
            "### 7. ceiling: redis-benchmark on the same server",
            "",
            "| command | requests/s |",
            "|---|---|",
        ]
        lines += [f"| {k} | {_cell(v, k)} |" for k, v in ceiling.items()] + [""]
    lines += ["### versions and settings", ""]
    for broker, abouts in info.items():
        for name, about in abouts.items():
            lines.append(f"- {broker} / {name} {about['version']}: {about['settings']}")
    return "\n".join(lines) + "\n"

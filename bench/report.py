"""The results: results.json (everything), results.md (the tables) and chart.png (matplotlib)."""

from __future__ import annotations

import json
from pathlib import Path

OTHERS = ("nginx", "haproxy", "twisted-web")  # the ratios: gateway ÷ each of these
#: The gateway variants and, per column of OTHERS, the proxy each is compared with.
COMPARISONS = (("gateway", "", {"nginx": "nginx", "haproxy": "haproxy", "twisted-web": "twisted-web"}),
               ("gateway-w2", ", 2 workers", {"nginx": "nginx-w2"}))


def ratios(results: list[dict]) -> list[dict]:
    """Per scenario: the gateway's requests/s divided by each other proxy's, and p99 ÷ nginx's.

    ``gateway-w2`` (``workers: 2``) is compared with ``nginx-w2`` (``worker_processes 2``) in rows of its own.
    """
    by_key = {(r["scenario"], r["proxy"]): r for r in results}
    rows = []
    for ours, label, columns in COMPARISONS:
        for scenario in dict.fromkeys(r["scenario"] for r in results):
            row = _ratio_row(by_key, scenario, ours, columns)
            if row is not None:
                rows.append(dict(row, scenario=scenario + label))
    return rows


def _ratio_row(by_key: dict, scenario: str, ours: str, columns: dict[str, str]) -> dict | None:
    gateway = by_key.get((scenario, ours))
    if gateway is None or not gateway["rps"]:
        return None
    row = {"scenario": scenario, "gateway_rps": gateway["rps"]}
    for other in OTHERS:
        theirs = by_key.get((scenario, columns.get(other)))
        row[other] = gateway["rps"] / theirs["rps"] if theirs and theirs["rps"] else None
    nginx = by_key.get((scenario, columns["nginx"]))
    row["p99_vs_nginx"] = (gateway["p99_ms"] / nginx["p99_ms"]
                           if nginx and nginx.get("p99_ms") and gateway.get("p99_ms") else None)
    row["cpu_per_request_vs_nginx"] = (gateway["cpu_us_per_request"] / nginx["cpu_us_per_request"]
                                       if nginx and nginx.get("cpu_us_per_request")
                                       and gateway.get("cpu_us_per_request") else None)
    return row


# -- Markdown -----------------------------------------------------------------------

def _number(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _ratio_table(report: dict) -> list[str]:
    rows = [[r["scenario"], _number(r["gateway_rps"]), _ratio(r["nginx"]), _ratio(r["haproxy"]),
             _ratio(r["twisted-web"]), _ratio(r["p99_vs_nginx"]), _ratio(r["cpu_per_request_vs_nginx"])]
            for r in report["ratios"]]
    return _table(["scenario", "gateway req/s", "÷ nginx", "÷ HAProxy", "÷ twisted.web", "p99 ÷ nginx's",
                   "CPU per request ÷ nginx's"], rows)


def _errors(result: dict) -> str:
    text = ", ".join(f"{name} {count}" for name, count in result["errors"].items()) or "0"
    check = result.get("upload_check")
    if check:
        text += f"; upstream read {check['complete']} whole bodies" + ("" if check["ok"] else " (TOO FEW)")
    if "tls" in result:
        text += f"; {result['tls']}"
    return text


def _results_table(report: dict) -> list[str]:
    rows = [[r["scenario"], r["proxy"], _number(r["rps"]), _number(r["mib_per_s"], 0),
             _number(r["p50_ms"], 2), _number(r["p99_ms"], 2), _number(r["cpu_s"], 1),
             _number(r["cpu_percent"], 0, "%"), _number(r["cpu_us_per_request"], 0), _number(r["rss_mib"], 0),
             _number(r.get("rss_growth_mib"), 1), _errors(r)] for r in report["results"]]
    return _table(["scenario", "proxy", "req/s", "MiB/s", "p50 ms", "p99 ms", "CPU s/run", "CPU", "CPU µs/req",
                   "RSS MiB", "RSS growth MiB", "errors, checks"], rows)


def _idle_table(report: dict) -> list[str]:
    rows = [[i["proxy"], _number(i["connections"]), _number(i["open_seconds"], 1),
             _number(i["rss_before_mib"], 1), _number(i["rss_after_mib"], 1),
             _number(i["kib_per_connection"], 2), _number(i["new_request_ms_median"], 2),
             _number(i["new_request_ms_max"], 2), "yes" if i["under_limit"] else "NO",
             f"{i['still_usable']}/{i['tried']}"] for i in report["idle"]]
    return _table(["proxy", "idle connections", "opened in s", "RSS before MiB", "RSS after MiB",
                   "KiB per connection", "new request p50 ms", "max ms", "max < 50 ms",
                   "idle ones still usable"], rows)


def markdown(report: dict) -> str:
    machine, versions, settings = report["machine"], report["versions"], report["settings"]
    lines = [
        "# gateway benchmark", "",
        f"`{report['command']}` on {report['date']} ({report['seconds']} s).", "",
        f"- machine: {machine['nproc']} CPUs ({machine['cpu_model']}), {machine['memory_gib']} GiB, "
        f"Linux {machine['kernel']}; load average at start {', '.join(f'{x:.2f}' for x in machine['load_average_start'])}, "
        f"at end {', '.join(f'{x:.2f}' for x in machine['load_average_end'])}",
        "- versions: " + "; ".join(f"{name} {value}" for name, value in versions.items()),
        f"- each proxy pinned to CPU 0, wrk + upstreams + this script to CPU 1: {'yes' if settings['pinned'] else 'NO'}",
        f"- {settings['runs']} run(s) of {settings['duration']:g} s after {settings['warmup']:g} s of warm-up; "
        f"medians shown; load generator: {settings['load_generator']}; upstreams: {settings['upstreams']}",
        "",
    ]
    if report["ratios"]:
        lines += ["## The gateway against the others (requests/s ratios; above 1: the gateway is faster)", ""]
        lines += _ratio_table(report) + [""]
    if report["results"]:
        lines += ["## Every proxy, every scenario", ""] + _results_table(report) + [""]
        lines += ["CPU and RSS are the proxy's (its whole process tree, from /proc). CPU is CPU time over "
                  "wall time, 100% = the one core it is pinned to: a proxy that is the bottleneck but shows "
                  "well under 100% shared its core with something else (the numbers are then noisy; "
                  "CPU µs/req, CPU time per request, is the figure that suffers least), while a fast "
                  "proxy under 100% may be waiting for wrk or the upstreams on the other core. RSS is at the "
                  "end of the last run; RSS growth is the peak during the runs (sampled every 100 ms) minus "
                  "the RSS before the scenario's warm-up.", ""]
    if report["idle"]:
        lines += ["## Idle keep-alive connections", ""] + _idle_table(report) + [""]
    lines += ["## Scenarios", ""] + [f"- `{name}`: {text}" for name, text in report["scenarios"].items()]
    lines += ["", "## Proxies", ""] + [f"- `{name}`: {text}" for name, text in report["proxies"].items()]
    if report["upstream_split"]:
        lines += ["", "Which upstream answered 8 consecutive requests (weights 3:1): "
                  + "; ".join(f"{name} {split}" for name, split in report["upstream_split"].items())]
    lines += ["", "The configuration files of every proxy and upstream are in `configs/` next to this file."]
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


# -- the chart ------------------------------------------------------------------------

def chart(report: dict, path: Path) -> bool:
    """Requests/s per scenario and proxy (log scale), and the gateway's ratios; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    results = report["results"]
    scenarios = list(dict.fromkeys(r["scenario"] for r in results))
    proxies = list(dict.fromkeys(r["proxy"] for r in results))
    by_key = {(r["scenario"], r["proxy"]): r["rps"] for r in results}
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, 1.4 * len(scenarios) + 3), 9))
    width = 0.8 / max(1, len(proxies))
    for index, proxy in enumerate(proxies):
        xs = [i + index * width for i, s in enumerate(scenarios) if (s, proxy) in by_key]
        ys = [by_key[(s, proxy)] for s in scenarios if (s, proxy) in by_key]
        top.bar(xs, ys, width, label=proxy)
    top.set_yscale("log")
    top.set_ylabel("requests/s (log scale)")
    top.set_xticks([i + 0.4 - width / 2 for i in range(len(scenarios))], scenarios)
    top.legend(fontsize="small")
    top.set_title("requests/s, median of runs, proxy pinned to one core")
    _ratio_chart(bottom, report["ratios"])
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _ratio_chart(axes, rows: list[dict]) -> None:
    scenarios = [row["scenario"] for row in rows]
    width = 0.8 / len(OTHERS)
    for index, other in enumerate(OTHERS):
        points = [(i + index * width, row[other]) for i, row in enumerate(rows) if row[other]]
        if points:
            bars = axes.bar([x for x, _ in points], [y for _, y in points], width, label=f"gateway ÷ {other}")
            axes.bar_label(bars, fmt="%.2f", fontsize=7)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter("{x:g}")
    axes.set_ylabel("ratio (log scale)")
    axes.set_xticks([i + 0.4 - width / 2 for i in range(len(scenarios))], scenarios)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    axes.set_title("the gateway's requests/s divided by the other proxy's")


def write_all(report: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json", out / "results.md"]
    written[0].write_text(json.dumps(report, indent=2) + "\n")
    written[1].write_text(markdown(report))
    if report["results"] and chart(report, out / "chart.png"):
        written.append(out / "chart.png")
    return written

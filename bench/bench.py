"""The benchmark: the gateway against nginx, HAProxy and twisted.web.proxy, side by side.

Run it with ``bench/run`` (which finds or installs nginx, wrk and HAProxy,
raises the open-files limit and calls this file with the project's venv):

    bench/run                                   # everything: about 12 minutes
    bench/run --duration 2 --runs 1             # a quick look
    bench/run --scenarios http-c50,tls-c50 --proxies gateway,nginx
    bench/run --smoke                           # 2-second check that it all works (CI)

Each proxy runs alone on CPU 0 (``taskset -c 0``); wrk, the upstreams and
this script share CPU 1.  For every proxy and scenario: a warm-up, then
``--runs`` wrk runs of ``--duration`` seconds; the table shows the median
requests/s, p50 and p99 latency, and the proxy's CPU seconds and RSS (from
/proc, the proxy's whole process tree).  Results go to ``--out``
(bench/results/): results.md, results.json and chart.png.

Files: ``stack.py`` starts and stops the processes and writes their
configurations, ``load.py`` runs wrk, ``probes.py`` holds the small socket
clients (idle connections, checks), ``usage.py`` reads /proc, ``report.py``
writes the results.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import re
import resource
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import probes
import report
import stack
from load import Load, LoadResult, run_python_load, run_wrk, wrk_available
from stack import BIG_BYTES, PROXIES, REPO, Backends, Processes, RunningProxy, StartError
from usage import MIB, Sampler, process_tree, rss_bytes

DEFAULT_OUT = REPO / "bench" / "results"
NEW_REQUEST_LIMIT_MS = 50.0


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    backends: str = "fast"  # "fast": the static nginx upstreams; "demo": the demo stack's Gunicorn backends
    path: str = "/"
    connections: int = 50
    tls: bool = False
    new_connections: bool = False
    upload: bool = False
    body_bytes: int = 0  # bytes moved per request, for MiB/s


SCENARIOS = {s.name: s for s in (
    Scenario("http-c50", "plain HTTP/1.1 keep-alive, 50 connections, 5-byte answers: requests/s"),
    Scenario("http-c1", "one keep-alive connection: latency (requests/s = 1 / round trip)", connections=1),
    Scenario("http-newconn", "a new TCP connection per request (`Connection: close`), 50 at a time",
             new_connections=True),
    Scenario("tls-c50", "HTTPS keep-alive, 50 connections", tls=True),
    Scenario("tls-newconn", "a new TLS connection per request, 50 at a time: handshakes/s. wrk offers the "
             "session of its previous connection, so these are resumed handshakes when the proxy allows "
             "it (the errors/checks column says), full ones otherwise",
             tls=True, new_connections=True),
    Scenario("download", "10 MiB response bodies streamed to the client, 4 connections", path="/big",
             connections=4, body_bytes=BIG_BYTES),
    Scenario("upload", "10 MiB request bodies (POST) streamed to an upstream that reads them whole, "
             "4 connections", path="/upload", connections=4, upload=True, body_bytes=BIG_BYTES),
    Scenario("demo", "the demo stack: Gunicorn/Flask `web` backends (gthread, 4 threads, weights 3:1) "
             "of config/demo.yaml, GET /, 50 connections", backends="demo"),
    Scenario("idle", "N idle keep-alive connections (each after one request): the proxy's RSS growth per "
             "connection (user-space memory; kernel socket buffers are not in RSS), the time of 20 new "
             "requests on new connections while they are open, and whether 200 of the idle ones still work"),
)}

# -- options ------------------------------------------------------------------------


def parse_options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="scenarios:\n" + "\n".join(f"  {s.name:13} {s.description}"
                                                                       for s in SCENARIOS.values()))
    parser.add_argument("--duration", type=_seconds(1), help="whole seconds per wrk run (default 5; smoke: 2)")
    parser.add_argument("--runs", type=int, help="wrk runs per proxy and scenario; the median is kept "
                        "(default 3; smoke: 1)")
    parser.add_argument("--warmup", type=_seconds(0), help="whole seconds of unmeasured load before the runs "
                        "(default 1; smoke: 0)")
    parser.add_argument("--scenarios", type=_names(SCENARIOS), help="comma-separated (default: all): "
                        + ",".join(SCENARIOS))
    parser.add_argument("--proxies", type=_names(PROXIES), help="comma-separated (default: all): "
                        + ",".join(PROXIES))
    parser.add_argument("--idle-connections", type=int, help="connections of the idle scenario "
                        "(default 10000, capped by the open-files limit; smoke: 200)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results directory (default {DEFAULT_OUT})")
    parser.add_argument("--smoke", action="store_true", help="one 2-second run of one scenario (default "
                        "http-c50) against the gateway only; falls back to a Twisted upstream without nginx "
                        "and a Python client without wrk; fails on any error")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the temporary directory "
                        "(configurations and logs of every process)")
    options = parser.parse_args(argv)
    _apply_defaults(options)
    return options


def _seconds(minimum: int) -> Any:
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"expected whole seconds >= {minimum} (wrk's unit), got {text!r}")
        return int(text)
    return parse


def _names(known: dict) -> Any:
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown) or 'empty list'}; "
                                             f"expected some of: {', '.join(known)}")
        return names
    return parse


def _apply_defaults(options: argparse.Namespace) -> None:
    smoke = options.smoke
    defaults = {"duration": 2 if smoke else 5, "runs": 1 if smoke else 3, "warmup": 0 if smoke else 1,
                "idle_connections": 200 if smoke else 10_000,
                "scenarios": ["http-c50"] if smoke else list(SCENARIOS),
                "proxies": ["gateway"] if smoke else list(PROXIES)}
    for key, value in defaults.items():
        if getattr(options, key) is None:
            setattr(options, key, value)
    if smoke:
        options.scenarios = options.scenarios[:1]


# -- the run's context ----------------------------------------------------------------

@dataclass
class Bench:
    options: argparse.Namespace
    workdir: Path
    procs: Processes
    pin: bool
    use_wrk: bool
    use_nginx_upstreams: bool
    certs: stack.Certs | None = None
    results: list[dict] = field(default_factory=list)
    idle: list[dict] = field(default_factory=list)
    splits: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failures: int = 0

    def note(self, text: str) -> None:
        say(f"note: {text}")
        self.notes.append(text)

    def fail(self, text: str) -> None:
        self.failures += 1
        self.note(text)


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def can_pin() -> bool:
    return len(os.sched_getaffinity(0)) >= 2 and shutil.which("taskset") is not None


def raise_open_files_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard one; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def check_tools(options: argparse.Namespace) -> tuple[bool, bool]:
    """(use wrk, use nginx upstreams); drops proxies whose program is missing, with a note."""
    missing = [name for name in options.proxies if not PROXIES[name].available()]
    for name in missing:
        say(f"skipping {name}: `{PROXIES[name].program}` is not installed (bench/run installs it as root)")
    options.proxies = [name for name in options.proxies if name not in missing]
    use_wrk, use_nginx = wrk_available(), shutil.which("nginx") is not None
    if not options.smoke and not (use_wrk and use_nginx):
        raise SystemExit("bench: wrk and nginx are needed (apt-get install wrk nginx, or run bench/run as root); "
                         "--smoke runs without them")
    return use_wrk, use_nginx


# -- measuring ------------------------------------------------------------------------


MULTI_CORE_SCENARIOS = ("http-c50", "tls-c50", "tls-newconn")


def supports(proxy: str, scenario: Scenario) -> bool:
    if PROXIES[proxy].workers > 1 and scenario.name not in MULTI_CORE_SCENARIOS:
        return False
    return PROXIES[proxy].tls or not scenario.tls


def url_for(running: RunningProxy, scenario: Scenario) -> str:
    if scenario.tls:
        return f"https://{stack.HOST}:{running.tls_port}{scenario.path}"
    return f"http://{stack.HOST}:{running.http_port}{scenario.path}"


def run_load(bench: Bench, load: Load, duration: int) -> LoadResult:
    if bench.use_wrk:
        return run_wrk(load, duration, bench.workdir, bench.pin)
    return run_python_load(load, duration)


def one_run(bench: Bench, running: RunningProxy, load: Load) -> dict:
    pid = running.process.pid if running.process else None
    with Sampler(pid) as sampler:
        result = run_load(bench, load, bench.options.duration)
    run = {"requests": result.requests, "seconds": result.seconds, "rps": result.rps,
           "p50_ms": result.p50_ms, "p99_ms": result.p99_ms, "errors": result.errors}
    if sampler.cpu is not None:
        run.update(cpu_s=sampler.cpu, cpu_percent=100 * sampler.cpu / result.seconds,
                   cpu_us_per_request=1e6 * sampler.cpu / result.requests if result.requests else None,
                   rss_mib=sampler.rss_end / MIB, peak_rss_mib=sampler.rss_peak / MIB)
    return run


def _median(runs: list[dict], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(scenario: Scenario, proxy: str, runs: list[dict]) -> dict:
    """Medians over the runs (peak RSS: the maximum; errors: the sum)."""
    errors: dict[str, int] = {}
    for run in runs:
        for name, count in run["errors"].items():
            errors[name] = errors.get(name, 0) + count
    summary = {"scenario": scenario.name, "proxy": proxy, "runs": runs, "errors": errors}
    for key in ("rps", "p50_ms", "p99_ms", "cpu_s", "cpu_percent", "cpu_us_per_request"):
        summary[key] = _median(runs, key)
    peaks = [run["peak_rss_mib"] for run in runs if "peak_rss_mib" in run]
    summary["peak_rss_mib"] = max(peaks) if peaks else None
    summary["rss_mib"] = runs[-1].get("rss_mib")
    summary["mib_per_s"] = summary["rps"] * scenario.body_bytes / MIB if scenario.body_bytes else None
    return summary


def upload_log_sizes(backends: Backends) -> list[int]:
    return [path.stat().st_size if path.exists() else 0 for path in backends.upload_logs]


def check_uploads(backends: Backends, marks: list[int], responses: int) -> dict:
    """Count the uploads the upstreams logged as read whole since *marks*, against wrk's responses."""
    complete = cut = 0
    for path, mark in zip(backends.upload_logs, marks):
        with open(path, "rb") as stream:
            stream.seek(mark)
            for line in stream.read().decode().splitlines():
                length, status = line.split()
                if status == "200" and int(length) >= BIG_BYTES:
                    complete += 1
                else:
                    cut += 1
    return {"complete": complete, "cut_short": cut, "responses": responses, "ok": complete >= responses}


def measure(bench: Bench, running: RunningProxy, scenario: Scenario, backends: Backends) -> dict:
    """Warm-up, then the measured runs of one proxy in one scenario, then the scenario's checks."""
    load = Load(url_for(running, scenario), scenario.connections, scenario.new_connections, scenario.upload)
    marks = upload_log_sizes(backends)
    rss_before = rss_bytes(process_tree(running.process.pid)) if running.process else None
    warmup_requests = run_load(bench, load, bench.options.warmup).requests if bench.options.warmup else 0
    runs = [one_run(bench, running, load) for _ in range(bench.options.runs)]
    summary = summarize(scenario, running.name, runs)
    if rss_before is not None:
        summary["rss_growth_mib"] = summary["peak_rss_mib"] - rss_before / MIB
    if scenario.upload and backends.upload_logs:
        responses = warmup_requests + sum(run["requests"] for run in runs)
        summary["upload_check"] = check = check_uploads(backends, marks, responses)
        if not check["ok"]:
            bench.note(f"upload via {running.name}: the upstreams read {check['complete']} whole bodies "
                       f"for {responses} responses")
    if scenario.tls:
        summary["tls"] = probes.tls_resumption(running.tls_port)
    return summary


def measure_idle(bench: Bench, running: RunningProxy) -> dict:
    """Open N idle keep-alive connections: RSS per connection, and a new request's time meanwhile."""
    count, port = min(bench.options.idle_connections, running.max_connections - 100), running.http_port
    if count < bench.options.idle_connections:
        bench.note(f"idle via {running.name}: {count} connections only, all that its open-files limit allows")
    pids = process_tree(running.process.pid)
    for _ in range(20):
        probes.timed_new_request(port)
    time.sleep(0.5)
    before = rss_bytes(pids)
    connections = []
    try:
        started = time.monotonic()
        connections = probes.open_idle_connections(port, count, deadline=started + 180)
        open_seconds = time.monotonic() - started
        time.sleep(1.0)
        after = rss_bytes(pids)
        timings = sorted(probes.timed_new_request(port) for _ in range(20))
        usable, tried = probes.still_usable(connections, sample=200)
    finally:
        probes.close_all(connections)
    return {"proxy": running.name, "connections": count, "open_seconds": open_seconds,
            "rss_before_mib": before / MIB, "rss_after_mib": after / MIB,
            "kib_per_connection": (after - before) / count / 1024,
            "new_request_ms_median": statistics.median(timings), "new_request_ms_max": timings[-1],
            "under_limit": timings[-1] < NEW_REQUEST_LIMIT_MS, "still_usable": usable, "tried": tried}


# -- the loop ---------------------------------------------------------------------------


@contextlib.contextmanager
def started_backends(bench: Bench, kind: str) -> Iterator[Backends]:
    mark = len(bench.procs.running)
    try:
        if kind == "fast":
            yield stack.start_fast_upstreams(bench.procs, bench.workdir, bench.use_nginx_upstreams)
        else:
            yield stack.start_demo_backends(bench.procs)
    finally:
        for process in bench.procs.running[mark:][::-1]:
            bench.procs.stop(process)


@contextlib.contextmanager
def started_proxy(bench: Bench, proxy: str, backends: Backends) -> Iterator[RunningProxy | None]:
    """The running proxy, or None (with a failure noted) if it would not start."""
    try:
        max_connections = max(10_000, bench.options.idle_connections + 1024)
        running = stack.start_proxy(bench.procs, proxy, bench.workdir, backends, bench.certs, max_connections)
    except (StartError, OSError, subprocess.SubprocessError) as error:
        bench.fail(f"{proxy} did not start in front of the {backends.kind} backends: {error}")
        yield None
        return
    try:
        yield running
    finally:
        if running.process:
            bench.procs.stop(running.process)


def log_result(summary: dict) -> None:
    latency = (f", p50 {summary['p50_ms']:.2f} ms, p99 {summary['p99_ms']:.2f} ms"
               if summary["p50_ms"] is not None else "")
    cpu = f", cpu {summary['cpu_s']:.1f} s, rss {summary['rss_mib']:.0f} MiB" if summary["cpu_s"] is not None else ""
    errors = f", errors {summary['errors']}" if summary["errors"] else ""
    say(f"  {summary['scenario']:12} {summary['proxy']:11} {summary['rps']:10,.0f} req/s{latency}{cpu}{errors}")


def run_scenarios(bench: Bench, proxy: str, scenarios: list[Scenario], backends: Backends) -> None:
    runnable = [s for s in scenarios if s.name != "idle" and supports(proxy, s)]
    if runnable:
        with started_proxy(bench, proxy, backends) as running:
            if running is None:
                return
            bench.splits[f"{proxy} ({backends.kind})"] = probes.upstream_split(running.http_port)
            for scenario in runnable:
                try:
                    summary = measure(bench, running, scenario, backends)
                except (RuntimeError, OSError, probes.ProbeError) as error:
                    bench.fail(f"{scenario.name} via {proxy} failed: {error}")
                    continue
                bench.results.append(summary)
                log_result(summary)
    if any(s.name == "idle" for s in scenarios) and proxy != "direct":
        with started_proxy(bench, proxy, backends) as running:
            if running is None:
                return
            try:
                bench.idle.append(measure_idle(bench, running))
                say(f"  idle         {proxy:11} {bench.idle[-1]['kib_per_connection']:.1f} KiB/connection, "
                    f"new request {bench.idle[-1]['new_request_ms_max']:.1f} ms max")
            except (OSError, probes.ProbeError) as error:
                bench.fail(f"idle via {proxy} failed: {error}")


def run_benchmark(bench: Bench) -> None:
    scenarios = [SCENARIOS[name] for name in bench.options.scenarios]
    bench.certs = stack.generate_certs(bench.workdir)
    for kind in ("fast", "demo"):
        selected = [s for s in scenarios if s.backends == kind]
        if not selected:
            continue
        say(f"starting the {kind} backends")
        with started_backends(bench, kind) as backends:
            for proxy in bench.options.proxies:
                say(f"{proxy}: {', '.join(s.name for s in selected)}")
                run_scenarios(bench, proxy, selected, backends)


# -- the machine and the versions ---------------------------------------------------------


def command_output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "not installed"
    return (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr).strip() else "?"


def python_package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine_info() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    memory = re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.MULTILINE)
    return {"nproc": os.cpu_count(), "cpu_model": model.group(1) if model else platform.processor(),
            "kernel": platform.release(), "memory_gib": round(int(memory.group(1)) / 1024 / 1024, 1),
            "load_average_start": os.getloadavg()}


def program_version(argv: list[str], pattern: str) -> str:
    text = command_output(argv)
    found = re.search(pattern, text)
    return found.group(1) if found else text


def versions() -> dict:
    commit = command_output(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
    request_path = command_output([sys.executable, "-c", "import gateway.http.server, gateway.compiled as c; "
                                   "print('compiled with mypyc' if c.in_use() else 'pure Python')"])
    return {"gateway": f"{python_package_version('gateway')} ({commit}; request path {request_path})",
            "Python": f"{platform.python_version()} ({os.path.realpath(sys.executable)})",
            "Twisted": python_package_version("twisted"),
            "httptools": python_package_version("httptools"), "OpenSSL": ssl.OPENSSL_VERSION.split()[1],
            "nginx": program_version(["nginx", "-v"], r"nginx/(\S+)"),
            "HAProxy": program_version(["haproxy", "-v"], r"version (\S+)"),
            "wrk": program_version(["wrk", "-v"], r"wrk (\S+)") if wrk_available() else "none (Python client)"}


def the_command(argv: list[str] | None) -> str:
    return os.environ.get("BENCH_COMMAND") or " ".join(["bench/bench.py"] + (sys.argv[1:] if argv is None else argv))


def build_report(bench: Bench, argv: list[str] | None, started: datetime.datetime, machine: dict) -> dict:
    options = bench.options
    bench.results.sort(key=lambda r: (options.scenarios.index(r["scenario"]), options.proxies.index(r["proxy"])))
    machine = dict(machine, load_average_end=os.getloadavg())
    return {
        "command": the_command(argv), "date": started.isoformat(timespec="seconds"),
        "seconds": round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()),
        "machine": machine, "versions": versions(),
        "settings": {"duration": options.duration, "runs": options.runs, "warmup": options.warmup,
                     "smoke": options.smoke, "pinned": bench.pin, "load_generator": "wrk" if bench.use_wrk
                     else "python", "upstreams": "nginx" if bench.use_nginx_upstreams else "tiny twisted.web",
                     "idle_connections": options.idle_connections},
        "scenarios": {name: SCENARIOS[name].description for name in options.scenarios},
        "proxies": {name: PROXIES[name].label for name in options.proxies},
        "results": bench.results, "ratios": report.ratios(bench.results), "idle": bench.idle,
        "upstream_split": bench.splits, "notes": bench.notes, "failures": bench.failures,
    }


# -- main ---------------------------------------------------------------------------------


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # like Ctrl-C: every `finally` runs, so every process is stopped


def save_configurations(workdir: Path, out: Path) -> None:
    """Copy every configuration file the run wrote (proxies and upstreams) next to the results."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for pattern in ("gateway.yaml", "nginx.conf", "haproxy.cfg", "*.lua"):
        for path in workdir.rglob(pattern):
            shutil.copy(path, out / "-".join(path.relative_to(workdir).parts))


def smoke_failed(bench: Bench) -> bool:
    return not bench.results or any(r["errors"] or not r["rps"] for r in bench.results)


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    use_wrk, use_nginx = check_tools(options)
    pin = can_pin()
    if pin:
        os.sched_setaffinity(0, {int(stack.LOAD_CPU)})
    else:
        say("fewer than 2 CPUs (or no taskset): nothing is pinned; the numbers mean little")
    limit = raise_open_files_limit(options.idle_connections + 1024)
    started, machine = datetime.datetime.now(datetime.timezone.utc), machine_info()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    workdir.chmod(0o755)
    (workdir / "logs").mkdir()
    bench = Bench(options, workdir, Processes(workdir / "logs", pin), pin, use_wrk, use_nginx)
    if "idle" in options.scenarios and options.idle_connections > limit - 512:
        options.idle_connections = max(1, limit - 512)
        bench.note(f"idle connections capped at {options.idle_connections} by the open-files limit ({limit}); "
                   "raise it with `ulimit -n` (bench/run does)")
    try:
        run_benchmark(bench)
        save_configurations(workdir, options.out / "configs")
    except KeyboardInterrupt:
        say("interrupted: stopping everything, writing no results")
        return 130
    except StartError as error:
        say(f"the upstreams did not start: {error}")
        return 1
    finally:
        bench.procs.stop_all()
        if options.keep_workdir:
            say(f"configurations and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    written = report.write_all(build_report(bench, argv, started, machine), options.out)
    say("wrote " + ", ".join(str(path) for path in written))
    if options.smoke and smoke_failed(bench):
        say("smoke run FAILED: no result, or errors")
        return 1
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())

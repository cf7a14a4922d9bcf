"""The gateway's user-space instructions per proxied request, counted by valgrind: a steady yardstick.

    .venv/bin/python bench/instructions.py                      # this tree
    .venv/bin/python bench/instructions.py /tmp/base .          # two trees (a git worktree and this one)
    .venv/bin/python bench/instructions.py --connections 1 .    # one request at a time
    .venv/bin/python bench/instructions.py --close .            # a new connection per request

Why: wrk runs on a shared machine differ by 10-20%, so a change worth 2%
cannot be seen there.  Instructions counted by ``valgrind --tool=cachegrind``
repeat to within about 1% (what varies is how the requests fall into the
reactor's polls).  They leave out the kernel (about a third of the
gateway's CPU time per request, and the same for any change to Python code)
and are not time (a cache miss costs more than an addition), so a result
still has to be confirmed with ``bench/run``; but they show every change
to the work the interpreter does.

How: two nginx upstreams (weights 3:1, as in bench/run; the tiny Twisted
upstream when nginx is missing) and, for each tree, the gateway started from
that tree with bench/run's configuration, under cachegrind, twice: the client sends ``--requests`` GET requests
in the first run and ``--requests`` more in the second, over ``--connections``
keep-alive connections (one request on each, then all the answers read, like
wrk's -c without its timing).  The difference between the two counts,
divided by the difference in requests, leaves out start-up and shutdown.
Needs valgrind (``apt-get install valgrind``); a run takes about a minute.

A tree runs as it is built: its request path compiled (gateway/compiled.py)
when its compiled modules are there and up to date, else pure Python; each
line of the output says which.  To compile a ``git worktree``, which has
only the sources: ``python=$PWD/.venv/bin/python; (cd /tmp/base && $python
setup.py build_ext --inplace)`` (mypy, for mypyc, comes with the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

import stack
from stack import HOST, Processes, StartError

VALGRIND_START_TIMEOUT = 180.0  # start-up under valgrind is 20-50 times slower
STOP_TIMEOUT = 120.0
WARM_UP = 200  # requests before the counted ones (in both runs)
#: The twistd command line, run from a tree so that its gateway package (and plugin) is the one imported.
TWISTD_FROM_CWD = ("import sys; sys.path.insert(0, ''); sys.argv[0] = 'twistd'; "
                   "from twisted.scripts.twistd import run; run()")


def send_requests(port: int, requests: int, connections: int, close: bool) -> None:
    """*requests* GETs over *connections* connections, in rounds; raise on a bad answer.

    With *close*, every request asks ``Connection: close`` and goes on a new connection.
    """
    request = b"GET / HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n" % (HOST.encode(), port,
                                                             b"Connection: close\r\n" if close else b"")
    sockets = [] if close else [socket.create_connection((HOST, port), timeout=60) for _ in range(connections)]
    try:
        for _ in range(requests // connections):
            if close:
                sockets = [socket.create_connection((HOST, port), timeout=60) for _ in range(connections)]
            for sock in sockets:
                sock.sendall(request)
            for sock in sockets:
                _read_answer(sock, until_closed=close)
            if close:
                for sock in sockets:
                    sock.close()
    finally:
        for sock in sockets:
            sock.close()


def _read_answer(sock: socket.socket, until_closed: bool) -> None:
    answer = b""
    while not answer.endswith(b"hello"):  # the upstreams' 5-byte body ends every answer
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"the gateway closed a connection; it had sent {answer!r}")
        answer += chunk
    if not answer.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"unexpected answer: {answer[:200]!r}")
    if until_closed and sock.recv(1) != b"":
        raise RuntimeError("the gateway kept a Connection: close connection open")


def count_instructions(tree: Path, config: Path, port: int, requests: int, connections: int, close: bool,
                       procs: Processes, out: Path) -> tuple[int, bool]:
    """Start the gateway of *tree* under cachegrind, send WARM_UP + *requests*, stop it.

    Returns its instruction count and whether its request path ran compiled.
    """
    argv = ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}",
            sys.executable, "-c", TWISTD_FROM_CWD, "-n", "--pidfile=", "gateway", "-c", str(config)]
    env = dict(os.environ, PYTHONHASHSEED="0")  # the same dictionaries in every run
    process = procs.start(f"gateway-{out.stem}", argv, None, cwd=tree, env=env)
    try:
        stack.wait_until_serving(process, port, timeout=VALGRIND_START_TIMEOUT)
        send_requests(port, WARM_UP, connections, close)
        send_requests(port, requests, connections, close)
        os.killpg(process.pid, signal.SIGTERM)
        process.popen.wait(timeout=STOP_TIMEOUT)  # (cachegrind writes its counts as the process exits)
    finally:
        procs.stop(process)
    match = re.search(r"^summary:\s+(\d+)", out.read_text(), re.MULTILINE)
    if match is None:
        raise StartError(f"no instruction count in {out}:\n{process.log_tail()}")
    return int(match.group(1)), "request path: compiled" in process.log_path.read_text(errors="replace")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="*", type=Path, default=[stack.REPO],
                        help="project trees whose gateway is measured (default: this one)")
    parser.add_argument("--requests", type=int, default=2000, help="requests counted per run (default 2000)")
    parser.add_argument("--connections", type=int, default=20, help="connections at a time (default 20)")
    parser.add_argument("--close", action="store_true",
                        help="a new connection for every request (Connection: close), as bench/run's http-newconn")
    options = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("bench/instructions.py: valgrind is needed (apt-get install valgrind)", file=sys.stderr)
        return 2
    requests = max(options.connections, options.requests // options.connections * options.connections)
    with tempfile.TemporaryDirectory(prefix="gateway-instructions-") as directory:
        workdir = Path(directory)
        procs = Processes(workdir, pin=False)
        try:
            backends = stack.start_fast_upstreams(procs, workdir, use_nginx=shutil.which("nginx") is not None)
            certs = stack.generate_certs(workdir)  # (bench/run's configuration has an HTTPS listener too)
            for tree in options.trees:
                port = stack.free_port()
                config = workdir / "gateway.yaml"
                config.write_text(stack.gateway_config(backends, port, stack.free_port(), certs,
                                                       max_connections=1024))
                runs = [count_instructions(tree.resolve(), config, port, total, options.connections, options.close,
                                           procs, workdir / f"cachegrind-{total}.out")
                        for total in (requests, 2 * requests)]
                per_request = (runs[1][0] - runs[0][0]) / requests
                print(f"{tree}: {per_request:,.0f} instructions per request "
                      f"({options.connections} {'new connections at a time' if options.close else 'connections'}, "
                      f"{requests} requests counted; request path "
                      f"{'compiled' if runs[0][1] else 'pure Python'})", flush=True)
        finally:
            procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""bench/restart.py — failed requests per restart of pmd itself, under a
bounded 4-thread load on loopback (2 keep-alive and 2 new-connection
clients of tests/integration/loadgen.py, GET and POST with echoed bodies)
against an exec service (tests/images/zdapp.py). A measurement, not a
test: it prints figures, it asserts nothing.

  bench/restart.py --mode plain        # SIGTERM, wait for the exit, start again
  bench/restart.py --mode activation   # the same, sockets held by a parent (pmd.socket)
  bench/restart.py --mode handover     # SIGUSR2: the new pmd takes the sockets over
  PMD_BUILD=/path/to/build bench/restart.py --restarts 10

The restart procedure is tests/integration/test_restart.py run_restarts().
"""
import argparse
import os
import pathlib
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
import pmdtest  # noqa: E402
from test_restart import run_restarts, sections, stop_pid  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=("plain", "activation", "handover"), default="handover")
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--gap", type=float, default=2.0, help="seconds between restarts")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pmd-restart-") as tmp:
        p = pmdtest.Pmd(pathlib.Path(tmp), sections())
        load_kw = {"keepalive": 2, "fresh": 2, "frontend": 0, "stream": None,
                   "websocket": False, "max_seconds": a.gap * (a.restarts + 2) + 60}
        load, pid = run_restarts(p, a.mode, a.restarts, load_kw, gap=a.gap)
        stop_pid(p, pid)
        s = load.summary()
        print(f"pmd {pmdtest.PMD} mode={a.mode}: {s['sent']} requests, {s['failed']} failed "
              f"over {a.restarts} restarts ({s['failed'] / a.restarts:.1f} per restart)")
        kinds = {}
        for f in load.failures:
            k = f["error"].split(":")[0]
            kinds[k] = kinds.get(k, 0) + 1
        for k, n in sorted(kinds.items(), key=lambda x: -x[1]):
            print(f"  {n:6d}  {k}")


if __name__ == "__main__":
    main()

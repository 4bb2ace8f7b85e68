#!/usr/bin/env python
"""How long ``demp`` takes to answer before any work: ``--version``, ``compress --help`` and an argument error,
next to ``import torch`` for scale; each command run ``--runs`` times, interleaved, wall-clock of the whole
process (BENCHMARKS.md section 10).

``--before DIR`` also times an older tree extracted into DIR (``git archive REV compressor exporters | tar -x
-C DIR``), run as ``python -c "sys.path.insert(0, DIR); from compressor.cli import main; main([...])"``:

    python tools/bench_cli_start.py                       # the installed demp
    python tools/bench_cli_start.py --before /tmp/demp-head --runs 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ARGVS = (["--version"], ["compress", "--help"], ["compress", "--no-such-option"])


def commands(before: str | None) -> dict[str, list[str]]:
    """The commands to time, by label."""
    out: dict[str, list[str]] = {}
    for argv in ARGVS:
        if before:
            code = (f"import sys; sys.path.insert(0, {before!r}); from compressor.cli import main; "
                    f"sys.exit(main({argv!r}))")
            out[f"before: demp {' '.join(argv)}"] = [sys.executable, "-c", code]
        out[f"after:  demp {' '.join(argv)}"] = ["demp", *argv]
    out["python -c 'import torch'"] = [sys.executable, "-c", "import torch"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", metavar="DIR", help="an older tree (compressor/, exporters/) to time as well")
    parser.add_argument("--runs", type=int, default=5, help="runs of each command (default 5)")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmds = commands(args.before)
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(args.runs):  # interleaved: machine load hits every command alike
        for name, cmd in cmds.items():
            start = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
            times[name].append(time.perf_counter() - start)
    print(f"load average {os.getloadavg()[0]:.2f}; {args.runs} runs each, interleaved")
    for name, values in times.items():
        print(f"{name:42} median {statistics.median(values):5.2f} s  (min {min(values):.2f}, max {max(values):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

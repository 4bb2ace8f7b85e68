"""`demp --version`, `demp --help`, `demp CMD --help` and a mistyped command line answer without importing
torch (or onnx, torch-pruning): the heavy imports happen inside the handlers, after parsing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

#: Imported only by the work, never by parsing the command line.
HEAVY = ("torch", "torch_pruning", "onnx", "onnxruntime", "torchvision", "fvcore", "numpy")

_SCRIPT = textwrap.dedent("""
    import contextlib, io, sys
    from compressor.cli.main import build_parser, main

    build_parser()
    codes = []
    for argv in (["--version"], ["--help"], ["compress", "--help"], ["inspect", "--help"], ["train", "--help"],
                 ["demo", "--help"], ["export", "--help"], ["bench", "--help"], ["compress", "--no-such-option"],
                 ["compress", "--round-to", "seven"], ["bench", "--threads", "x"], ["no-such-command"]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                codes.append(main(argv))
            except SystemExit as exc:
                codes.append(exc.code)
    print(codes)
    print(sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:])))
""")


def test_parsing_the_command_line_imports_no_heavy_library() -> None:
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, *HEAVY], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    codes, loaded = proc.stdout.strip().splitlines()[-2:]
    assert codes == "[0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2]"  # help and version exit 0, argument errors 2
    assert loaded == "[]", f"parsing the command line imported {loaded}"


def test_the_parsers_light_constants_match_the_modules_that_use_them() -> None:
    from compressor.defaults import ANALYZER_TIME_BUDGET, BUILTIN_ARCHS
    from compressor.graph.analyzer import ANALYZER_TIME_BUDGET as analyzer_budget
    from compressor.models.registry import BUILTINS
    from exporters import defaults, latency
    from exporters.runtimes import REGISTRY

    assert tuple(BUILTINS) == BUILTIN_ARCHS  # `demp compress --help` lists every built-in, in order
    assert analyzer_budget == ANALYZER_TIME_BUDGET
    assert (latency.DEFAULT_THREADS, latency.RUNTIMES) == (defaults.DEFAULT_THREADS, defaults.RUNTIMES)
    assert tuple(REGISTRY) == defaults.RUNTIMES  # `demp bench --help` lists every registered runtime, in order

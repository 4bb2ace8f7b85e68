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


def test_the_help_lists_every_built_in_architecture_and_every_runtime(capsys) -> None:
    """The parsers read light copies (compressor.defaults) or light modules (exporters.runtimes): the help
    must still list what the heavy registries hold."""
    from compressor.cli.main import main
    from compressor.defaults import BUILTIN_ARCHS
    from compressor.models.registry import BUILTINS
    from exporters.runtimes import REGISTRY

    assert tuple(BUILTINS) == BUILTIN_ARCHS  # `demp compress --help` lists every built-in, in order
    try:
        main(["bench", "--help"])
    except SystemExit:
        pass
    help_text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, even inside words
    assert f"comma-separatedfrom{','.join(REGISTRY)}" in help_text

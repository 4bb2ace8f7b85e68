"""The ``demp`` command line.

Each journey registers its own subcommands: ``compress``/``inspect`` in :mod:`.compress` (the budget
options of ``compress`` in :mod:`.finetune`),
``train``/``demo`` in :mod:`.train`, ``export``/``bench`` in :mod:`exporters.cli`. A subcommand's
handler takes the parsed namespace and returns an exit code. User errors (:class:`DempError`) are
printed as one line without a traceback, with the exit code of :mod:`compressor.errors`' rule: 2 for what
the user fixes in the command line or an input file, 1 for a failure during the work, 130 when interrupted.
Parsing imports nothing heavy (the registrars' modules are light; ``tests/test_cli_start.py``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from exporters import cli as exporters_cli

from .. import __version__
from ..errors import DempError
from . import compress as compress_cli
from . import finetune as finetune_cli
from . import train as train_cli

Registrar = Callable[["argparse._SubParsersAction"], None]
REGISTRARS: tuple[Registrar, ...] = (compress_cli.register, finetune_cli.register, train_cli.register,
                                     exporters_cli.register)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option shows its default (unless it has none or says it already); examples keep their lines."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = action.option_strings and not (default is None or default is False or default is argparse.SUPPRESS
                                               or default == [])
        return text + " (default: %(default)s)" if shown and "default" not in text else text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="demp",
        description="Find and remove dead neurons, train-and-prune with DemP, export compact ONNX models.",
    )
    parser.add_argument("--version", action="version", version=f"demp {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in REGISTRARS:
        register(subparsers)
    for command in subparsers.choices.values():
        command.formatter_class = HelpFormatter
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except DempError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

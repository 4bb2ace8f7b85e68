"""Error types that the CLI turns into clean messages and exit codes.

Library code raises these for *user* problems (bad input, bad files, bad options); anything else is
a bug and keeps its traceback. The CLI prints ``error: <message>`` and exits with ``exit_code``.
"""

from __future__ import annotations


class DempError(Exception):
    """A failure the user can act on (exit code 1). The message names the problem and the fix."""

    exit_code = 1


class UsageError(DempError):
    """Bad options or arguments (exit code 2)."""

    exit_code = 2


class CheckpointError(DempError):
    """A checkpoint is missing, truncated, unsafe, or does not match the architecture."""


class DataError(DempError):
    """A dataset spec is malformed or its files are missing."""


class VerificationError(DempError):
    """A pruned model does not reproduce the original within tolerance (a lossless-removal bug)."""


class OutputExistsError(UsageError):
    """An output path exists and ``--overwrite`` was not given."""

"""Error types that the CLI turns into clean messages and exit codes.

Library code raises these for *user* problems (bad input, bad files, bad options); anything else is
a bug and keeps its traceback. The CLI prints ``error: <message>`` and exits with ``exit_code``.

**The exit-code rule** (one per kind of error, whichever command meets it):

* **2** — a usage error the user fixes in the command line or in an input file: unknown or contradicting
  options, a missing or malformed checkpoint, data set, recipe, model file or output folder
  (:class:`UsageError`, :class:`CheckpointError`, :class:`DataError`, :class:`OutputExistsError`);
* **1** — a failure during the work, with valid inputs: a removal that changed the outputs, an export or
  a measurement that failed, training that diverged, a checkpoint that could not be written
  (:class:`DempError` itself, :class:`VerificationError`, :class:`CheckpointWriteError`);
* **130** — interrupted (Ctrl-C, SIGTERM); a training run wrote a checkpoint to resume from.
"""

from __future__ import annotations


class DempError(Exception):
    """A failure during the work that the user can act on (exit code 1). The message names the problem and
    the fix."""

    exit_code = 1


class UsageError(DempError):
    """Bad options or arguments, or an input file that is wrong (exit code 2)."""

    exit_code = 2


class CheckpointError(DempError):
    """A checkpoint is missing, truncated, unsafe, or does not match the architecture (an input: exit code 2)."""

    exit_code = 2


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (a full disk): a failure during the work (exit code 1)."""

    exit_code = 1


class DataError(DempError):
    """A dataset spec is malformed or its files are missing or unreadable (an input: exit code 2)."""

    exit_code = 2


class VerificationError(DempError):
    """A pruned model does not reproduce the original within tolerance (a lossless-removal bug; exit code 1)."""


class OutputExistsError(UsageError):
    """An output path exists and ``--overwrite`` was not given."""

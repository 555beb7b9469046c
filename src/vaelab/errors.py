"""The errors a user can cause: each is printed as one line by the command line, exit code 2."""

import sys
from collections.abc import Callable

EXIT_USER_ERROR = 2


class VaelabError(Exception):
    """A user-facing error: bad config or missing input. Printed as one line."""


class ConfigError(VaelabError):
    """An invalid combination or value in the run configuration."""


class DataError(VaelabError):
    """A dataset that cannot be found or loaded."""


class InputError(VaelabError, ValueError):
    """Data handed to a model that it cannot score: wrong dtype, shape or values."""


class TrainingError(VaelabError):
    """Training went wrong in a way the user can fix, e.g. a diverging loss."""


class Interrupted(VaelabError):
    """SIGTERM or Ctrl+C stopped training after saving a checkpoint; the run can resume."""

    def __init__(self, message: str, exit_code: int, requeue: Callable[[], None] | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.requeue = requeue  # under SLURM: hands the job back to submitit to requeue

    def __reduce__(self):  # picklable across a parallel launcher's processes
        return (type(self), (str(self), self.exit_code))


class JobFailed(VaelabError):
    """A job of a multirun failed; the other jobs ran (raised so that sweepers count it)."""


def one_line(error: BaseException) -> str:
    """The error as one line: its message's lines joined, prefixed by its type unless ours."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    message = " ".join(str(error).split()) or type(error).__name__
    return message if isinstance(error, VaelabError) else f"{type(error).__name__}: {message}"


def exit_with(message: str, exit_code: int = EXIT_USER_ERROR) -> None:
    """Print `vaelab: error: <message>` and exit: the form of every user error, on a line of
    its own (a progress bar that the error stopped is closed first)."""
    _close_progress_bars()
    sys.stdout.flush()  # what the console holds of stdout (a bar's end) goes out first
    print(f"vaelab: error: {message}", file=sys.stderr)
    sys.exit(exit_code)


def _close_progress_bars() -> None:
    """Close the tqdm bars still open, so that the cursor is at the start of a line."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()

"""`vaelab train|eval|sample|compare ...`: the one place an error becomes a line and an exit code.

train, eval and sample are Hydra applications (configs in conf/train.yaml, eval.yaml,
sample.yaml) whose jobs `vaelab.jobs` runs; compare takes paths. A user error (vaelab's
own, or a config Hydra or OmegaConf rejects) is printed as one line `vaelab: error: ...`
with exit status 2. The values of a composed config are checked (vaelab.config) before
torch is imported. Inside a multirun a failed job is recorded as failed in its run
directory and the sweep goes on; the command then exits 2.
"""

import argparse
import difflib
import errno
import os
import sys
from collections.abc import Sequence

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from vaelab import jobs
from vaelab.config.checks import ConfigRejected
from vaelab.errors import EXIT_USER_ERROR, Interrupted, VaelabError, exit_with
from vaelab.jobs import DDP_CONFIG_ENV

# How the parallel and submitit launchers report a job whose process was killed.
_KILLED_JOB = ("UncompletedJobError", "TerminatedWorkerError")
# Errors of a folder or file that cannot be written: reported as one line, before training.
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.ENOTDIR, errno.ENOENT}
COMMANDS = ("train", "eval", "sample", "compare")


def _compare(args: Sequence[str]) -> None:
    from vaelab.tasks import compare

    parser = argparse.ArgumentParser(
        prog="vaelab compare", description="Compare runs: a table of what differs, and plots."
    )
    parser.add_argument("paths", nargs="+", help="multirun directories, run directories or parents")
    parser.add_argument("--metric", help="metric to plot (default test/nll_iwae, else val/elbo)")
    parser.add_argument("--param", help="config key on the x axis (default: each swept number)")
    parser.add_argument("--out", help="folder for compare.csv and the plots")
    opts = parser.parse_args(args)
    result = compare.run(opts.paths, metric=opts.metric, param=opts.param, out_dir=opts.out)
    print(result.markdown)
    if "test/nll_iwae" in result.metrics:
        print(f"K: {compare.K_NOTE}")
    for path in [result.csv_path, *result.plot_paths]:
        print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> None:
    """`vaelab COMMAND ARGS...`."""
    if os.environ.get(DDP_CONFIG_ENV) and os.environ.get("LOCAL_RANK", "0") != "0":
        jobs.ddp_child(os.environ[DDP_CONFIG_ENV])
        return
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: vaelab {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    command, args = argv[0], argv[1:]
    try:
        if command == "compare":
            _compare(args)
        else:
            jobs.run_hydra(command, args)
    except Interrupted as e:
        _fail(str(e), e.exit_code)
    except VaelabError as e:
        _fail(str(e))
    except ConfigRejected as e:  # by vaelab.config.checks' Hydra callback, before any job
        _fail(str(e.error))
    except (HydraException, OmegaConfBaseException) as e:  # before OSError: Hydra's
        _fail(_config_error(e))  # MissingConfigException is one
    except Exception as e:
        message = _outside_error(e)
        if message is None:  # a bug: its traceback helps
            raise
        _fail(message)


def _outside_error(e: Exception) -> str | None:
    """One line for an error that vaelab did not raise but a user can act on, else None."""
    if type(e).__name__ in _KILLED_JOB:
        return (
            f"a job of the sweep was killed ({str(e).splitlines()[0]}); the others kept their "
            "results: `vaelab compare <sweep dir>` shows them all, and "
            "`vaelab train resume=<run dir>` continues the killed run"
        )
    if isinstance(e, OSError) and e.errno in _UNWRITABLE:
        return (
            f"cannot write {e.filename}: {e.strerror}; give a writable folder with "
            "paths.log_dir=<folder> (runs) or the option that names that file"
        )
    return None


def _config_error(e: Exception) -> str:
    """A config Hydra or OmegaConf rejects, with OmegaConf's reason (the expected type, the
    key it does not know) and without Hydra's config search path."""
    message = str(e).split("Config search path")[0].strip()
    cause = e.__cause__
    if isinstance(cause, OmegaConfBaseException):
        message = f"{message} ({str(cause).splitlines()[0]})"
        if cause.parent_node is not None and cause.key is not None:
            key = str(cause.key)
            near = difflib.get_close_matches(key, [str(k) for k in cause.parent_node], n=1)
            if near and near[0] != key:
                message += f"; did you mean {str(cause.full_key)[: -len(key)]}{near[0]}?"
    return " ".join(message.split())


def _fail(message: str, exit_code: int = EXIT_USER_ERROR) -> None:
    exit_with(message, exit_code)


def train() -> None:
    """`python train.py ...`, the same as `vaelab train ...`."""
    main(["train", *sys.argv[1:]])


def evaluate() -> None:
    """`python eval.py ...`, the same as `vaelab eval ...`."""
    main(["eval", *sys.argv[1:]])


def sample() -> None:
    """`python sample.py ...`, the same as `vaelab sample ...`."""
    main(["sample", *sys.argv[1:]])

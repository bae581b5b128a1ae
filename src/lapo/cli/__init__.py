"""The ``lapo`` command: a thin layer of subcommands over the package's functions.

:mod:`lapo.cli.parser` declares the commands (their options come from the config dataclasses
in :mod:`lapo.config`, see :mod:`lapo.cli.options`); :mod:`lapo.cli.commands` holds the
handlers. A user's mistake (bad option, missing file, corrupt data) raises a
:class:`lapo.errors.LapoError`, which ends in one line on stderr that says what is wrong and
what to do, and exit status 2; never a traceback.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from lapo.errors import LapoError

WORK = ("*.safetensors", "obs.npy")
"""Files that hold work worth keeping in an output folder: checkpoints and recorded frames."""


def holds_work(folder: Path) -> bool:
    """Whether ``folder`` holds a checkpoint or recorded frames (anything else a command writes
    first, such as config.json, logs or an empty manifest, is bookkeeping)."""
    return any(next(folder.rglob(pattern), None) is not None for pattern in WORK)


def _new_out_folder(args: object) -> Path | None:
    """The command's ``--out`` if it names a folder that does not exist yet, else None."""
    out = getattr(args, "out", None)
    if not out or Path(out).suffix:  # no --out, or a file (export-video's .mp4)
        return None
    return None if Path(out).exists() else Path(out)


def _remove_if_empty_handed(folder: Path | None) -> bool:
    """Remove ``folder`` (created by the failed command) unless it holds work; returns whether
    it is gone. A folder that held earlier work existed before, so it is never passed here."""
    if folder is None or not folder.is_dir() or holds_work(folder):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return not folder.exists()


def main(argv: list[str] | None = None) -> int:
    """Run ``lapo`` with ``argv`` (default: the process's); returns the exit status."""
    from lapo.cli.parser import build_parser

    args = build_parser().parse_args(argv)
    new_out = _new_out_folder(args)
    try:
        args.func(args)
    except LapoError as e:
        removed = _remove_if_empty_handed(new_out)
        note = f" ({new_out} was removed: it held nothing yet)" if removed else ""
        print(f"lapo: error: {e}{note}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader of our output went away (e.g. `| head`): stop quietly, as Unix tools do
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stays open until exit
        return 0
    except KeyboardInterrupt:
        removed = _remove_if_empty_handed(new_out)
        resumable = not removed and (
            getattr(args, "command", None) == "collect"
            or getattr(args, "data_command", None) == "import-video"
        )
        hint = " with --resume" if resumable else ""
        print(f"lapo: interrupted; run the same command again{hint} to continue", file=sys.stderr)
        return 130
    except BaseException:  # a bug: its traceback follows, but no empty folder stays behind
        _remove_if_empty_handed(new_out)
        raise
    return 0

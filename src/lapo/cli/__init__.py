"""The ``lapo`` command: a thin layer of subcommands over the package's functions.

:mod:`lapo.cli.parser` declares the commands (their options come from the config dataclasses
in :mod:`lapo.config`, see :mod:`lapo.cli.options`); :mod:`lapo.cli.commands` holds the
handlers. A user's mistake (bad option, missing file, corrupt data) raises a
:class:`lapo.errors.LapoError`, which ends in one line on stderr that says what is wrong and
what to do, and exit status 2; never a traceback.
"""

from __future__ import annotations

import os
import sys

from lapo.errors import LapoError


def main(argv: list[str] | None = None) -> int:
    """Run ``lapo`` with ``argv`` (default: the process's); returns the exit status."""
    from lapo.cli.parser import build_parser

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except LapoError as e:
        print(f"lapo: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader of our output went away (e.g. `| head`): stop quietly, as Unix tools do
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stays open until exit
        return 0
    except KeyboardInterrupt:
        resumable = getattr(args, "command", None) == "collect" or (
            getattr(args, "data_command", None) == "import-video"
        )
        hint = " with --resume" if resumable else ""
        print(f"lapo: interrupted; run the same command again{hint} to continue", file=sys.stderr)
        return 130
    return 0

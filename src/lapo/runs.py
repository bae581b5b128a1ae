"""What every training loop does before its first step: the run folder and torch's device."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from lapo.checkpoint import remove_stale_temporaries


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as torch names it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def start_run(out: Path, threads: int = 0, device: str = "auto") -> tuple[Path, torch.device]:
    """Create the run folder ``out``, clear temporaries a killed run left in it, set torch's
    CPU threads (0 = leave the default) and return ``(out, device)``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    if threads > 0:
        torch.set_num_threads(threads)
    return out, resolve_device(device)


class CsvLog:
    """A metrics CSV that survives a resume.

    Opened at ``resume_at`` (the step or update of the checkpoint a run resumes from), it
    drops the rows logged after that point, which the run is about to redo (all rows when
    ``resume_at`` is 0), and writes ``header`` to a new file. ``write`` flushes each row.
    """

    def __init__(self, path: Path, header: list[str], resume_at: int = 0) -> None:
        from lapo.checkpoint import atomic_write_bytes

        path = Path(path)
        if path.exists():
            lines = path.read_text().splitlines(keepends=True)
            kept = lines[:1] + [
                r for r in lines[1:] if resume_at and int(r.split(",")[0]) <= resume_at
            ]
            atomic_write_bytes(path, "".join(kept).encode())
        new = not path.exists() or path.stat().st_size == 0
        self.file = open(path, "a", newline="")  # noqa: SIM115 - closed by close()
        self.writer = csv.writer(self.file)
        if new:
            self.writer.writerow(header)

    def write(self, row: list) -> None:
        self.writer.writerow(row)
        self.file.flush()

    def close(self) -> None:
        self.file.close()

"""The K labelled windows: chosen once by seed, written with the run that used them, and read
back by every later run that must use exactly the same labels (stage 1 with labels, offline
decoding, baselines (a) and (b)).

``labelled_windows.json`` holds the dataset's path and identity (game and frames per split),
the seed, K and the sorted train window starts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lapo.checkpoint import read_json, write_json
from lapo.data.checks import require_actions
from lapo.data.dataset import WindowDataset
from lapo.data.format import DatasetError, more_data_hint, open_dataset

LABELLED_FILE = "labelled_windows.json"


def dataset_identity(data: Path) -> dict:
    """What says two dataset folders hold the same data: game and frames per split."""
    m = open_dataset(data).manifest
    return {"game": m.get("game"), "frames": m.get("frames")}


def choose_labelled(ds: WindowDataset, labels: int, seed: int, data: Path) -> np.ndarray:
    """K distinct train window starts chosen by ``seed`` (sorted), or one clear error."""
    if labels < 1:
        raise DatasetError(f"--labels must be at least 1, got {labels}")
    if labels > len(ds):
        raise DatasetError(
            f"--labels {labels} is more than the {len(ds)} labelled train windows in {data}; "
            f"use at most {len(ds)}, or " + more_data_hint(ds.info.manifest)
        )
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(ds.starts, labels, replace=False))


def read_labelled(folder: Path) -> np.ndarray:
    """The window starts a run labelled (its ``labelled_windows.json``)."""
    path = Path(folder) / LABELLED_FILE
    if not path.exists():
        raise DatasetError(
            f"{folder} has no {LABELLED_FILE}: give a run that used labels (offline decoding, "
            "a baseline or stage 1 with --labels)"
        )
    return np.asarray(read_json(path)["starts"], np.int64)


def write_labelled(folder: Path, data: Path, starts: np.ndarray, seed: int) -> None:
    """Record the labelled windows ``starts`` of ``data`` in ``folder``."""
    write_json(
        Path(folder) / LABELLED_FILE,
        {
            "data": str(data),
            "dataset": dataset_identity(data),
            "seed": seed,
            "labels": int(len(starts)),
            "starts": np.asarray(starts).tolist(),
        },
    )


def labelled_starts(
    data: Path,
    labels: int,
    seed: int,
    labels_from: Path | None = None,
    purpose: str = "",
    train: WindowDataset | None = None,
) -> np.ndarray:
    """The K labelled train windows of ``data``: those of run ``labels_from``, or drawn by
    ``seed`` as every run draws them. Refuses data without actions, and labels recorded on
    another dataset. ``train``: ``data``'s three-frame train windows, if already open."""
    require_actions(data, open_dataset(data).manifest, purpose or "this run")
    train = train if train is not None else WindowDataset(data, "train", k=3)
    if labels_from is None:
        return choose_labelled(train, labels, seed, data)
    starts = read_labelled(labels_from)
    recorded = read_json(Path(labels_from) / LABELLED_FILE)
    same = recorded.get("dataset") == dataset_identity(data) or (
        "dataset" not in recorded and Path(recorded["data"]).resolve() == Path(data).resolve()
    )
    if not same or not np.isin(starts, train.starts).all():
        raise DatasetError(
            f"{labels_from}'s labelled windows were drawn from {recorded['data']}, not {data}: "
            "give --labels-from a run on the same dataset, or --labels K to draw new ones"
        )
    return starts

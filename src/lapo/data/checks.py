"""What a run asks of a dataset, checked in one place with one message each.

- :func:`require_actions`: the dataset records the true actions (probe, decoding, baselines).
- :func:`check_same_game`: the dataset is of the game a run was trained on.

The frame size (64x64x3, what lapo's networks take) is checked when any dataset is opened
(:func:`lapo.data.format.open_dataset`). :func:`dataset_for` opens a dataset's manifest and
applies the checks a caller asks for.
"""

from __future__ import annotations

from pathlib import Path

from lapo.data.format import DatasetError, open_dataset


def require_actions(data: Path, manifest: dict, purpose: str) -> None:
    """Refuse action-free ``data``: ``purpose`` (e.g. "offline decoding") needs true actions."""
    if not manifest.get("has_actions"):
        raise DatasetError(
            f"{data} has no actions: {purpose} needs a dataset with true actions (record one "
            "with 'lapo collect' or import one with actions)"
        )


def check_same_game(what: str, game: str | None, data: Path, manifest: dict) -> None:
    """Refuse ``data`` of another game than ``game``, the game of ``what`` (e.g. a run)."""
    if game and manifest.get("game") != game:
        raise DatasetError(
            f"{what} is for {game} but {data} holds {manifest.get('game')}: use data of {game}"
        )


def dataset_for(
    data: Path, what: str = "", game: str | None = None, actions_for: str | None = None
) -> dict:
    """``data``'s manifest, after checking that it is of ``game`` (the game of ``what``, when
    given) and, with ``actions_for``, that it holds the true actions."""
    manifest = open_dataset(data).manifest
    check_same_game(what, game, data, manifest)
    if actions_for is not None:
        require_actions(data, manifest, actions_for)
    return manifest

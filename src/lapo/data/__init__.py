"""Datasets of Procgen play: the on-disk format, collection, import and window sampling.

``collect`` records a policy into a dataset folder, ``import_lapo`` converts the reference
implementation's ``.npz`` files, :mod:`lapo.data.video` imports videos as action-free data
and :mod:`lapo.data.video_export` writes frames back out as videos, ``WindowDataset`` samples ``k``-frame windows that never
cross an episode boundary. :mod:`lapo.data.checks` holds what a run asks of a dataset (true
actions, the same game) and :mod:`lapo.data.labels` the choice of the K labelled windows.
"""

from lapo.data.checks import check_same_game, dataset_for, require_actions
from lapo.data.collect import collect
from lapo.data.dataset import WindowDataset, to_torch, valid_window_starts
from lapo.data.format import (
    FORMAT_VERSION,
    ChunkWriter,
    DatasetError,
    DatasetInfo,
    DatasetWriter,
    find_problems,
    open_dataset,
    validate_dataset,
)
from lapo.data.lapo_import import import_lapo

__all__ = [
    "FORMAT_VERSION",
    "ChunkWriter",
    "DatasetError",
    "DatasetInfo",
    "DatasetWriter",
    "WindowDataset",
    "check_same_game",
    "collect",
    "dataset_for",
    "find_problems",
    "import_lapo",
    "open_dataset",
    "require_actions",
    "to_torch",
    "valid_window_starts",
    "validate_dataset",
]

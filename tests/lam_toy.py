"""Stage 1 at toy sizes, shared by the stage-1 test files: the settings and a small dataset of
real coinrun frames."""

from pathlib import Path

from lapo.config import QuantizerConfig
from lapo.data.collect import collect

TOY = dict(
    idm_width=1,
    wm_base=4,
    batch_size=8,
    eval_every=4,
    probe_every=8,
    probe_train=256,
    probe_test=128,
    test_windows=64,  # the fixed test windows each evaluation scores
    threads=1,
    quantizer=QuantizerConfig(num_codebooks=1, latents_per_codebook=2, code_dim=4, num_entries=8),
)


def collect_toy_coinrun(out: Path) -> Path:
    """1,200 train and 400 test frames of random coinrun play in ``out``."""
    collect("coinrun", "random", 1200, out, test_frames=400, num_envs=4, chunk_frames=256,
            progress=False)  # fmt: skip
    return out

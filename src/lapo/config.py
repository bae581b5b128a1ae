"""Every stage's configuration, in one place: the dataclasses, their named presets and the
settings a resumed run may change.

Each field's docstring is its ``--option`` help (see :mod:`lapo.cli.options`). Presets: ``paper``
is the published configuration (``../shared/LAPO_NOTES.md``), ``cpu`` the one measured best on
2 CPU cores (README), ``fast`` toy sizes for smoke runs. Validation lives here, in
``__post_init__``: a value out of range raises :class:`~lapo.errors.ConfigError`, which the
CLI prints as one line.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TypeVar, get_type_hints

from lapo.errors import ConfigError, UserError

T = TypeVar("T")


def _preset(presets: dict[str, T], name: str) -> T:
    """A fresh copy of the preset ``name``."""
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}: choose {', '.join(presets)}")
    return dataclasses.replace(presets[name])  # type: ignore[type-var]


def _frames(frames: int) -> None:
    if frames < 1:
        raise ConfigError(f"--frames must be a positive number of frames, got {frames}")


PRECISIONS = ("fp32", "bf16", "auto")


def _positive(cfg: object, *names: str) -> None:
    """Raise :class:`ConfigError` unless every field in ``names`` is at least 1."""
    for name in names:
        value = getattr(cfg, name)
        if value < 1:
            raise ConfigError(f"{flag(name)} must be at least 1, got {value}")


def _choice(cfg: object, name: str, choices: tuple[str, ...]) -> None:
    """Raise :class:`ConfigError` unless field ``name`` is one of ``choices``."""
    value = getattr(cfg, name)
    if value not in choices:
        raise ConfigError(f"{flag(name)} must be one of {', '.join(choices)}, got {value!r}")


@dataclass
class QuantizerConfig:
    """The latent-action bottleneck."""

    kind: str = "ema_vq"
    """ema_vq (LAPO's EMA vector quantiser), fsq (finite scalar quantisation) or none."""
    num_codebooks: int = 2
    """VQ: number of codebooks."""
    latents_per_codebook: int = 4
    """VQ: discrete latents per codebook in one latent action."""
    code_dim: int = 16
    """VQ: dimensions of one code."""
    num_entries: int = 64
    """VQ: entries per codebook."""
    commitment_cost: float = 0.05
    """VQ: weight of the commitment loss ||z - sg(z_q)||^2."""
    decay: float = 0.999
    """VQ: EMA decay of the codebooks."""
    restart_unused_steps: int = 0
    """VQ: restart a code that no latent chose in this many consecutive training steps; 0 = never."""
    reference_counts: bool = False
    """VQ: the reference code's counts: start at 0 and store the Laplace-smoothed counts each step
    (the paper's quantiser); otherwise counts start at 1 and are smoothed only when used."""
    dead_code_threshold: float = 0.0
    """VQ (legacy): also restart codes whose EMA count is below this; with decay 0.999 a code
    counted at 1 takes ~4,600 steps to fall below 0.01, so prefer restart_unused_steps."""
    fsq_levels: str = "8,5,5,5"
    """FSQ: levels per dimension of one group; the latent is split into groups of these."""
    fsq_groups: int = 4
    """FSQ: number of groups (latent_dim = groups x number of levels)."""
    continuous_dim: int = 128
    """none: size of the continuous latent action."""

    @property
    def latent_dim(self) -> int:
        if self.kind == "ema_vq":
            return self.num_codebooks * self.latents_per_codebook * self.code_dim
        if self.kind == "fsq":
            return self.fsq_groups * len(parse_levels(self.fsq_levels))
        if self.kind == "none":
            return self.continuous_dim
        raise ValueError(f"unknown quantizer {self.kind!r}: choose ema_vq, fsq or none")


def parse_levels(levels: str) -> tuple[int, ...]:
    out = tuple(int(x) for x in str(levels).split(","))
    if not out or min(out) < 2:
        raise ValueError(f"fsq_levels must be integers >= 2, got {levels!r}")
    return out


@dataclass
class FastPath:
    """How a training step is computed, not what it computes: shared by stages 1 and 2 (and
    the BC baselines); listed in :data:`FAST_PATH`, so a resumed run may change them."""

    precision: str = "fp32"
    """fp32, or bf16: the forward pass under bfloat16 autocast (CUDA and CPU); the quantiser's
    statistics and the optimiser stay float32. auto: bf16 where the device computes it natively
    (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX), else fp32; config.json records which."""
    channels_last: bool = True
    """Convolutions on channels-last tensors (~1.4x faster on CPU, tensor cores on GPU)."""
    compile: bool = False
    """torch.compile the convolutional networks (a minute or more of compilation at the start:
    pays on a GPU over long runs)."""
    data_on_device: bool = False
    """Hold the train split's frames on the device as uint8 (12 KB a frame: GPU memory, or RAM
    on CPU) and gather each batch there, when they fit; otherwise batches are read from disk."""

    def __post_init__(self) -> None:
        _choice(self, "precision", PRECISIONS)


@dataclass
class LAMConfig(FastPath):
    """Stage 1: latent inverse dynamics model + world model."""

    idm_width: int = 4
    """IMPALA-CNN width multiplier of the IDM."""
    wm_base: int = 24
    """Base channel width of the world model's U-Net."""
    idm_differences: bool = False
    """IDM also sees the frame differences o[t]-o[t-1], o[t+1]-o[t] (not in LAPO)."""
    idm_difference_scale: float = 1.0
    """Multiplier of the frame differences the IDM sees (with idm_differences): they are sparse
    and small next to the frames, and amplified the encoder finds motion in far fewer steps."""
    wm_differences: bool = False
    """The world model also sees o[t] - o[t-1] (times idm_difference_scale), so the motion it
    can extrapolate from its context is explicit and the latent need only carry the rest."""
    wm_residual: bool = False
    """World model predicts o[t+1] - o[t] and adds o[t] (not in LAPO)."""
    wm_action_everywhere: bool = False
    """The latent action also reaches every up-block of the world model (a per-channel shift)
    and its output head (tiled over the image), not only its first layer and bottleneck."""
    changed_pixel_weight: float = 0.0
    """Extra MSE weight on pixels that differ between o[t] and o[t+1]; 0 = plain MSE (LAPO)."""
    changed_pixel_threshold: float = 0.0
    """A pixel counts as changed when some channel moved by more than this (frames in [0, 1]):
    0 = any change; ~0.2 keeps sprites and drops scrolling, shimmering backgrounds."""
    idm_lookahead: int = 1
    """The IDM sees o[t-1], o[t], o[t+k], k drawn per window from 1..this, while the world model
    still predicts o[t+1] (LAOM); 1 = LAPO. Later stages and the probe use k = 1."""
    aug_shift: int = 0
    """Shift each IDM input frame by its own random offset of up to this many pixels; 0 = none."""
    wm_target: str = "pixels"
    """pixels (LAPO's U-Net predicts o[t+1]) or embedding (an MLP predicts an EMA target
    encoder's embedding of o[t+1], as in LAOM; no decoder, so no prediction pictures)."""
    wm_target_tau: float = 0.01
    """embedding: EMA rate of the target encoder per step."""
    wm_mask_past: float = 0.0
    """Probability of hiding o[t-1] from the world model (so it cannot extrapolate motion and
    must read the latent); 0 = never (LAPO)."""
    latent_var_floor: float = 0.0
    """Hinge that keeps each latent dimension's batch variance above this floor (before the
    bottleneck), so the latent cannot collapse to a constant; 0 = off (LAPO)."""
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    learning_rate: float = 3e-4
    """Peak Adam learning rate."""
    warmup_steps: int = 50
    """Steps of linear warm-up from warmup_start x the peak rate."""
    warmup_start: float = 0.1
    """Learning-rate multiplier at step 0."""
    final_lr_scale: float = 0.01
    """Learning-rate multiplier reached (linearly) at the last step."""
    batch_size: int = 128
    """Windows per step."""
    steps: int = 50_000
    """Training steps."""
    grad_clip: float = 2.0
    """Gradient norm clip."""
    eval_every: int = 500
    """Steps between test world-model loss evaluations (and checkpoints)."""
    probe_every: int = 2_000
    """Steps between probe fits (needs actions in the data); 0 = never during training."""
    probe_train: int = 4_096
    """Labelled train windows for the probe during training."""
    probe_test: int = 2_048
    """Test windows for the probe during training."""
    test_windows: int = 512
    """Fixed test windows for the test losses at each evaluation (and the untrained baseline)."""
    labels: int = 0
    """K labelled train windows whose true actions train a linear head on the latent beside the
    video-only loss (LAOM, CLAM); 0 = video only (LAPO). The rest of the data is used without
    actions; the K windows are recorded in labelled_windows.json for stage 3 and the baselines."""
    labels_seed: int = 0
    """Seed that draws the K labelled windows (the same draw as decode offline and baselines)."""
    labels_from: str = ""
    """Use the labelled windows of this run folder (its labelled_windows.json) instead."""
    label_weight: float = 3.0
    """Weight of the labelled cross-entropy beside the prediction loss (3: the best of
    0.01-10 by stage-1 probe on the coinrun demonstrator's data, README "Labels in stage 1")."""
    label_batch: int = 0
    """Labelled windows per step beside each unlabelled batch; 0 = a quarter of batch_size."""
    max_minutes: float = 0.0
    """Stop after this many minutes of training steps (probes and evaluations not counted); the
    lr schedule then runs on whichever of steps or time is further along. 0 = steps only."""
    seed: int = 0
    """Seed of initialisation and batch sampling."""
    threads: int = 0
    """torch CPU threads; 0 = all cores."""
    device: str = "auto"
    """cpu, cuda or auto (under torchrun: each process's own GPU)."""

    def __post_init__(self) -> None:
        _positive(self, "steps", "batch_size", "test_windows")
        if not 0 <= self.changed_pixel_threshold < 1:
            raise ConfigError(
                f"--changed-pixel-threshold must be in [0, 1) (a change of a frame in [0, 1]), "
                f"got {self.changed_pixel_threshold}"
            )
        super().__post_init__()

    @property
    def uses_labels(self) -> bool:
        """Stage 1 with a few action labels (``labels`` or ``labels_from`` given)."""
        return bool(self.labels or self.labels_from)

    def resumable(self) -> tuple[str, ...]:
        """The settings a resumed run may change: :data:`LAM_RESUMABLE`, and the label settings
        when stage 1 uses no labels, since they then shape nothing (a video-only run written
        when the default label weight was 0.01 resumes under today's default)."""
        return LAM_RESUMABLE + (() if self.uses_labels else LABEL_SETTINGS)


# chosen by measurement on 2 CPU cores: see README "Stage 1"
_LAM_CPU = LAMConfig(
    idm_width=1,
    wm_base=8,
    idm_differences=True,
    idm_difference_scale=10.0,
    changed_pixel_weight=30.0,
    precision="auto",
    learning_rate=1e-3,
    batch_size=32,
    steps=3_000,
    warmup_steps=50,
    eval_every=250,
    probe_every=500,
    quantizer=QuantizerConfig(restart_unused_steps=100),
)
LAM_PRESETS: dict[str, LAMConfig] = {
    # ../shared/LAPO_NOTES.md: the published configuration, the reference's quantiser included
    "paper": LAMConfig(quantizer=QuantizerConfig(reference_counts=True)),
    "cpu": _LAM_CPU,
    # toy sizes for smoke runs: the cpu preset, 60 steps of 16 windows (so it follows the cpu
    # preset's recipe by construction)
    "fast": dataclasses.replace(
        _LAM_CPU,
        batch_size=16,
        steps=60,
        warmup_steps=10,
        eval_every=30,
        probe_every=30,
        probe_train=512,
        probe_test=256,
    ),
}


# how a step is computed, not what it computes (bf16 changes the rounding only): a run resumed
# on another machine may change them
FAST_PATH = ("precision", "channels_last", "compile", "data_on_device")

# options a resumed run may change: the budget (which stretches the lr schedule) and the
# bookkeeping; anything that shapes the model or the optimisation must stay as it was
LAM_RESUMABLE = (
    "steps",
    "eval_every",
    "probe_every",
    "probe_train",
    "probe_test",
    "test_windows",
    "threads",
    "device",
    "max_minutes",
    *FAST_PATH,
)
# how the labelled windows are drawn and weighed: inert in a stage 1 without labels
LABEL_SETTINGS = ("labels_seed", "label_weight", "label_batch")


def lam_preset(name: str) -> LAMConfig:
    """A fresh copy of the named stage-1 preset."""
    return _preset(LAM_PRESETS, name)


@dataclass
class BCConfig(FastPath):
    """Stage 2 (latent behaviour cloning) and the BC baselines."""

    width: int = 4
    """IMPALA-CNN width multiplier of the policy."""
    learning_rate: float = 2e-4
    """Peak Adam learning rate."""
    warmup_steps: int = 1_000
    """Steps of linear warm-up from warmup_start x the peak rate; then linear decay to 0."""
    warmup_start: float = 0.01
    """Learning-rate multiplier at step 0."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    batch_size: int = 128
    """Observations per step."""
    steps: int = 60_000
    """Training steps."""
    grad_clip: float = 2.0
    """Gradient norm clip."""
    eval_every: int = 1_000
    """Steps between test-loss evaluations (and checkpoints)."""
    test_windows: int = 1_024
    """Fixed test windows for the test loss at each evaluation (and the untrained baseline)."""
    seed: int = 0
    """Seed of initialisation and batch sampling."""
    threads: int = 0
    """torch CPU threads; 0 = all cores."""
    device: str = "auto"
    """cpu, cuda or auto (under torchrun: each process's own GPU)."""

    def __post_init__(self) -> None:
        _positive(self, "steps", "batch_size", "test_windows")
        super().__post_init__()


BC_PRESETS: dict[str, BCConfig] = {
    # ../shared/LAPO_NOTES.md: the published configuration
    "paper": BCConfig(),
    # chosen by measurement on 2 CPU cores: see README "Stages 2 and 3"
    "cpu": BCConfig(
        width=1,
        learning_rate=1e-3,
        warmup_steps=100,
        batch_size=32,
        steps=2_000,
        eval_every=250,
    ),
    # toy sizes for smoke runs
    "fast": BCConfig(
        width=1, learning_rate=1e-3, warmup_steps=20, batch_size=16, steps=150, eval_every=50
    ),
}


BC_RESUMABLE = ("steps", "eval_every", "test_windows", "threads", "device", *FAST_PATH)


def bc_preset(name: str) -> BCConfig:
    """A fresh copy of the named stage-2 preset."""
    return _preset(BC_PRESETS, name)


@dataclass
class OfflineConfig:
    """Offline decoding from K labelled transitions."""

    labels: int = 256
    """K: labelled train windows the decoder (and the baselines) may use."""
    steps: int = 2_000
    """Decoder gradient steps."""
    batch_size: int = 128
    """Decoder minibatch (at most K)."""
    learning_rate: float = 1e-3
    """Decoder Adam learning rate."""
    weight_decay: float = 1e-4
    """Decoder AdamW weight decay."""
    label_smoothing: float = 0.05
    """Cross-entropy label smoothing (as in LAPO's online decoder fit)."""
    test_windows: int = 4_096
    """Held-out test windows for the accuracies in decode.json."""
    seed: int = 0
    """Seed of the labelled subset and of the decoder's initialisation."""
    decoder_init: str = "fresh"
    """'fresh', or 'stage1-head': start from the action head of a stage-1 run trained with
    --labels (a linear path on the latent, beside the MLP whose last layer starts at zero)."""

    def __post_init__(self) -> None:
        _positive(self, "labels", "steps", "batch_size")
        _choice(self, "decoder_init", ("fresh", "stage1-head"))


@dataclass
class PPOConfig:
    """PPO on Procgen (Schulman et al. 2017), shared by the demonstrators, online decoding and
    the PPO baseline; defaults are Procgen's PPO baseline (Cobbe et al. 2020, easy mode)."""

    frames: int = 1_000_000
    """Environment frames to train for (summed over all envs)."""
    num_envs: int = 64
    """Parallel environments."""
    num_steps: int = 256
    """Steps per environment per rollout."""
    num_minibatches: int = 8
    """Minibatches per epoch."""
    update_epochs: int = 3
    """Epochs over each rollout."""
    learning_rate: float = 5e-4
    """Adam learning rate (constant)."""
    gamma: float = 0.999
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    ent_coef: float = 0.01
    """Entropy bonus coefficient."""
    clip_coef: float = 0.2
    """PPO clipping range."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    max_grad_norm: float = 0.5
    """Gradient norm clip."""
    norm_reward: bool = True
    """Scale rewards by the running std of the discounted return, clip to [-10, 10]."""
    distribution_mode: str = "easy"
    """Procgen distribution mode."""
    num_levels: int = 0
    """Levels to train on; 0 = unbounded."""
    start_level: int = 0
    """First level seed."""
    seed: int = 0
    """Seed of the environments, the network initialisation and action sampling."""
    checkpoint_every: int = 5
    """Save a resumable checkpoint every this many updates (and at the end)."""
    threads: int = 0
    """torch CPU threads; 0 = all cores."""
    device: str = "auto"
    """cpu, cuda or auto."""

    def __post_init__(self) -> None:
        _frames(self.frames)
        _positive(self, "num_envs", "num_steps")

    @property
    def batch_size(self) -> int:
        """Frames per rollout (and per update): ``num_envs * num_steps``."""
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        """Rollouts (and updates) in the run: ``frames`` rounded up to whole rollouts."""
        return max(1, math.ceil(self.frames / self.batch_size))


# what a resumed PPO run may change: the budget and the bookkeeping
PPO_RESUMABLE = ("frames", "checkpoint_every", "threads", "device")


@dataclass
class OnlineConfig(PPOConfig):
    """Online decoding (PPO + decoder re-fits); defaults are the published configuration."""

    frames: int = 4_000_000
    """Environment frames to train for (summed over all envs)."""
    num_steps: int = 64
    """Steps per environment per rollout."""
    learning_rate: float = 1e-2
    """Base learning rate; each parameter group gets a fraction of it (see group_lr)."""
    ent_coef: float = 0.0025
    """Entropy bonus coefficient."""
    lr_decay_frames: int = 4_000_000
    """Every group's rate decays linearly to 0 at this many frames (the paper's 4M)."""
    decoder_fit_start: int = 10_000
    """No decoder fit before this many frames."""
    decoder_fit_end: int = 400_000
    """No decoder fit (and no new pairs) after this many frames."""
    decoder_fit_every_until: int = 50_000
    """Re-fit after every update until this many frames ..."""
    decoder_fit_every: int = 20
    """... and every this many updates after."""
    decoder_epochs: int = 3
    """Epochs of each decoder fit over all pairs so far."""
    decoder_batch_size: int = 512
    """Decoder minibatch."""
    decoder_learning_rate: float = 1e-3
    """Decoder Adam learning rate."""
    label_smoothing: float = 0.05
    """Decoder cross-entropy label smoothing."""


ONLINE_RESUMABLE = PPO_RESUMABLE  # the name stages 1-2 use for theirs

# stage 3: the published configuration is the defaults; cpu is what `lapo reproduce --preset
# cpu` runs; fast, toy sizes for smoke runs
OFFLINE_PRESETS: dict[str, OfflineConfig] = {
    "paper": OfflineConfig(),
    "cpu": OfflineConfig(),
    "fast": OfflineConfig(steps=200, test_windows=1_024),
}
ONLINE_PRESETS: dict[str, OnlineConfig] = {
    "paper": OnlineConfig(),
    "cpu": OnlineConfig(frames=300_000),
    "fast": OnlineConfig(frames=8_192, num_envs=16, num_steps=64, decoder_fit_start=0),
}


@dataclass
class ExpertConfig(PPOConfig):
    """PPO demonstrator training; defaults are Procgen's PPO baseline (easy mode)."""

    game: str = "coinrun"
    """Procgen game to train on."""
    arch: str = "impala"
    """Encoder: impala (IMPALA-CNN) or nature (Nature-DQN CNN, ~5x cheaper on CPU)."""
    width: int = 1
    """IMPALA-CNN width multiplier (channels 16, 32, 32 times this)."""


@dataclass
class SupervisedIDMConfig:
    """Baseline (b)'s supervised IDM: the stage-1 IDM's encoder with a 15-way head."""

    width: int = 1
    """IMPALA-CNN width multiplier."""
    differences: bool = True
    """Also see the frame differences (as the cpu preset's latent IDM does)."""
    difference_scale: float = 10.0
    """Multiplier of the frame differences (as the cpu preset's idm_difference_scale)."""
    steps: int = 1_000
    """Training steps on the K labelled windows."""
    batch_size: int = 32
    """Windows per step (at most K)."""
    learning_rate: float = 5e-4
    """Adam learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""

    def __post_init__(self) -> None:
        _positive(self, "steps", "batch_size")


@dataclass
class EvalConfig:
    """``lapo eval``: how a policy is played."""

    episodes: int = 100
    """Episodes to play per seed."""
    seeds: int = 1
    """Seeds to run (seed, seed+1, ...)."""
    seed: int = 0
    """Environment and sampling seed."""
    num_envs: int = 16
    """Parallel environments."""
    distribution_mode: str = "easy"
    """Procgen distribution mode: easy or hard."""

    def __post_init__(self) -> None:
        _positive(self, "episodes", "seeds", "num_envs")


DEMO_GAMES = ("coinrun", "jumper")
DEMO_POLICIES = ("demonstrator", "random")


@dataclass
class DemoConfig:
    """``lapo demo``: data, stage 1, probe, stage 2, offline decoding, baselines, report."""

    game: str = "coinrun"
    """Game with a shipped demonstrator (coinrun or jumper); any Procgen game with --policy
    random."""
    policy: str = "demonstrator"
    """Who plays the recorded video: demonstrator (the shipped one: the whole method) or
    random (any game, stage 1 only: its probe, ceiling and pictures; a random policy is
    nothing to imitate, so stages 2 and 3 are skipped)."""
    frames: int = 20_000
    """Frames to record for training (plus frames/5 for testing)."""
    lam_steps: int = 1_500
    """Stage-1 training steps (cpu preset otherwise)."""
    lam_batch: int = 32
    """Stage-1 batch size."""
    bc_steps: int = 800
    """Stage-2 (and BC baseline) training steps (cpu preset otherwise)."""
    bc_batch: int = 32
    """Stage-2 (and BC baseline) batch size."""
    labels: int = 1_000
    """K: labelled transitions for the decoder and the BC baseline."""
    probe_labels: int = 4_096
    """Labelled windows for the probe (at most the train split)."""
    ceiling_steps: int = 600
    """Training steps of the supervised ceiling (the IDM encoder on the true actions)."""
    episodes: int = 48
    """Evaluation episodes per policy."""
    compare_labels: bool = False
    """Also run the two methods that use the K labels beyond a decoder: LAPO with the labels
    in stage 1 (stage 2 and decoding follow, on the same K) and baseline (b), a supervised
    IDM on the K labels that labels every frame for BC (about 8 more minutes)."""
    seed: int = 0
    """Seed of everything."""
    threads: int = 0
    """torch CPU threads; 0 = all cores."""

    def __post_init__(self) -> None:
        _positive(self, "frames", "lam_steps", "bc_steps", "labels", "episodes")
        if self.policy not in DEMO_POLICIES:
            raise ConfigError(
                f"unknown --policy {self.policy!r}: choose one of {', '.join(DEMO_POLICIES)}"
            )
        if self.policy == "demonstrator" and self.game not in DEMO_GAMES:
            raise ConfigError(
                f"no demonstrator ships for {self.game!r}; the demo plays one of: "
                f"{', '.join(DEMO_GAMES)} (or pass --policy random to see stage 1 alone on "
                "random play)"
            )
        if self.policy == "random" and self.compare_labels:
            raise ConfigError(
                "--compare-labels compares policies, and a --policy random demo trains none "
                "(it stops after stage 1); drop one of the two"
            )


DEMO_FAST = dict(
    frames=3_000,
    lam_steps=60,
    lam_batch=16,
    bc_steps=100,
    bc_batch=16,
    labels=500,
    probe_labels=1_024,
    ceiling_steps=60,
    episodes=8,
)


VIDEO_SIZE = 64  # lapo's networks take 64x64 frames (lapo.envs.OBS_SHAPE)
VIDEO_CROPS = ("centre", "none")


@dataclass(frozen=True)
class VideoImportConfig:
    """How videos become frames and splits; recorded in the manifest, and a resumed import
    must use the same."""

    fps: float | None = None
    """Output frame rate; None: each video's own average rate."""
    crop: str = "centre"
    """centre: the centre square; none: the whole frame squeezed square."""
    size: int = VIDEO_SIZE
    """Output frames are size x size (lapo's networks take 64)."""
    start: float = 0.0
    """Skip the first seconds of every video."""
    end: float | None = None
    """Stop every video at this second (None: its end)."""
    test_fraction: float = 0.1
    """Fraction of the videos (whole videos) that go to the test split."""
    seed: int = 0
    """Seed of the choice of test videos."""
    game: str | None = None
    """The Procgen game the videos show, if any (recorded as the dataset's game)."""

    def check(self) -> None:
        """Raise :class:`~lapo.errors.UserError` on a value that cannot work."""
        if self.size != VIDEO_SIZE:
            raise UserError(
                f"--size {self.size}: lapo's networks take {VIDEO_SIZE}x{VIDEO_SIZE} frames (the dataset "
                f"format and the world model's U-Net are built for them); use --size {VIDEO_SIZE}"
            )
        _choice(self, "crop", VIDEO_CROPS)
        if self.fps is not None and not 0 < self.fps <= 1000:
            raise UserError(f"--fps must be in (0, 1000], got {self.fps}")
        if self.start < 0 or (self.end is not None and self.end <= self.start):
            raise UserError(f"--start {self.start} / --end {self.end}: need 0 <= start < end")
        if not 0 <= self.test_fraction < 1:
            raise UserError(f"--test-fraction must be in [0, 1), got {self.test_fraction}")
        if self.game is not None:
            from lapo.envs import check_game

            check_game(self.game)


PAPER_LABELS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


STEPS = ("data", "lam", "bc", "offline", "labels", "online", "ppo")


@dataclass
class ReproduceConfig:
    """``lapo reproduce``: the grid of games x seeds x steps."""

    games: list[str] = field(default_factory=lambda: ["coinrun", "jumper"])
    """Games, comma-separated ('all' on the command line: the 16 Procgen games)."""
    seeds: int = 1
    """Training seeds per game."""
    first_seed: int = 0
    """The first training seed: seeds first-seed to first-seed + seeds - 1. Seeds run on several
    machines (each its own --first-seed) are summarised together by copying their GAME/seedN
    folders into one --out and running the command again with --seeds covering them all."""
    preset: str = "paper"
    """The stages' configuration: paper or cpu."""
    steps: list[str] = field(default_factory=lambda: list(STEPS), metadata={"flag": "stages"})
    """Steps to run (data is always collected; labels: LAPO with the K labels also in stage 1,
    a stage 1, stage 2 and decoding per K)."""
    labels: list[int] = field(default_factory=lambda: list(PAPER_LABELS))
    """Label counts K, comma-separated."""
    frames: int = 1_000_000
    """Demonstrator frames to record per game."""
    online_frames: int = 4_000_000
    """Frames of online decoding and of PPO from scratch."""
    expert_frames: int = 25_000_000
    """PPO frames of a demonstrator trained for a game without a shipped one."""
    data_root: str | None = None
    """Use DIR/GAME datasets (e.g. imported) instead of collecting."""
    episodes: int = 100
    """Evaluation episodes per policy."""
    jobs: int = 2
    """Steps run at once."""
    threads: int = 1
    """torch threads per step."""
    extra: dict[str, list[str]] = field(default_factory=dict)
    """Extra command-line options per step kind (lam, bc, idm, online, ppo)."""

    def __post_init__(self) -> None:
        _positive(self, "seeds", "jobs", "episodes")
        if self.first_seed < 0:
            raise ConfigError(f"--first-seed must be at least 0, got {self.first_seed}")
        unknown = sorted(set(self.steps) - set(STEPS))
        if unknown:
            raise ConfigError(
                f"unknown --stages {', '.join(unknown)}: choose from {', '.join(STEPS)}"
            )
        if not self.labels or min(self.labels) < 1:
            raise ConfigError(f"every --labels count must be at least 1, got {self.labels}")

    @property
    def seed_range(self) -> range:
        """The training seeds of the grid."""
        return range(self.first_seed, self.first_seed + self.seeds)


PPO_BASELINE = ExpertConfig(num_steps=64)
"""Baseline (c)'s defaults: Procgen's PPO on LAPO's online rollout shape (64 envs x 64 steps)."""


REPRODUCE_PRESETS: dict[str, ReproduceConfig] = {
    "paper": ReproduceConfig(),
    "cpu": ReproduceConfig(preset="cpu", labels=[256, 1000], frames=51_200, online_frames=300_000),
}


PRESETS: dict[type, dict] = {
    LAMConfig: LAM_PRESETS,
    BCConfig: BC_PRESETS,
    OfflineConfig: OFFLINE_PRESETS,
    OnlineConfig: ONLINE_PRESETS,
    ReproduceConfig: REPRODUCE_PRESETS,
}
"""Each config class with named presets: class -> name -> preset."""


def preset(cls: type[T], name: str) -> T:
    """A fresh copy of the preset ``name`` of config class ``cls`` (see :data:`PRESETS`)."""
    return _preset(PRESETS[cls], name)


def flag(name: str) -> str:
    """The command-line option of config field ``name`` (``a.b`` for a nested field)."""
    return "--" + name.replace("_", "-")


def field_flag(f: dataclasses.Field, prefix: str = "") -> str:
    """The option of field ``f`` (its ``metadata["flag"]`` if set, else its name)."""
    return flag(prefix + f.metadata.get("flag", f.name))


def option(name_flag: str, value: object) -> list[str]:
    """``[flag, value]`` as a command line spells it: booleans as ``--x`` / ``--no-x``,
    lists comma-separated."""
    if isinstance(value, bool):
        return [name_flag if value else "--no-" + name_flag[2:]]
    if isinstance(value, list | tuple):
        return [name_flag, ",".join(str(v) for v in value)]
    return [name_flag, str(value)]


def to_flags(cfg: object, base: object = None, prefix: str = "") -> list[str]:
    """The options that turn ``base`` (default: the class's defaults) into ``cfg``: one per
    field whose value differs, so a command built from a config spells every flag as the
    CLI (generated from the same fields) reads it."""
    base = type(cfg)() if base is None else base
    out: list[str] = []
    for f in dataclasses.fields(cfg):  # type: ignore[arg-type]
        value, was = getattr(cfg, f.name), getattr(base, f.name)
        if dataclasses.is_dataclass(value):
            out += to_flags(value, was, prefix + f.name + ".")
        elif value != was:
            out += option(field_flag(f, prefix), value)
    return out


def config_from_dict(cls: type[T], values: dict, where: str = "") -> T:
    """``cls`` from what ``dataclasses.asdict`` made of one (a saved run's config section);
    an unknown key raises :class:`ConfigError` naming ``where`` it came from."""
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a {cls.__name__} section, got {values!r:.60}")
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown {cls.__name__} setting(s) {', '.join(unknown)}")
    hints = get_type_hints(cls)
    return cls(
        **{
            k: config_from_dict(hints[k], v, where) if dataclasses.is_dataclass(hints[k]) else v
            for k, v in values.items()
        }
    )

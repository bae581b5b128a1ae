"""Every stage's configuration, in one place: the dataclasses and their named presets.

Each field declares, beside its default, what it accepts and whether a resumed run may change
it (:func:`setting`: a numeric field's :class:`Range`, a text field's ``choices``,
``resumable``); :class:`Config` checks every declared range when a config is built, so an
out-of-range config never exists: :class:`~lapo.errors.FieldError` names the field, and the CLI
prints it as one line with the field's ``--option``. Each field's docstring is its ``--option``
help (see :mod:`lapo.cli.options`).

Presets (:func:`preset`): ``paper`` is the published configuration (``../shared/LAPO_NOTES.md``),
``cpu`` the one measured best on 2 CPU cores (docs/results/stage1.md), ``fast`` toy sizes for smoke runs.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from lapo.errors import ConfigError, FieldError

T = TypeVar("T")


@dataclass(frozen=True)
class Range:
    """The values a numeric field accepts: ``lo`` to ``hi``, each end included unless
    ``lo_open`` / ``hi_open``; with ``off`` (what 0 means, e.g. "never") 0 too. Every range is
    finite: a maximum is generous, and where memory grows with the value it keeps the run
    within one machine (see the shared ranges below). NaN and infinities are never in one."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False
    off: str = ""
    note: str = ""
    """Why, where the bound is not obvious (shown after the value)."""

    def __contains__(self, value: float) -> bool:
        if self.off and value == 0:
            return True
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below  # NaN compares false both ways

    def __str__(self) -> str:
        if self.lo == self.hi:
            text = _number(self.lo)
        else:
            low = f"{'above' if self.lo_open else 'at least'} {_number(self.lo)}"
            text = f"{low} and {'below' if self.hi_open else 'at most'} {_number(self.hi)}"
        return f"0 ({self.off}) or {text}" if self.off else text


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


# shared ranges; a maximum marked "memory" bounds what one step or one run holds at once
SEED = Range(0, 1_000_000_000)  # leaves room below procgen's 2**31 for seed + k
THREADS = Range(1, 1024, off="all cores")
TRAIN_STEPS = Range(1, 1_000_000_000)  # training steps, and steps (or updates) between events
EPOCHS = Range(1, 1_000)
FRAMES = Range(1, 10_000_000_000)  # environment frames (10 billion: 400x the demonstrators')
EPISODES = Range(1, 1_000_000)
# memory: 65,536 windows of three 64x64 RGB frames are 2.4 GB as uint8, 9.7 GB as float32
BATCH = Range(1, 65_536)
# memory: windows held at once (fixed test sets, probe sets): 262,144 are 9.7 GB as uint8
WINDOWS = Range(1, 262_144)
LABELS = Range(1, 10_000_000)  # K labelled windows, drawn from the data (as ids, not frames)
# memory: the IMPALA-CNN's channels are 16, 32, 32 times this; 64 is 16x the paper's 4
WIDTH = Range(1, 64)
# memory: parallel Procgen environments, each with its own game state and frame buffers
ENVS = Range(1, 1024)
LEARNING_RATE = Range(0, 10, lo_open=True)
UNIT = Range(0, 1)  # probabilities, fractions, discounts and multipliers of a rate
WEIGHT = Range(0, 10_000)  # weights of loss terms; 0 drops the term
DECAY = Range(0, 100)  # AdamW weight decay
CLIP = Range(0, 1_000_000, lo_open=True)  # gradient-norm clips
DIFFERENCE_SCALE = Range(0, 1_000, lo_open=True)
MAX_LATENT_DIM = 16_384
"""memory: the latent action's dimensions at most (128x the paper's 128); the IDM's head, the
world model's conditioning and the policy's head all grow with it."""


def setting(
    default: Any = dataclasses.MISSING,
    valid: Range | None = None,
    *,
    factory: Any = dataclasses.MISSING,
    choices: tuple[str, ...] = (),
    resumable: bool = False,
    label_setting: bool = False,
    flag: str = "",
) -> Any:
    """A config field: its default (or ``factory``), the :class:`Range` a number must be
    ``valid`` in or the ``choices`` a text must be one of; ``resumable``: a resumed run may
    change it; ``label_setting``: how stage 1's labelled windows are drawn and weighed;
    ``flag``: its command-line option, when not its name."""
    metadata: dict[str, Any] = {}
    if valid is not None:
        metadata["range"] = valid
    if choices:
        metadata["choices"] = choices
    if resumable:
        metadata["resumable"] = True
    if label_setting:
        metadata["label_setting"] = True
    if flag:
        metadata["flag"] = flag
    return field(default=default, default_factory=factory, metadata=metadata)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def numeric_kind(hint: Any) -> type | None:
    """``int`` or ``float`` for a field typed as one (also ``X | None`` and ``list[X]``), else
    None (a bool is no number here)."""
    args = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) is list or len(args) == 1:
        hint = args[0]
    return hint if hint in (int, float) else None


def _problem(f: dataclasses.Field, value: Any, hint: Any) -> str:
    """What is wrong with ``value`` of field ``f`` (typed ``hint``), or ``""``."""
    if "choices" in f.metadata and value not in f.metadata["choices"]:
        return f"must be one of {', '.join(f.metadata['choices'])}, got {value!r}"
    kind = numeric_kind(hint)
    if kind is None:
        return ""
    valid: Range | None = f.metadata.get("range")
    if valid is None:
        raise TypeError(f"numeric config field {f.name!r} declares no range: use setting()")
    if value is None and type(None) in get_args(hint):
        return ""
    each = value if get_origin(hint) is list and isinstance(value, list) else [value]
    number = numbers.Integral if kind is int else numbers.Real
    if any(isinstance(v, bool) or not isinstance(v, number) for v in each):
        return f"must be {'a whole number' if kind is int else 'a number'}, got {value!r}"
    if all(v in valid for v in each):
        return ""
    note = f" ({valid.note})" if valid.note else ""
    return f"must {'each ' if each is value else ''}be {valid}, got {value!r}{note}"


class Config:
    """What every config dataclass shares: building one checks each field's declared range and
    choices (a subclass's ``__post_init__`` calls this first, then checks what relates its
    fields), and the fields marked ``resumable`` are the settings a resumed run may change."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            problem = _problem(f, getattr(self, f.name), hints[f.name])
            if problem:
                raise FieldError(f.name, problem)

    def resumable(self) -> tuple[str, ...]:
        """The settings a resumed run may change: the budget and the bookkeeping; anything that
        shapes the model or the optimisation must stay as it was."""
        return _marked(self, "resumable")


def _marked(cfg: Any, key: str) -> tuple[str, ...]:
    """The names of ``cfg``'s fields whose metadata holds ``key``."""
    return tuple(f.name for f in dataclasses.fields(cfg) if f.metadata.get(key))


PRESETS: dict[type, dict[str, Any]] = {}
"""Each config class with named presets: class -> name -> preset (read with :func:`preset`)."""


def preset(cls: type[T], name: str) -> T:
    """A fresh copy of the preset ``name`` of config class ``cls``."""
    presets = PRESETS[cls]
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}: choose {', '.join(presets)}")
    return copy.deepcopy(presets[name])


def preset_names(cls: type) -> tuple[str, ...]:
    """The names of ``cls``'s presets."""
    return tuple(PRESETS[cls])


PRECISIONS = ("fp32", "bf16", "auto")
QUANTIZERS = ("ema_vq", "fsq", "none")
# the PPO demonstrators' encoders (lapo.models.impala.make_encoder)
ENCODERS = ("impala", "nature", "nature_small")


@dataclass
class QuantizerConfig(Config):
    """The latent-action bottleneck."""

    kind: str = setting("ema_vq", choices=QUANTIZERS)
    """ema_vq (LAPO's EMA vector quantiser), fsq (finite scalar quantisation) or none."""
    num_codebooks: int = setting(2, Range(1, 64))
    """VQ: number of codebooks."""
    latents_per_codebook: int = setting(4, Range(1, 64))
    """VQ: discrete latents per codebook in one latent action."""
    code_dim: int = setting(16, Range(1, 1_024))
    """VQ: dimensions of one code."""
    num_entries: int = setting(64, Range(1, 65_536))
    """VQ: entries per codebook."""
    commitment_cost: float = setting(0.05, WEIGHT)
    """VQ: weight of the commitment loss ||z - sg(z_q)||^2."""
    decay: float = setting(0.999, Range(0, 1, hi_open=True))
    """VQ: EMA decay of the codebooks."""
    restart_unused_steps: int = setting(0, Range(1, 1_000_000_000, off="never"))
    """VQ: restart a code that no latent chose in this many consecutive training steps; 0 = never."""
    reference_counts: bool = False
    """VQ: the reference code's counts: start at 0 and store the Laplace-smoothed counts each step
    (the paper's quantiser); otherwise counts start at 1 and are smoothed only when used."""
    fsq_levels: str = "8,5,5,5"
    """FSQ: levels per dimension of one group; the latent is split into groups of these."""
    fsq_groups: int = setting(4, Range(1, 4_096))
    """FSQ: number of groups (latent_dim = groups x number of levels)."""
    continuous_dim: int = setting(128, Range(1, MAX_LATENT_DIM))
    """none: size of the continuous latent action."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind == "fsq":
            try:
                parse_levels(self.fsq_levels)
            except ValueError:
                problem = (
                    f"must be integers of at least 2, comma-separated, got {self.fsq_levels!r}"
                )
                raise FieldError("fsq_levels", problem) from None
        if self.latent_dim > MAX_LATENT_DIM:
            raise ConfigError(
                f"the {self.kind} latent action would have {self.latent_dim} dimensions, at most "
                f"{MAX_LATENT_DIM}: its sizes multiply (num_codebooks x latents_per_codebook x "
                "code_dim, or fsq_groups x the number of fsq_levels)"
            )

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
class FastPath(Config):
    """How a training step is computed, not what it computes: shared by stages 1 and 2 (and
    the BC baselines); a resumed run may change them (bf16 changes the rounding only), so a run
    moves between machines."""

    precision: str = setting("fp32", choices=PRECISIONS, resumable=True)
    """fp32, or bf16: the forward pass under bfloat16 autocast (CUDA and CPU); the quantiser's
    statistics and the optimiser stay float32. auto: bf16 where the device computes it natively
    (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX), else fp32; config.json records which."""
    channels_last: bool = setting(True, resumable=True)
    """Convolutions on channels-last tensors (~1.4x faster on CPU, tensor cores on GPU)."""
    compile: bool = setting(False, resumable=True)
    """torch.compile the convolutional networks (a minute or more of compilation at the start:
    pays on a GPU over long runs)."""
    data_on_device: bool = setting(False, resumable=True)
    """Hold the train split's frames on the device as uint8 (12 KB a frame: GPU memory, or RAM
    on CPU) and gather each batch there, when they fit; otherwise batches are read from disk."""


@dataclass
class LAMConfig(FastPath):
    """Stage 1: latent inverse dynamics model + world model."""

    idm_width: int = setting(4, WIDTH)
    """IMPALA-CNN width multiplier of the IDM."""
    wm_base: int = setting(24, Range(1, 256))  # memory: the U-Net's channels grow with it
    """Base channel width of the world model's U-Net."""
    idm_differences: bool = False
    """IDM also sees the frame differences o[t]-o[t-1], o[t+1]-o[t] (not in LAPO)."""
    idm_difference_scale: float = setting(1.0, DIFFERENCE_SCALE)
    """Multiplier of the frame differences the IDM sees (with idm_differences): they are sparse
    and small next to the frames, and amplified the encoder finds motion in far fewer steps."""
    wm_differences: bool = False
    """The world model also sees o[t] - o[t-1] (times idm_difference_scale), so the motion it
    can extrapolate from its context is explicit and the latent need only carry the rest."""
    wm_camera_shift: bool = False
    """The world model also sees o[t] rolled by the global shift between o[t] and o[t+1] (phase
    correlation on the true next frame, without gradient): the camera's move is handed to it,
    so z[t] need not carry the displacement, only what moved against the camera (a sprite's
    turn, a jump's start). Where o[t+1] is unknown (play, open-loop rollouts) the shift between
    o[t-1] and o[t] stands in. Not in LAPO; on coinrun and starpilot it did not put the action
    in the latent (docs/results/stage1.md)."""
    wm_residual: bool = False
    """World model predicts o[t+1] - o[t] and adds o[t] (not in LAPO)."""
    wm_action_everywhere: bool = False
    """The latent action also reaches every up-block of the world model (a per-channel shift)
    and its output head (tiled over the image), not only its first layer and bottleneck."""
    wm_space_to_depth: bool = False
    """The world model's U-Net works at 32x32: its input frames are folded 2x2 into channels
    (pixel unshuffle, 3 -> 12 per frame) and its head predicts 12 channels unfolded into the
    64x64 frame (pixel shuffle), so no layer runs at 64x64. A step of the cpu preset's world
    model costs about a third as much on a CPU (docs/results/speed.md). Not in LAPO."""
    changed_pixel_weight: float = setting(0.0, WEIGHT)
    """Extra MSE weight on pixels that differ between o[t] and o[t+1]; 0 = plain MSE (LAPO)."""
    changed_pixel_threshold: float = setting(0.0, Range(0, 1, hi_open=True))
    """A pixel counts as changed when some channel moved by more than this (frames in [0, 1]):
    0 = any change; ~0.2 keeps sprites and drops scrolling, shimmering backgrounds."""
    idm_lookahead: int = setting(1, Range(1, 32))  # a window spans lookahead + 2 frames
    """The IDM sees o[t-1], o[t], o[t+k], k drawn per window from 1..this, while the world model
    still predicts o[t+1] (LAOM); 1 = LAPO. Later stages and the probe use k = 1."""
    aug_shift: int = setting(0, Range(0, 32))  # half a 64-pixel frame
    """Shift each IDM input frame by its own random offset of up to this many pixels; 0 = none."""
    wm_target: str = setting("pixels", choices=("pixels", "embedding"))
    """pixels (LAPO's U-Net predicts o[t+1]) or embedding (an MLP predicts an EMA target
    encoder's embedding of o[t+1], as in LAOM; no decoder, so no prediction pictures)."""
    wm_target_tau: float = setting(0.01, UNIT)
    """embedding: EMA rate of the target encoder per step."""
    wm_mask_past: float = setting(0.0, UNIT)
    """Probability of hiding o[t-1] from the world model (so it cannot extrapolate motion and
    must read the latent); 0 = never (LAPO)."""
    latent_var_floor: float = setting(0.0, Range(0, 1_000))
    """Hinge that keeps each latent dimension's batch variance above this floor (before the
    bottleneck), so the latent cannot collapse to a constant; 0 = off (LAPO)."""
    idm_linear_features: bool = False
    """The IDM encoder's last linear layer feeds the latent head without its ReLU, so the
    latent cannot die: on heist the preset's IDM switched that ReLU off for every input within
    1,000 steps and every window got the same latent (docs/results/stage1.md). Not in LAPO."""
    wm_prev_latent: bool = False
    """The world model also gets the previous step's quantised latent z[t-1] (the IDM on o[t-2],
    o[t-1], o[t], without gradient) beside z[t], so z[t] need only carry what changed: the agent
    keeps most of its velocity from step to step. Windows grow by o[t-2]; later stages and the
    probe use z[t] alone. Not in LAPO; on coinrun it did not put the action in the latent
    (docs/results/stage1.md)."""
    latent_decorrelation: float = setting(0.0, WEIGHT)
    """Weight of a penalty on what z[t] shares with z[t-1] (the IDM on o[t-2], o[t-1], o[t],
    without gradient): the mean squared cross-correlation of their batch-standardised dimensions.
    Random-play actions are independent from step to step, velocities are not. Windows grow by
    o[t-2]; 0 = off. On coinrun the world model leaned less on the latent and the probe did
    not move (docs/results/stage1.md)."""
    motion_compensation: bool = False
    """Changed pixels (changed_pixel_weight) are measured against the global shift between o[t]
    and o[t+1] (phase correlation): |o[t+1] - shift(o[t])|, so a camera that follows the agent
    does not mark the whole frame as changed. On starpilot (with motion_compensate_idm) the
    probe stayed near chance (docs/results/stage1.md)."""
    motion_compensate_idm: bool = False
    """The IDM's frame differences (idm_differences) are taken against the global shift between
    each pair of frames too, in every stage that uses the IDM. Measured with
    motion_compensation (docs/results/stage1.md)."""
    quantizer: QuantizerConfig = setting(factory=QuantizerConfig)
    learning_rate: float = setting(3e-4, LEARNING_RATE)
    """Peak Adam learning rate."""
    warmup_steps: int = setting(50, Range(0, TRAIN_STEPS.hi))
    """Steps of linear warm-up from warmup_start x the peak rate."""
    warmup_start: float = setting(0.1, UNIT)
    """Learning-rate multiplier at step 0."""
    final_lr_scale: float = setting(0.01, UNIT)
    """Learning-rate multiplier reached (linearly) at the last step."""
    batch_size: int = setting(128, BATCH)
    """Windows per step."""
    steps: int = setting(50_000, TRAIN_STEPS, resumable=True)
    """Training steps."""
    grad_clip: float = setting(2.0, CLIP)
    """Gradient norm clip."""
    eval_every: int = setting(500, TRAIN_STEPS, resumable=True)
    """Steps between test world-model loss evaluations (and checkpoints)."""
    probe_every: int = setting(2_000, Range(1, TRAIN_STEPS.hi, off="never"), resumable=True)
    """Steps between probe fits (needs actions in the data); 0 = never during training."""
    probe_train: int = setting(4_096, WINDOWS, resumable=True)
    """Labelled train windows for the probe during training."""
    probe_test: int = setting(2_048, WINDOWS, resumable=True)
    """Test windows for the probe during training."""
    test_windows: int = setting(512, WINDOWS, resumable=True)
    """Fixed test windows for the test losses at each evaluation (and the untrained baseline)."""
    labels: int = setting(0, Range(1, LABELS.hi, off="video only"))
    """K labelled train windows whose true actions train a linear head on the latent beside the
    video-only loss (LAOM, CLAM); 0 = video only (LAPO). The rest of the data is used without
    actions; the K windows are recorded in labelled_windows.json for stage 3 and the baselines."""
    labels_seed: int = setting(0, SEED, label_setting=True)
    """Seed that draws the K labelled windows (the same draw as decode offline and baselines)."""
    labels_from: str = ""
    """Use the labelled windows of this run folder (its labelled_windows.json) instead."""
    label_weight: float = setting(3.0, WEIGHT, label_setting=True)
    """Weight of the labelled cross-entropy beside the prediction loss (3: the best of
    0.01-10 by stage-1 probe on the coinrun demonstrator's data, docs/results/labels.md)."""
    label_batch: int = setting(
        0, Range(1, BATCH.hi, off="a quarter of batch_size"), label_setting=True
    )
    """Labelled windows per step beside each unlabelled batch; 0 = a quarter of batch_size."""
    max_minutes: float = setting(
        0.0, Range(0, 10_000_000, lo_open=True, off="steps only"), resumable=True
    )
    """Stop after this many minutes of training steps (probes and evaluations not counted); the
    lr schedule then runs on whichever of steps or time is further along. 0 = steps only."""
    seed: int = setting(0, SEED)
    """Seed of initialisation and batch sampling."""
    threads: int = setting(0, THREADS, resumable=True)
    """torch CPU threads; 0 = all cores."""
    device: str = setting("auto", resumable=True)
    """cpu, cuda or auto (under torchrun: each process's own GPU)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.motion_compensation and self.changed_pixel_weight == 0:
            raise FieldError("motion_compensation", "needs --changed-pixel-weight above 0: it "
                             "changes which pixels that weight counts as changed")  # fmt: skip
        if self.wm_space_to_depth and self.wm_target != "pixels":
            raise FieldError("wm_space_to_depth", "needs --wm-target pixels: it changes the "
                             "pixel world model's U-Net")  # fmt: skip
        if self.motion_compensate_idm and not self.idm_differences:
            raise FieldError("motion_compensate_idm", "needs --idm-differences: it changes the "
                             "frame differences the IDM sees")  # fmt: skip

    @property
    def uses_labels(self) -> bool:
        """Stage 1 with a few action labels (``labels`` or ``labels_from`` given)."""
        return bool(self.labels or self.labels_from)

    @property
    def previous_frames(self) -> int:
        """1 when training windows also hold o[t-2] for the previous latent z[t-1]
        (``wm_prev_latent``, ``latent_decorrelation``), else 0."""
        return int(self.wm_prev_latent or self.latent_decorrelation > 0)

    def resumable(self) -> tuple[str, ...]:
        """The fields marked ``resumable``, and the label settings when stage 1 uses no labels,
        since they then shape nothing (a video-only run written when the default label weight
        was 0.01 resumes under today's default)."""
        labels = () if self.uses_labels else _marked(self, "label_setting")
        return super().resumable() + labels


# chosen by measurement on 2 CPU cores: see docs/results/stage1.md
_LAM_CPU = LAMConfig(
    idm_width=1,
    wm_base=8,
    idm_differences=True,
    idm_difference_scale=10.0,
    changed_pixel_weight=30.0,
    # a floor near a healthy latent's own variance (maze: 2e-4 per dimension), so it acts only
    # where the latent is dying: heist's collapsed without it (0.056, the majority class) and
    # reached 0.211 with it; maze 0.164 and bigfish 0.397 against 0.175 and 0.416 without,
    # level within noise (docs/results/stage1.md)
    latent_var_floor=1e-4,
    precision="auto",
    learning_rate=1e-3,
    batch_size=32,
    steps=3_000,
    # 3,000 steps or 12 minutes of them, whichever comes first, so that with its probes and
    # test losses a run ends within 15 minutes on 2 cores of a slow CPU (one thread of an AVX2
    # EPYC took 21 minutes for the 3,000 steps); a faster CPU does all 3,000
    max_minutes=12.0,
    warmup_steps=50,
    eval_every=250,
    probe_every=500,
    quantizer=QuantizerConfig(restart_unused_steps=100),
)
PRESETS[LAMConfig] = {
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


@dataclass
class BCConfig(FastPath):
    """Stage 2 (latent behaviour cloning) and the BC baselines."""

    width: int = setting(4, WIDTH)
    """IMPALA-CNN width multiplier of the policy."""
    arch: str = setting("impala", choices=ENCODERS)
    """The policy's encoder: impala (the paper's), or nature / nature_small, the Nature-DQN CNN,
    about 6x cheaper per step on a CPU (the demo's, docs/results/demo.md)."""
    learning_rate: float = setting(2e-4, LEARNING_RATE)
    """Peak Adam learning rate."""
    warmup_steps: int = setting(1_000, Range(0, TRAIN_STEPS.hi))
    """Steps of linear warm-up from warmup_start x the peak rate; then linear decay to 0."""
    warmup_start: float = setting(0.01, UNIT)
    """Learning-rate multiplier at step 0."""
    weight_decay: float = setting(0.0, DECAY)
    """AdamW weight decay."""
    label_smoothing: float = setting(0.05, UNIT)
    """The action baselines' cross-entropy label smoothing, the offline decoder's: trained on
    K labels alone, a policy without it turns overconfident and gets stuck when its actions
    are sampled (coinrun, K = 256: 3.7 against 6.0 with it, docs/results/demo.md). Stage 2's
    latent regression has no labels to smooth."""
    head_weight: float = setting(0.0, WEIGHT)
    """Stage 2 on a stage-1 run trained with labels: the weight of a second term beside the
    latent MSE, the cross-entropy of stage 1's action head (frozen) on the policy's latent
    against the head's action on the IDM's latent, so the latent policy gets right the
    directions of the latent that name the action. 0: LAPO's latent MSE alone."""
    batch_size: int = setting(128, BATCH)
    """Observations per step."""
    steps: int = setting(60_000, TRAIN_STEPS, resumable=True)
    """Training steps."""
    grad_clip: float = setting(2.0, CLIP)
    """Gradient norm clip."""
    eval_every: int = setting(1_000, TRAIN_STEPS, resumable=True)
    """Steps between test-loss evaluations (and checkpoints)."""
    test_windows: int = setting(1_024, WINDOWS, resumable=True)
    """Fixed test windows for the test loss at each evaluation (and the untrained baseline)."""
    seed: int = setting(0, SEED)
    """Seed of initialisation and batch sampling."""
    threads: int = setting(0, THREADS, resumable=True)
    """torch CPU threads; 0 = all cores."""
    device: str = setting("auto", resumable=True)
    """cpu, cuda or auto (under torchrun: each process's own GPU)."""


PRESETS[BCConfig] = {
    # ../shared/LAPO_NOTES.md: the published configuration
    "paper": BCConfig(),
    # chosen by measurement on 2 CPU cores: see docs/results/stages23.md
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


@dataclass
class OfflineConfig(Config):
    """Offline decoding from K labelled transitions."""

    labels: int = setting(256, LABELS)
    """K: labelled train windows the decoder (and the baselines) may use."""
    steps: int = setting(2_000, TRAIN_STEPS)
    """Decoder gradient steps."""
    batch_size: int = setting(128, BATCH)
    """Decoder minibatch (at most K)."""
    learning_rate: float = setting(1e-3, LEARNING_RATE)
    """Decoder Adam learning rate."""
    weight_decay: float = setting(1e-4, DECAY)
    """Decoder AdamW weight decay."""
    label_smoothing: float = setting(0.05, UNIT)
    """Cross-entropy label smoothing (as in LAPO's online decoder fit)."""
    test_windows: int = setting(4_096, WINDOWS)
    """Held-out test windows for the accuracies in decode.json."""
    seed: int = setting(0, SEED)
    """Seed of the labelled subset and of the decoder's initialisation."""
    decoder_init: str = setting("fresh", choices=("fresh", "stage1-head"))
    """'fresh', or 'stage1-head': start from the action head of a stage-1 run trained with
    --labels (a linear path on the latent, beside the MLP whose last layer starts at zero)."""


@dataclass
class PPOConfig(Config):
    """PPO on Procgen (Schulman et al. 2017), shared by the demonstrators, online decoding and
    the PPO baseline; defaults are Procgen's PPO baseline (Cobbe et al. 2020, easy mode). A
    resumed run may change its budget and bookkeeping (the fields marked ``resumable``)."""

    frames: int = setting(1_000_000, FRAMES, resumable=True)
    """Environment frames to train for (summed over all envs)."""
    num_envs: int = setting(64, ENVS)
    """Parallel environments."""
    # memory: a rollout holds num_envs x num_steps frames (1024 x 1024 x 12 KB: 12.9 GB)
    num_steps: int = setting(256, Range(1, 1_024))
    """Steps per environment per rollout."""
    num_minibatches: int = setting(8, Range(1, 65_536))
    """Minibatches per epoch."""
    update_epochs: int = setting(3, EPOCHS)
    """Epochs over each rollout."""
    learning_rate: float = setting(5e-4, LEARNING_RATE)
    """Adam learning rate (constant)."""
    gamma: float = setting(0.999, UNIT)
    """Discount factor."""
    gae_lambda: float = setting(0.95, UNIT)
    """GAE lambda."""
    ent_coef: float = setting(0.01, WEIGHT)
    """Entropy bonus coefficient."""
    clip_coef: float = setting(0.2, Range(0, 10, lo_open=True))
    """PPO clipping range."""
    vf_coef: float = setting(0.5, WEIGHT)
    """Value loss coefficient."""
    max_grad_norm: float = setting(0.5, CLIP)
    """Gradient norm clip."""
    norm_reward: bool = True
    """Scale rewards by the running std of the discounted return, clip to [-10, 10]."""
    distribution_mode: str = "easy"
    """Procgen distribution mode."""
    num_levels: int = setting(0, Range(1, SEED.hi, off="unbounded"))
    """Levels to train on; 0 = unbounded."""
    start_level: int = setting(0, SEED)
    """First level seed."""
    seed: int = setting(0, SEED)
    """Seed of the environments, the network initialisation and action sampling."""
    checkpoint_every: int = setting(5, TRAIN_STEPS, resumable=True)
    """Save a resumable checkpoint every this many updates (and at the end)."""
    threads: int = setting(0, THREADS, resumable=True)
    """torch CPU threads; 0 = all cores."""
    device: str = setting("auto", resumable=True)
    """cpu, cuda or auto."""

    @property
    def batch_size(self) -> int:
        """Frames per rollout (and per update): ``num_envs * num_steps``."""
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        """Rollouts (and updates) in the run: ``frames`` rounded up to whole rollouts."""
        return max(1, math.ceil(self.frames / self.batch_size))


FRAME_COUNT = Range(0, FRAMES.hi)  # a point in a run, counted in frames


@dataclass
class OnlineConfig(PPOConfig):
    """Online decoding (PPO + decoder re-fits); defaults are the published configuration."""

    frames: int = setting(4_000_000, FRAMES, resumable=True)
    """Environment frames to train for (summed over all envs)."""
    num_steps: int = setting(64, Range(1, 1_024))
    """Steps per environment per rollout."""
    learning_rate: float = setting(1e-2, LEARNING_RATE)
    """Base learning rate; each parameter group gets a fraction of it (see group_lr)."""
    ent_coef: float = setting(0.0025, WEIGHT)
    """Entropy bonus coefficient."""
    lr_decay_frames: int = setting(4_000_000, FRAMES)
    """Every group's rate decays linearly to 0 at this many frames (the paper's 4M)."""
    decoder_fit_start: int = setting(10_000, FRAME_COUNT)
    """No decoder fit before this many frames."""
    decoder_fit_end: int = setting(400_000, FRAME_COUNT)
    """No decoder fit (and no new pairs) after this many frames."""
    decoder_fit_every_until: int = setting(50_000, FRAME_COUNT)
    """Re-fit after every update until this many frames ..."""
    decoder_fit_every: int = setting(20, TRAIN_STEPS)
    """... and every this many updates after."""
    decoder_epochs: int = setting(3, EPOCHS)
    """Epochs of each decoder fit over all pairs so far."""
    decoder_batch_size: int = setting(512, BATCH)
    """Decoder minibatch."""
    decoder_learning_rate: float = setting(1e-3, LEARNING_RATE)
    """Decoder Adam learning rate."""
    label_smoothing: float = setting(0.05, UNIT)
    """Decoder cross-entropy label smoothing."""


# stage 3: the published configuration is the defaults; cpu is what `lapo reproduce --preset
# cpu` runs; fast, toy sizes for smoke runs
PRESETS[OfflineConfig] = {
    "paper": OfflineConfig(),
    "cpu": OfflineConfig(),
    "fast": OfflineConfig(steps=200, test_windows=1_024),
}
PRESETS[OnlineConfig] = {
    "paper": OnlineConfig(),
    "cpu": OnlineConfig(frames=300_000),
    "fast": OnlineConfig(frames=8_192, num_envs=16, num_steps=64, decoder_fit_start=0),
}


@dataclass
class ExpertConfig(PPOConfig):
    """PPO demonstrator training; defaults are Procgen's PPO baseline (easy mode)."""

    game: str = "coinrun"
    """Procgen game to train on."""
    arch: str = setting("impala", choices=ENCODERS)
    """Encoder: impala (IMPALA-CNN), nature (Nature-DQN CNN, ~5x cheaper on CPU) or
    nature_small (the Nature CNN at half its channels: ~2.5x nature's PPO frames/s on a CPU,
    ~3.5x with --obs-size 32)."""
    width: int = setting(1, WIDTH)
    """IMPALA-CNN width multiplier (channels 16, 32, 32 times this)."""
    obs_size: int = setting(64, Range(32, 64, note="64 or 32"))
    """Resolution the network sees: 64, or 32 (2x2 means); the frames stay 64x64 RGB."""
    grey: bool = False
    """The network sees grey frames (luma); the frames stay RGB."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.obs_size not in (32, 64):
            raise FieldError("obs_size", f"must be 64 or 32, got {self.obs_size}")


PRESETS[ExpertConfig] = {
    # baseline (c): Procgen's PPO on LAPO's online rollout shape (64 envs x 64 steps)
    "baseline": ExpertConfig(num_steps=64),
}


@dataclass
class DistillConfig(Config):
    """``lapo expert distill``: a demonstrator network trained by DAgger (Ross et al. 2011) on
    the moves of a planner that searches the game's own state (:mod:`lapo.evaluation.planner`). Round
    0 records the planner playing, with random moves mixed in so the data also shows screens
    off its paths; each later round records the network playing, labelled with the planner's
    moves; after each round the network trains on everything recorded so far."""

    game: str = "maze"
    """Procgen game a planner can search (maze, bigfish)."""
    arch: str = setting("nature", choices=ENCODERS)
    """The network's encoder, as lapo expert train's."""
    width: int = setting(1, WIDTH)
    """IMPALA-CNN width multiplier."""
    obs_size: int = setting(64, Range(32, 64, note="64 or 32"))
    """Resolution the network sees: 64, or 32 (2x2 means); the frames stay 64x64 RGB."""
    grey: bool = False
    """The network sees grey frames (luma); the frames stay RGB."""
    rounds: int = setting(4, Range(1, 1_000), resumable=True)
    """DAgger rounds (round 0: the planner plays; later rounds: the network)."""
    frames_per_round: int = setting(20_000, FRAMES)
    """Frames recorded (and labelled) per round."""
    noise: float = setting(0.25, UNIT)
    """Round 0: chance that the planner's move is replaced by a uniformly random action."""
    epochs: int = setting(2, Range(1, 1_000))
    """Passes over all frames recorded so far after each round."""
    batch_size: int = setting(64, BATCH)
    """Frames per gradient step."""
    learning_rate: float = setting(5e-4, LEARNING_RATE)
    """Adam learning rate."""
    distribution_mode: str = setting("easy", choices=("easy", "hard"))
    """Procgen's distribution mode."""
    seed: int = setting(0, SEED)
    """Seed of the levels, the network and the batches."""
    threads: int = setting(0, THREADS, resumable=True)
    """torch CPU threads; 0 = all cores."""
    device: str = setting("auto", resumable=True)
    """cpu, cuda or auto."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.obs_size not in (32, 64):
            raise FieldError("obs_size", f"must be 64 or 32, got {self.obs_size}")


@dataclass
class SupervisedIDMConfig(Config):
    """Baseline (b)'s supervised IDM: the stage-1 IDM's encoder with a 15-way head."""

    width: int = setting(1, WIDTH)
    """IMPALA-CNN width multiplier."""
    differences: bool = True
    """Also see the frame differences (as the cpu preset's latent IDM does)."""
    difference_scale: float = setting(10.0, DIFFERENCE_SCALE)
    """Multiplier of the frame differences (as the cpu preset's idm_difference_scale)."""
    steps: int = setting(1_000, TRAIN_STEPS)
    """Training steps on the K labelled windows."""
    batch_size: int = setting(32, BATCH)
    """Windows per step (at most K)."""
    learning_rate: float = setting(5e-4, LEARNING_RATE)
    """Adam learning rate."""
    weight_decay: float = setting(1e-4, DECAY)
    """AdamW weight decay."""


@dataclass
class EvalConfig(Config):
    """``lapo eval``: how a policy is played."""

    episodes: int = setting(100, EPISODES)
    """Episodes to play per seed."""
    seeds: int = setting(1, Range(1, 1_000))
    """Seeds to run (seed, seed+1, ...)."""
    seed: int = setting(0, SEED)
    """Environment and sampling seed."""
    num_envs: int = setting(16, ENVS)
    """Parallel environments."""
    distribution_mode: str = "easy"
    """Procgen distribution mode: easy or hard."""


DEMO_GAMES = ("coinrun", "jumper", "maze")
PLANNER_GAMES = ("maze", "bigfish")  # lapo.evaluation.planner.MOVES's games
DEMO_POLICIES = ("demonstrator", "random", "planner")


@dataclass
class DemoConfig(Config):
    """``lapo demo``: data, stage 1, probe, stage 2, offline decoding, baselines, report."""

    game: str = "coinrun"
    """Game with a shipped demonstrator (coinrun, jumper or maze); any Procgen game with
    --policy random."""
    policy: str = "demonstrator"
    """Who plays the recorded video: demonstrator (the shipped one: the whole method), planner
    (maze, bigfish: the planner that searches the game, which maze's demonstrator was
    distilled from; the whole method) or random (any game, stage 1 only: its probe, ceiling and
    pictures; a random policy is nothing to imitate, so stages 2 and 3 are skipped)."""
    frames: int = setting(20_000, FRAMES)
    """Frames to record for training (plus frames/5 for testing)."""
    lam_steps: int = setting(400, TRAIN_STEPS)
    """Stage-1 training steps (cpu preset otherwise)."""
    lam_batch: int = setting(32, BATCH)
    """Stage-1 batch size."""
    wm_space_to_depth: bool = True
    """Stage 1's world model at 32x32 on frames folded 2x2 into channels (lam train
    --wm-space-to-depth): on coinrun's 6 seeds stage 1 took 72 s instead of 108 on a Xeon with
    the same returns (LAPO - BC +0.90 ± 0.26 against +0.73 ± 0.26, docs/results/demo.md).
    --no-wm-space-to-depth: the cpu preset's 64x64 U-Net."""
    bc_steps: int = setting(400, TRAIN_STEPS)
    """Stage-2 (and BC baseline) training steps (cpu preset otherwise)."""
    bc_batch: int = setting(32, BATCH)
    """Stage-2 (and BC baseline) batch size."""
    bc_arch: str = setting("impala", choices=ENCODERS)
    """Encoder of stage 2's policy and both BC baselines (the same for all three): the
    paper's IMPALA-CNN (at the cpu preset's width 1), or the Nature-DQN CNN (nature), about 6x
    cheaper per step on a CPU, with which BC from scratch on coinrun's 256 labels plays as
    well as the demonstrator (docs/results/demo.md)."""
    labels: int = setting(256, LABELS)
    """K: labelled transitions for the decoder and the BC baseline."""
    probe_labels: int = setting(2_048, WINDOWS)
    """Labelled windows for the probe (at most the train split)."""
    ceiling_steps: int = setting(300, TRAIN_STEPS)
    """Training steps of the supervised ceiling (the IDM encoder on the true actions)."""
    episodes: int = setting(48, EPISODES)
    """Evaluation episodes per policy."""
    video_only: bool = False
    """Stage 1 from frames alone, the paper's recipe. By default stage 1 also sees the K
    labelled windows (an action head on the latent beside the video loss, as LAOM and CLAM do)
    and the decoder starts from that head, on the same K (and stage 2 weighs it, --head-weight):
    on coinrun this leads BC on the same labels, where frames alone are level with it
    (docs/results/demo.md). A --policy random demo's stage 1 always sees frames alone."""
    head_weight: float = setting(1.0, WEIGHT)
    """Stage 2's weight of stage 1's action head (``bc train --head-weight``) where stage 1
    saw the K labels: on coinrun's 6 seeds on a Xeon LAPO's decoded policy goes from level with
    BC on the same labels (+0.10 ± 0.24) to +0.73 ± 0.26 ahead (docs/results/demo.md). 0: the
    paper's stage 2; frames-alone stages 1 have no head and always train without it."""
    compare_labels: bool = False
    """Run both stage-1 recipes, with the K labels and from frames alone (another stage 1 and
    stage 2), and set them side by side in the report."""
    seed: int = setting(0, SEED)
    """Seed of everything."""
    threads: int = setting(0, THREADS)
    """torch CPU threads; 0 = all cores."""
    precision: str = setting("auto", choices=PRECISIONS)
    """Stage 1's arithmetic: fp32, bf16 (autocast) or auto (bf16 where the CPU computes it
    natively: AVX512-BF16 or AMX). Stage 2 and the baselines train in fp32."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.policy not in DEMO_POLICIES:
            raise ConfigError(
                f"unknown --policy {self.policy!r}: choose one of {', '.join(DEMO_POLICIES)}"
            )
        if self.policy == "planner" and self.game not in PLANNER_GAMES:
            raise ConfigError(
                f"the planner cannot search {self.game!r}: --policy planner plays "
                f"{', '.join(PLANNER_GAMES)}"
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
        if self.video_only and self.compare_labels:
            raise ConfigError(
                "--compare-labels runs both stage-1 recipes (with the labels and from frames "
                "alone); drop --video-only"
            )

    @property
    def labels_in_stage1(self) -> bool:
        """Stage 1 sees the K labels too: the default wherever a policy is trained."""
        return not self.video_only and self.policy != "random"


PRESETS[DemoConfig] = {
    # `lapo demo --fast`: toy sizes, a smoke check in about 2 minutes on 2 cores
    "fast": DemoConfig(
        frames=3_000,
        lam_steps=60,
        lam_batch=16,
        bc_steps=100,
        bc_batch=16,
        labels=500,
        probe_labels=1_024,
        ceiling_steps=60,
        episodes=8,
    ),
}


SECONDS = Range(0, 10_000_000)  # a point in a video (116 days)


@dataclass(frozen=True)
class VideoImportConfig(Config):
    """How videos become frames and splits; recorded in the manifest, and a resumed import
    must use the same."""

    fps: float | None = setting(None, Range(0, 1_000, lo_open=True))
    """Output frame rate; None: each video's own average rate."""
    crop: str = setting("centre", choices=("centre", "none"))
    """centre: the centre square; none: the whole frame squeezed square."""
    size: int = setting(
        64,
        Range(
            64,
            64,
            note="lapo's networks take 64x64 frames: the dataset format and the world "
            "model's U-Net are built for them",
        ),  # fmt: skip
    )
    """Output frames are size x size (lapo's networks take 64)."""
    start: float = setting(0.0, SECONDS)
    """Skip the first seconds of every video."""
    end: float | None = setting(None, Range(0, SECONDS.hi, lo_open=True))
    """Stop every video at this second (None: its end)."""
    test_fraction: float = setting(0.1, Range(0, 1, hi_open=True))
    """Fraction that goes to the test split: of the videos (whole videos), or with a single
    video, of its length (its end)."""
    seed: int = setting(0, SEED)
    """Seed of the choice of test videos."""
    game: str | None = None
    """The Procgen game the videos show, if any (recorded as the dataset's game)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.end is not None and self.end <= self.start:
            raise ConfigError(f"--start {self.start} / --end {self.end}: need 0 <= start < end")
        if self.game is not None:
            from lapo.envs import check_game

            check_game(self.game)


PAPER_LABELS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


STEPS = ("data", "lam", "bc", "offline", "labels", "online", "ppo")


@dataclass
class ReproduceConfig(Config):
    """``lapo reproduce``: the grid of games x seeds x steps."""

    games: list[str] = setting(factory=lambda: ["coinrun", "jumper"])
    """Games, comma-separated ('all' on the command line: the 16 Procgen games)."""
    seeds: int = setting(1, Range(1, 1_000))
    """Training seeds per game."""
    first_seed: int = setting(0, SEED)
    """The first training seed: seeds first-seed to first-seed + seeds - 1. Seeds run on several
    machines (each its own --first-seed) are summarised together by copying their GAME/seedN
    folders into one --out and running the command again with --seeds covering them all."""
    preset: str = "paper"
    """The stages' configuration: paper or cpu."""
    steps: list[str] = setting(factory=lambda: list(STEPS), flag="stages")
    """Steps to run (data is always collected; labels: LAPO with the K labels also in stage 1,
    a stage 1, stage 2 and decoding per K)."""
    labels: list[int] = setting(factory=lambda: list(PAPER_LABELS), valid=LABELS)
    """Label counts K, comma-separated."""
    frames: int = setting(1_000_000, FRAMES)
    """Demonstrator frames to record per game."""
    online_frames: int = setting(4_000_000, FRAMES)
    """Frames of online decoding and of PPO from scratch."""
    expert_frames: int = setting(25_000_000, FRAMES)
    """PPO frames of a demonstrator trained for a game without a shipped one."""
    data_root: str | None = None
    """Use DIR/GAME datasets (e.g. imported) instead of collecting."""
    episodes: int = setting(100, EPISODES)
    """Evaluation episodes per policy."""
    jobs: int = setting(2, Range(1, 256))
    """Steps run at once."""
    threads: int = setting(1, THREADS)
    """torch threads per step."""
    extra: dict[str, list[str]] = setting(factory=dict)
    """Extra command-line options per step kind (lam, bc, idm, decode, online, ppo)."""

    def __post_init__(self) -> None:
        if not self.labels:
            raise ConfigError(f"every --labels count must be at least 1, got {self.labels}")
        super().__post_init__()
        unknown = sorted(set(self.steps) - set(STEPS))
        if unknown:
            raise ConfigError(
                f"unknown --stages {', '.join(unknown)}: choose from {', '.join(STEPS)}"
            )

    @property
    def seed_range(self) -> range:
        """The training seeds of the grid."""
        return range(self.first_seed, self.first_seed + self.seeds)


PRESETS[ReproduceConfig] = {
    "paper": ReproduceConfig(),
    "cpu": ReproduceConfig(preset="cpu", labels=[256, 1000], frames=51_200, online_frames=300_000),
}


def config_from_dict(cls: type[T], values: dict, where: str = "") -> T:
    """``cls`` from what ``dataclasses.asdict`` made of one (a saved run's config section, maybe
    written before a field existed: each field it lacks takes its default); an unknown key or
    a value out of range raises :class:`ConfigError` naming ``where`` it came from."""
    try:
        return _from_dict(cls, values, where)
    except FieldError as e:
        if not where:
            raise
        raise ConfigError(f"{where}: {e}") from None


RETIRED: dict[str, dict[str, object]] = {
    # the legacy restart on a low EMA count (restart_unused_steps replaced it): runs saved with
    # it off still load
    "QuantizerConfig": {"dead_code_threshold": 0.0},
}
"""Settings removed from a config class, with the value that made them inert: a saved config
holding that value loads without them; any other value is refused (it shaped the run)."""


def _drop_retired(cls: type, values: dict, where: str) -> dict:
    retired = RETIRED.get(cls.__name__, {})
    for k in set(values) & set(retired):
        if values[k] != retired[k]:
            raise ConfigError(
                f"{where}: {cls.__name__} setting {k} = {values[k]!r} was removed from lapo (only "
                f"{retired[k]!r} is accepted); use the lapo version that wrote this run"
            )
    return {k: v for k, v in values.items() if k not in retired}


def _from_dict(cls: type[T], values: dict, where: str) -> T:
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a {cls.__name__} section, got {values!r:.60}")
    values = _drop_retired(cls, values, where)
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown {cls.__name__} setting(s) {', '.join(unknown)}")
    hints, given = _hints(cls), {}
    for k, v in values.items():
        if dataclasses.is_dataclass(hints[k]):
            try:
                v = _from_dict(hints[k], v, where)
            except FieldError as e:
                raise FieldError(f"{k}.{e.field}", e.problem) from None
        given[k] = v
    return cls(**given)

"""Import videos (mp4, webm, mkv, avi, mov, gif) as an action-free dataset.

Each video becomes one episode: decoded frame by frame with PyAV, resampled by presentation
time to an even rate (output frame ``k`` at ``t_k = start + k / fps`` shows the source frame
nearest in time, so variable-frame-rate input comes out evenly spaced), scaled with swscale's
area filter so its short side is 64 and centre-cropped square (or squeezed, crop ``none``).
Nothing holds more than one decoded frame, so memory stays flat in the number and length of
the videos.

With two videos or more, whole videos go to the test split (``test_fraction`` of them). With
one, its last ``test_fraction`` (by time) becomes the test split as an episode of its own, so a
single recording is enough to train and evaluate on.

A video's chunks are renamed into place as they fill but recorded in the manifest only when
the whole video is in, in the same write as its entry in ``sources`` (path, size, sha256,
frame rates, frames written, split, episode id): a killed import leaves a valid dataset of the
videos finished before it, and ``resume`` deletes the unrecorded chunks and imports the
unfinished video again from its start.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from lapo.config import VideoImportConfig
from lapo.data.format import (
    MANIFEST,
    SPLITS,
    DatasetError,
    DatasetWriter,
    disk_bytes,
    new_manifest,
    read_manifest,
    remove_uncommitted,
)
from lapo.envs.procgen import OBS_SHAPE
from lapo.errors import UserError

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif")
MIN_FRAMES = 3
"""One LAPO window: o[t-1], o[t], o[t+1]."""
SIZE = OBS_SHAPE[0]
VideoImport = VideoImportConfig  # the settings of an import: lapo.config owns them
T = TypeVar("T")


class VideoError(DatasetError):
    """One input file cannot be imported (``skip_bad`` skips it, otherwise the import stops)."""


@dataclass
class VideoProbe:
    """What a video's headers say: enough to check it before anything is written."""

    path: Path
    width: int
    height: int
    rate: Fraction | None
    """Average frame rate, None when the file gives none."""
    duration: float | None
    """Seconds of video the headers declare, None when unknown."""
    codec: str


def find_videos(paths: Iterable[str | Path]) -> list[Path]:
    """The files of ``paths``: files as given, folders searched (recursively) for videos."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            inside = sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS
            )
            if not inside:
                kinds = ", ".join(e[1:] for e in VIDEO_EXTENSIONS)
                raise DatasetError(f"{p} holds no videos ({kinds}): point to the videos' folder")
            found += inside
        elif p.is_file():
            found.append(p)
        else:
            raise DatasetError(f"{p} does not exist: check the path")
    unique = list(dict.fromkeys(f.resolve() for f in found))
    if not unique:
        raise DatasetError("no videos given: pass video files or folders")
    return unique


def _declared_duration(container: Any, stream: Any) -> float | None:
    """The video stream's duration from the headers; the container's only when it holds
    nothing else (an audio track may outlast the video)."""
    if stream.duration:
        return float(stream.duration * stream.time_base)
    if container.duration and len(container.streams) == 1:
        return container.duration / 1_000_000
    return None


def probe_video(path: str | Path) -> VideoProbe:
    """Open ``path`` and check it holds a video this FFmpeg can decode; raises :class:`VideoError`."""
    import av

    path = Path(path)
    if path.stat().st_size == 0:
        raise VideoError(f"{path} is empty (0 bytes), a failed copy?")
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                kinds = sorted({s.type for s in c.streams})
                raise VideoError(f"{path} has no video stream ({' and '.join(kinds) or 'no'} only)")
            s = c.streams.video[0]
            if s.codec_context is None:
                raise VideoError(
                    f"{path}: this FFmpeg has no decoder for its video codec; re-encode it, e.g. "
                    f"ffmpeg -i {path} -c:v libx264 {path.stem}.mp4"
                )
            rate = s.average_rate or s.guessed_rate
            width, height = s.codec_context.width, s.codec_context.height
            duration = _declared_duration(c, s)
            codec = s.codec_context.name
    except (av.error.FFmpegError, OSError) as e:
        reason = getattr(e, "strerror", None) or e
        if isinstance(e, av.error.InvalidDataError):
            reason = f"{reason}: not a video, or truncated"
        raise VideoError(f"{path} is not a video FFmpeg can read ({reason})") from None
    if width < 1 or height < 1:
        raise VideoError(f"{path} declares {width}x{height} frames: it is damaged")
    return VideoProbe(path, width, height, Fraction(rate) if rate else None, duration, codec)


# ---------------------------------------------------------------------------------------------
# Frames: decode, resample, crop and resize


def resample(
    frames: Iterable[tuple[Fraction, Fraction, T]],
    fps: Fraction,
    start: Fraction = Fraction(0),
    end: Fraction | None = None,
) -> Iterator[tuple[T, int]]:
    """Even-rate resampling by presentation time.

    ``frames`` are ``(time, duration, item)`` in seconds, in display order. Output frame ``k``,
    at ``t_k = start + k / fps``, shows the frame nearest in time (ties go to the later one);
    output ends at the last frame's end (time + duration) or at ``end``. Yields ``(item,
    count)``: ``item`` is shown by the next ``count`` output frames (items shown by none are
    left out, so they need no conversion).
    """
    k = 0

    def upto(limit: Fraction) -> int:  # outputs t_k < limit not yet given
        nonlocal k
        if end is not None:
            limit = min(limit, end)
        n = max(0, math.ceil((limit - start) * fps) - k)
        k += n
        return n

    held: tuple[Fraction, Fraction, T] | None = None
    for t, dur, item in frames:
        if held is not None:
            boundary = (held[0] + t) / 2
            n = upto(boundary)
            if n:
                yield held[2], n
            if end is not None and boundary >= end:
                return
        held = (t, dur, item)
    if held is not None:
        n = upto(held[0] + held[1])
        if n:
            yield held[2], n


def to_obs(
    frame: Any, crop: str = "centre", size: int = SIZE, reformatter: Any = None
) -> np.ndarray:
    """A decoded ``av.VideoFrame`` as ``(size, size, 3)`` uint8 RGB, C-contiguous: scaled by
    swscale's area filter so its short side is ``size`` and centre-cropped square (``crop``
    "centre"), or squeezed to ``size x size`` (``crop`` "none"). Pass the same
    ``av.video.reformatter.VideoReformatter`` for every frame of a video: it keeps swscale's
    set-up, which costs ten times the conversion of a small frame."""
    w, h = frame.width, frame.height
    W = H = size
    if crop != "none":
        s = size / min(w, h)
        W, H = max(size, round(w * s)), max(size, round(h * s))
    if reformatter is not None:
        frame = reformatter.reformat(frame, W, H, "rgb24", interpolation="AREA")
        rgb = frame.to_ndarray()  # (H, W, 3)
    else:
        rgb = frame.to_ndarray(width=W, height=H, format="rgb24", interpolation="AREA")
    y, x = (H - size) // 2, (W - size) // 2
    return np.ascontiguousarray(rgb[y : y + size, x : x + size])  # (size, size, 3)


def _timed(
    frames: Iterable[Any], stream: Any, rate: Fraction
) -> Iterator[tuple[Fraction, Fraction, Any]]:
    """Decoded frames as ``(time, duration, frame)``, seconds from the stream's start."""
    tb, origin, step = stream.time_base, stream.start_time or 0, 1 / rate
    t = None
    for frame in frames:
        if frame.pts is not None:
            t = (frame.pts - origin) * tb
        else:  # no timestamp: one frame period after the last
            t = Fraction(0) if t is None else t + step
        yield t, (frame.duration * tb if frame.duration else step), frame


def _decoded(probe: VideoProbe, opts: VideoImport) -> Iterator[tuple[Any, int]]:
    """``(frame, count)``: the video's decoded ``av.VideoFrame`` s resampled to the output rate
    between ``opts.start`` and ``opts.end``, each shown ``count`` times in a row, unconverted.
    Raises :class:`VideoError` on a damaged file."""
    import av

    rate = _rate(probe, opts)
    start = Fraction(opts.start)
    end = None if opts.end is None else Fraction(opts.end)
    try:
        with av.open(str(probe.path)) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"  # frame threads: several times faster for H.264
            if start > 0:  # to the key frame before start; resample drops what precedes it
                origin = stream.start_time or 0
                c.seek(origin + int(start / stream.time_base), stream=stream)
            yield from resample(_timed(c.decode(stream), stream, rate), rate, start, end)
    except av.error.FFmpegError as e:
        reason = getattr(e, "strerror", None) or e
        raise VideoError(f"{probe.path} is damaged or truncated ({reason})") from None


def video_frames(probe: VideoProbe, opts: VideoImport) -> Iterator[tuple[np.ndarray, int]]:
    """``(obs, count)``: the video's output frames, ``obs`` ``(64, 64, 3)`` uint8 shown
    ``count`` times in a row; decoded one at a time. Raises :class:`VideoError` on a damaged
    file."""
    from av.video.reformatter import VideoReformatter

    reformatter = VideoReformatter()
    for frame, n in _decoded(probe, opts):
        yield to_obs(frame, opts.crop, opts.size, reformatter), n


def count_frames(probe: VideoProbe, opts: VideoImport) -> int:
    """The output frames a video gives, decoded but not converted (to place a held-out tail)."""
    return sum(n for _, n in _decoded(probe, opts))


def _rate(probe: VideoProbe, opts: VideoImport) -> Fraction:
    if opts.fps is not None:
        return Fraction(opts.fps).limit_denominator(1001)
    if probe.rate is None:
        raise VideoError(f"{probe.path} declares no frame rate: pass --fps")
    return probe.rate


def check_length(probe: VideoProbe, opts: VideoImport, frames: int) -> None:
    """Refuse a video that gave fewer than a window's frames, or stopped well before the end
    its headers declare (a truncated file FFmpeg decodes without complaint)."""
    rate = _rate(probe, opts)
    if frames < MIN_FRAMES:
        trim = f" between {opts.start} s and {opts.end} s" if opts.start or opts.end else ""
        raise VideoError(
            f"{probe.path} gives {frames} frames at {float(rate):g} fps{trim}; a window needs "
            f"{MIN_FRAMES}: use a longer video, a higher --fps or a wider --start/--end"
        )
    if probe.duration is None:
        return
    until = probe.duration if opts.end is None else min(opts.end, probe.duration)
    reached = opts.start + frames / rate
    if reached < until - max(0.5, 0.02 * probe.duration):
        raise VideoError(
            f"{probe.path} ends at {float(reached):.2f} s but declares {probe.duration:.2f} s: "
            "it is truncated"
        )


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# The import


def assign_splits(files: list[Path], test_fraction: float, seed: int) -> dict[Path, str]:
    """Whole videos to splits: ``round(test_fraction * n)`` test videos (at least one when
    ``test_fraction`` > 0 and there are two videos or more, never all), chosen by ``seed``.
    With one video it stays ``train`` here: :func:`holds_out_tail` then gives its end to test."""
    n = len(files)
    n_test = 0
    if test_fraction > 0 and n >= 2:
        n_test = min(n - 1, max(1, round(test_fraction * n)))
    order = np.random.default_rng(seed).permutation(n)
    test = {files[i] for i in order[:n_test]}
    return {f: ("test" if f in test else "train") for f in files}


def holds_out_tail(n_videos: int, test_fraction: float) -> bool:
    """Whether each video's last ``test_fraction`` goes to the test split: with fewer than two
    videos there is no whole video to spare."""
    return n_videos < 2 and test_fraction > 0


def tail_start(frames: int, test_fraction: float) -> int:
    """The first output frame of the held-out tail of a video of ``frames`` frames: the last
    ``test_fraction`` by time (frames are evenly spaced), each part at least a window long."""
    cut = round(frames * (1 - test_fraction))
    return min(max(cut, MIN_FRAMES), frames - MIN_FRAMES)


def _write_video(
    writer: DatasetWriter,
    split: str,
    episode: int,
    frames: Iterator[tuple[np.ndarray, int]],
    chunk_frames: int,
    bar: Any,
    tail_from: int | None = None,
) -> int:
    """Write one video's frames as chunks of one episode, committed but not yet recorded
    (``defer``); the last frame is held back until the end so it can carry ``done``. With
    ``tail_from``, output frames from that index on are a second episode (``episode + 1``) in
    the test split. Returns the frames written; on any error the video's chunks are deleted."""
    chunk, held, n = None, None, 0
    part = (split, episode)

    def put(obs: np.ndarray, done: bool) -> None:
        nonlocal chunk
        if chunk is None:
            chunk = writer.new_chunk(part[0])
        chunk.append_frame(obs, done, part[1], -1)
        if len(chunk) >= chunk_frames or done and tail_from is not None:
            writer.commit(part[0], chunk, [], defer=True)
            chunk = None

    try:
        for obs, count in frames:
            for _ in range(count):
                if held is not None:
                    ends_part = n == tail_from  # the held frame is the last before the tail
                    put(held, ends_part)
                    if ends_part:
                        part = ("test", episode + 1)
                held = obs
                n += 1
            bar.update(count)
        if held is not None:
            put(held, True)
        if chunk is not None:
            writer.commit(part[0], chunk, [], defer=True)
            chunk = None
    except BaseException:
        if chunk is not None:
            chunk.abort()
        writer.drop_pending()
        raise
    return n


def _tail_from(probe: VideoProbe, opts: VideoImport) -> int:
    """Where a single video's held-out tail starts, or a clear error if it is too short."""
    total = count_frames(probe, opts)
    check_length(probe, opts, total)
    if total < 2 * MIN_FRAMES:
        raise VideoError(
            f"{probe.path} gives {total} frames, too few to hold out its end as the test split "
            f"(each part needs {MIN_FRAMES}): use a longer video, or import two videos or more"
        )
    return tail_start(total, opts.test_fraction)


def _import_one(
    writer: DatasetWriter,
    probe: VideoProbe,
    split: str,
    opts: VideoImport,
    chunk_frames: int,
    bar: Any,
    hold_out_tail: bool = False,
) -> dict:
    """Import one video as the next episode (with ``hold_out_tail``, its last
    ``opts.test_fraction`` as a second episode, in the test split); it enters the manifest (its
    chunks and its ``sources`` entry, one write) only once all its frames are in. Returns that
    entry."""
    manifest = writer.manifest
    episode = int(manifest["next_episode_id"])
    tail_from = _tail_from(probe, opts) if hold_out_tail else None
    frames = _write_video(
        writer, split, episode, video_frames(probe, opts), chunk_frames, bar, tail_from
    )
    try:
        check_length(probe, opts, frames)
        if tail_from is not None and frames - tail_from < MIN_FRAMES:
            raise VideoError(f"{probe.path} ended before its held-out tail; import it again")
    except VideoError:
        writer.drop_pending()
        raise
    entry = {
        "path": str(probe.path),
        "bytes": probe.path.stat().st_size,
        "sha256": sha256(probe.path),
        "codec": probe.codec,
        "width": probe.width,
        "height": probe.height,
        "source_fps": float(probe.rate) if probe.rate else None,
        "fps": float(_rate(probe, opts)),
        "frames": frames,
        "split": split,
        "episode_id": episode,
    }
    if tail_from is not None:
        # frames [0, tail_from) are episode `episode` in `split`, the rest `episode + 1` in test
        entry["test_tail"] = {"first_frame": tail_from, "episode_id": episode + 1}
    manifest["sources"].append(entry)
    manifest["next_episode_id"] = episode + (1 if tail_from is None else 2)
    writer.record_pending()
    return entry


def _fresh_manifest(opts: VideoImport, chunk_frames: int, created_by: dict) -> dict:
    manifest = new_manifest(
        opts.game,  # type: ignore[arg-type]
        {"source": "video"},
        {"kind": "video"},
        False,
        chunk_frames,
        opts.seed,
        created_by,
    )
    manifest["video"] = asdict(opts)
    manifest["sources"] = []
    return manifest


def _resumed_manifest(out: Path, opts: VideoImport, created_by: dict) -> tuple[dict, list[str]]:
    """The manifest of the import to continue in ``out``, with what a killed import left
    (chunks of an unfinished video) deleted; refuses other data or other settings."""
    if not (out / MANIFEST).is_file():
        raise DatasetError(
            f"{out} has no {MANIFEST}, so it is not an import to resume; choose another --out"
        )
    manifest = read_manifest(out)
    if (manifest.get("policy") or {}).get("kind") != "video":
        raise DatasetError(f"{out} is not a video import; choose another --out")
    if manifest.get("video") != asdict(opts):
        given = asdict(opts)
        diff = ", ".join(
            f"{k} {manifest['video'].get(k)!r} (now {given[k]!r})"
            for k in given
            if manifest["video"].get(k) != given[k]
        )
        raise DatasetError(
            f"{out} was imported with other settings: {diff}; resume with the same options, "
            "or choose another --out"
        )
    manifest.setdefault("resumed_by", []).append(created_by)
    return manifest, remove_uncommitted(out, manifest)


def _probe_all(files: list[Path], skip_bad: bool, skipped: list[dict]) -> list[VideoProbe]:
    """Probe every file before writing anything; a bad one stops the import (nothing was
    written) or, with ``skip_bad``, is added to ``skipped``."""
    probes = []
    for f in files:
        try:
            probes.append(probe_video(f))
        except VideoError as e:
            if not skip_bad:
                raise VideoError(f"{e}; remove or replace it, or pass --skip-bad") from None
            skipped.append({"path": str(f), "reason": str(e)})
    return probes


def import_videos(
    paths: Iterable[str | Path],
    out: str | Path,
    opts: VideoImport | None = None,
    chunk_frames: int = 4096,
    resume: bool = False,
    skip_bad: bool = False,
    progress: bool = True,
    created_by: dict | None = None,
    split_of: dict[Path, str] | None = None,
) -> dict[str, Any]:
    """Import the videos ``paths`` (files, or folders searched for videos) into the new
    action-free dataset ``out``, one episode per video; returns a JSON-able summary.
    ``split_of`` sets the split of the files it names (resolved paths), e.g. to keep the
    split of exported episodes; the others are chosen by ``opts.test_fraction``.

    Refuses a non-empty ``out`` unless ``resume``, which imports only the videos its manifest
    does not list. A bad file stops the import with its name (the dataset keeps the videos
    finished before it) or, with ``skip_bad``, is skipped and listed in ``skipped``.
    """
    t0 = time.time()
    opts = opts or VideoImport()  # checked when built
    if chunk_frames < 1:
        raise UserError(f"--chunk-frames must be at least 1, got {chunk_frames}")
    out = Path(out)
    created_by = created_by or {"function": "lapo.data.video.import_videos", "args": asdict(opts)}
    given_empty = out.is_dir() and not any(out.iterdir())
    exists = out.exists() and not given_empty
    if exists and not resume:
        raise DatasetError(
            f"{out} already exists: choose a new --out, or pass --resume to continue the import"
        )
    files = find_videos(paths)
    removed: list[str] = []
    if exists:
        manifest, removed = _resumed_manifest(out, opts, created_by)
    else:
        manifest = _fresh_manifest(opts, chunk_frames, created_by)
    finished = {s["path"] for s in manifest["sources"]}
    skipped: list[dict] = []
    probes = _probe_all([f for f in files if str(f) not in finished], skip_bad, skipped)
    if not probes and not finished:
        raise VideoError(
            f"none of the {len(files)} files is a video lapo can import (first: "
            f"{skipped[0]['reason']})"
        )
    splits = {**assign_splits(files, opts.test_fraction, opts.seed), **(split_of or {})}
    writer = DatasetWriter(out, manifest)
    if not exists:  # a new dataset, valid (and resumable) from the start
        out.mkdir(parents=True, exist_ok=True)
        writer.write_manifest()
    try:
        tail = holds_out_tail(len(files), opts.test_fraction) and not split_of
        _import_all(writer, probes, splits, opts, chunk_frames, skip_bad, skipped, progress, tail)
    except BaseException:
        if not exists and not manifest["sources"]:  # nothing got in: leave no folder behind
            _discard(out, keep_folder=given_empty)
        raise
    return _summary(out, manifest, len(finished), skipped, removed, time.time() - t0)


def _discard(out: Path, keep_folder: bool) -> None:
    """Delete what a new import wrote in ``out``, and ``out`` unless ``keep_folder``."""
    for p in out.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    if not keep_folder:
        out.rmdir()


def _expected_frames(probe: VideoProbe, opts: VideoImport) -> int:
    """About how many frames a video will give (for the progress bar's total)."""
    if probe.duration is None or (opts.fps is None and probe.rate is None):
        return 0
    until = probe.duration if opts.end is None else min(opts.end, probe.duration)
    return max(0, round((until - opts.start) * float(_rate(probe, opts))))


def _import_all(
    writer: DatasetWriter,
    probes: list[VideoProbe],
    splits: dict[Path, str],
    opts: VideoImport,
    chunk_frames: int,
    skip_bad: bool,
    skipped: list[dict],
    progress: bool,
    tail: bool = False,
) -> None:
    """Import each probed video in turn, with a progress bar over their frames; with ``tail``,
    each one's end goes to the test split (:func:`holds_out_tail`)."""
    from tqdm import tqdm

    total = sum(_expected_frames(p, opts) for p in probes)
    bar = tqdm(total=total or None, unit="frame", unit_scale=True, disable=not progress)
    try:
        for i, probe in enumerate(probes):
            bar.set_description(f"video {i + 1}/{len(probes)}")
            try:
                _import_one(writer, probe, splits[probe.path], opts, chunk_frames, bar, tail)
            except VideoError as e:
                if not skip_bad:
                    done = len(writer.manifest["sources"])
                    kept = (
                        f" ({writer.root} keeps the {done} videos imported before it: run again "
                        "with --resume)"
                        if done
                        else ""
                    )
                    raise VideoError(
                        f"{e}; remove or replace it, or pass --skip-bad{kept}"
                    ) from None
                skipped.append({"path": str(probe.path), "reason": str(e)})
    finally:
        bar.close()


def _summary(
    out: Path,
    manifest: dict,
    before: int,
    skipped: list[dict],
    removed: list[str],
    wall: float,
) -> dict[str, Any]:
    """What :func:`import_videos` did, JSON-able."""
    split = manifest["splits"]
    total = sum(split[s]["frames"] for s in SPLITS)
    sources = manifest["sources"]
    nbytes = disk_bytes(out)
    new = sum(s["frames"] for s in sources[before:])
    notes = []
    if split["test"]["frames"] == 0:
        notes.append(
            f"{out} has no test frames, which 'lapo lam train' needs: import again with "
            "--test-fraction above 0 (one video: its end becomes the test split)"
        )
    return {
        "out": str(out),
        "videos": {s: sum(1 for v in sources if v["split"] == s) for s in SPLITS},
        "test_tails": sum(1 for v in sources if "test_tail" in v),
        "frames": {s: split[s]["frames"] for s in SPLITS},
        "chunks": {s: split[s]["chunks"] for s in SPLITS},
        "imported_now": len(sources) - before,
        "already_imported": before,
        "skipped": skipped,
        "removed_unfinished": removed,
        "bytes_on_disk": nbytes,
        "bytes_per_frame": nbytes / total if total else None,
        "wall_seconds": round(wall, 2),
        "frames_per_second": round(new / wall, 1) if wall > 0 else None,
        "notes": notes,
    }

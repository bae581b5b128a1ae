"""Write a dataset's frames as a video: ``lapo data export-video``, and one file per episode.

The codec follows the file's extension: ``.mp4`` H.264 (libx264, yuv420p, quality ``crf``),
``.webm`` VP9 (libvpx-vp9, yuv420p, constant quality ``crf``), ``.gif`` (each frame with its
own 256-colour palette, lossless for Procgen frames). Frames are read from the chunks' files
a block at a time and encoded as they come, so memory stays flat; the video is written to a
hidden temporary file beside ``out`` and renamed into place when complete.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from lapo.data.format import FRAME_BYTES, ChunkInfo, DatasetError, load_small, open_dataset
from lapo.envs.procgen import ACTION_NAMES, OBS_SHAPE
from lapo.errors import UserError

# extension -> (encoder, pixel format, the most crf means)
CODECS: dict[str, tuple[str, str, int]] = {
    ".mp4": ("libx264", "yuv420p", 51),
    ".webm": ("libvpx-vp9", "yuv420p", 63),
    ".gif": ("gif", "pal8", 0),
}
DEFAULT_CRF = 15
"""On coinrun frames, H.264 at crf 15 keeps 33.1 dB PSNR (worst frame 31.2 dB) against 34.1 dB
at crf 0: yuv420p's halved colour resolution, not the crf, costs most (yuv444p crf 0: 53 dB)."""
_BLOCK = 256  # frames read from a chunk at a time

# A span is (chunk position in the split, first frame, end frame) of consecutive frames.
Span = tuple[int, int, int]


def parse_episodes(text: str | None) -> list[int] | None:
    """``"0,3,5"`` -> ``[0, 3, 5]``; None stays None."""
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--episodes takes comma-separated episode ids, got {text!r}") from None


def parse_frames(text: str | None) -> tuple[int | None, int | None] | None:
    """``"A:B"`` -> ``(A, B)`` (either may be empty: None); None stays None."""
    if text is None:
        return None
    a, sep, b = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return (int(a) if a.strip() else None, int(b) if b.strip() else None)
    except ValueError:
        raise UserError(
            f"--frames takes A:B (frames A to B-1 of the split), got {text!r}"
        ) from None


def episode_spans(chunks: list[ChunkInfo]) -> dict[int, list[Span]]:
    """Where each episode's frames lie, in order: ``{episode id: [spans]}``. An episode may
    continue in a later chunk (collect gives each environment its own chunks)."""
    spans: dict[int, list[Span]] = {}
    for c, chunk in enumerate(chunks):
        ids = load_small(chunk, "episode_ids")  # (n,) nondecreasing
        starts = np.flatnonzero(np.diff(ids, prepend=ids[0] - 1))
        ends = np.append(starts[1:], len(ids))
        for a, b in zip(starts, ends, strict=True):
            spans.setdefault(int(ids[a]), []).append((c, int(a), int(b)))
    return spans


def frame_spans(chunks: list[ChunkInfo], a: int, b: int) -> list[Span]:
    """Frames ``a`` to ``b - 1`` of the split (numbered across its chunks in order) as spans."""
    spans, first = [], 0
    for c, chunk in enumerate(chunks):
        lo, hi = max(a, first), min(b, first + chunk.frames)
        if lo < hi:
            spans.append((c, lo - first, hi - first))
        first += chunk.frames
    return spans


def read_span(chunk: ChunkInfo, a: int, b: int) -> Iterator[np.ndarray]:
    """Frames ``a`` to ``b - 1`` of a chunk in blocks ``(m, 64, 64, 3)`` uint8 (plain reads)."""
    with open(chunk.path / "obs.npy", "rb") as f:
        for s in range(a, b, _BLOCK):
            m = min(_BLOCK, b - s)
            f.seek(chunk.obs_offset + s * FRAME_BYTES)
            block = np.frombuffer(f.read(m * FRAME_BYTES), np.uint8)
            if len(block) != m * FRAME_BYTES:
                raise DatasetError(
                    f"{chunk.path}/obs.npy is truncated: check it with lapo data info"
                )
            yield block.reshape(m, *OBS_SHAPE)


def _overlay(img: np.ndarray, text: str) -> np.ndarray:
    """``img`` ``(H, W, 3)`` uint8 with ``text`` in white on a black band at the top left,
    its height about a tenth of the frame's."""
    from PIL import Image, ImageDraw, ImageFont

    pic = Image.fromarray(img)
    draw = ImageDraw.Draw(pic)
    try:
        font: Any = ImageFont.load_default(size=max(9, img.shape[0] // 10))
    except (ImportError, OSError, TypeError):  # Pillow without FreeType: the bitmap font
        font = ImageFont.load_default()
    box = draw.textbbox((1, 0), text, font=font)
    draw.rectangle((0, 0, box[2] + 1, box[3] + 1), fill=(0, 0, 0))
    draw.text((1, 0), text, fill=(255, 255, 255), font=font)
    return np.asarray(pic)


def _pal8(img: np.ndarray) -> Any:
    """An ``av.VideoFrame`` in pal8 for GIF: ``img``'s own colours as its palette when it has
    256 or fewer (lossless: Procgen frames have about 50), else Pillow's median cut."""
    import av
    from PIL import Image

    packed = img.astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], np.uint32)  # (H, W)
    colours, index = np.unique(packed, return_inverse=True)
    if len(colours) <= 256:
        rgb = (colours[:, None] >> np.array([16, 8, 0], np.uint32)) & 255
        pixels = index.reshape(img.shape[:2]).astype(np.uint8)
    else:
        q = Image.fromarray(img).quantize(256, method=Image.Quantize.MEDIANCUT)
        rgb = np.array(q.getpalette()[:768], np.uint8).reshape(-1, 3)
        pixels = np.asarray(q)
    palette = np.zeros((256, 4), np.uint8)  # ARGB
    palette[:, 0] = 255
    palette[: len(rgb), 1:] = rgb
    return av.VideoFrame.from_ndarray((pixels, palette), format="pal8")


class VideoWriter:
    """Encodes ``(H, W, 3)`` uint8 frames into ``out`` (codec by extension); :meth:`close`
    renames the finished file into place, :meth:`abort` deletes it."""

    def __init__(self, out: str | Path, fps: float, size: int, crf: int = DEFAULT_CRF) -> None:
        import av

        self.out = Path(out)
        ext = self.out.suffix.lower()
        if ext not in CODECS:
            raise UserError(f"{self.out}: the extension picks the codec; use .mp4, .webm or .gif")
        codec, self.pix_fmt, max_crf = CODECS[ext]
        if max_crf and not 0 <= crf <= max_crf:
            raise UserError(f"--crf for {ext} must be in [0, {max_crf}], got {crf}")
        if not fps > 0:
            raise UserError(f"--fps must be positive, got {fps}")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out.with_name(f".{self.out.stem}.tmp{ext}")
        self._c = av.open(str(self.tmp), "w")
        self._s = self._c.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        self._s.width = self._s.height = size
        self._s.pix_fmt = self.pix_fmt
        if codec == "libx264":
            self._s.options = {"crf": str(crf)}
        elif codec == "libvpx-vp9":  # constant quality needs a zero target bit rate
            self._s.options = {"crf": str(crf), "b": "0"}
        else:  # each frame has its own palette: FFmpeg's diffing against the last frame's
            # palette indices would keep pixels whose index stayed but whose colour changed
            self._s.options = {"gifflags": "-offsetting-transdiff"}
        self.frames = 0

    def write(self, img: np.ndarray) -> None:
        import av

        frame = _pal8(img) if self.pix_fmt == "pal8" else av.VideoFrame.from_ndarray(img, "rgb24")
        for packet in self._s.encode(frame):
            self._c.mux(packet)
        self.frames += 1

    def close(self) -> Path:
        for packet in self._s.encode():  # flush the encoder
            self._c.mux(packet)
        self._c.close()
        os.replace(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        self._c.close()
        self.tmp.unlink(missing_ok=True)


def _spans_for(
    info: Any, split: str, episodes: list[int] | None, frames: tuple | None
) -> list[Span]:
    """The spans of the frames asked for: the ``episodes`` (ids), ``frames`` ``(A, B)`` or all."""
    chunks = info.chunks[split]
    n = info.frames(split)
    if episodes is not None:
        where = episode_spans(chunks)
        missing = [e for e in episodes if e not in where]
        if missing:
            have = sorted(where)
            shown = f"{have[0]}..{have[-1]}" if have else "none"
            raise DatasetError(
                f"{info.root} split {split!r} has no episode {', '.join(map(str, missing))} "
                f"(its ids: {len(have)} in {shown}); pick ids from 'lapo data info'"
            )
        return [s for e in episodes for s in where[e]]
    a, b = frames if frames is not None else (None, None)
    a, b = a or 0, n if b is None else min(b, n)
    if not 0 <= a < b:
        raise UserError(f"--frames {a}:{b} holds no frame; split {split!r} has {n} frames")
    return frame_spans(chunks, a, b)


def _frames_of(
    info: Any, split: str, spans: list[Span], overlay: bool
) -> Iterator[tuple[np.ndarray, str | None]]:
    """``(obs, action name)`` for each frame of ``spans``: obs ``(64, 64, 3)`` uint8, the name
    of its true action with ``overlay`` (else None)."""
    chunks = info.chunks[split]
    for c, a, b in spans:
        names = [ACTION_NAMES[x] for x in load_small(chunks[c], "actions")[a:b]] if overlay else []
        i = 0
        for block in read_span(chunks[c], a, b):
            for obs in block:
                yield obs, (names[i] if overlay else None)
                i += 1


def _encode(
    writer: VideoWriter, frames: Iterator[tuple[np.ndarray, str | None]], scale: int, bar: Any
) -> None:
    """Scale each frame (nearest neighbour), write its action name on it, encode it."""
    for obs, name in frames:
        img = obs.repeat(scale, 0).repeat(scale, 1) if scale > 1 else obs  # (64s, 64s, 3)
        writer.write(_overlay(img, name) if name is not None else img)
        bar.update(1)


def export_video(
    data: str | Path,
    out: str | Path,
    split: str = "train",
    episodes: list[int] | None = None,
    frames: tuple[int | None, int | None] | None = None,
    fps: float = 15.0,
    overlay_actions: bool = False,
    scale: int = 1,
    crf: int = DEFAULT_CRF,
    progress: bool = True,
) -> dict[str, Any]:
    """Write frames of ``data``'s ``split`` to the video file ``out``: the ``episodes`` (ids,
    in the order given), the frame range ``frames`` ``(A, B)`` of the split, or all of it.
    ``overlay_actions`` writes each frame's true action on it; ``scale`` enlarges the frames
    (nearest neighbour). Returns a JSON-able summary."""
    from tqdm import tqdm

    t0 = time.time()
    if episodes is not None and frames is not None:
        raise UserError("pass --episodes or --frames, not both")
    if scale < 1:
        raise UserError(f"--scale must be at least 1, got {scale}")
    info = open_dataset(Path(data))
    if split not in info.chunks:
        raise UserError(f"unknown split {split!r}: choose train or test")
    if overlay_actions and not info.has_actions:
        raise DatasetError(
            f"{data} has no actions to overlay (an action-free dataset): drop --overlay-actions"
        )
    spans = _spans_for(info, split, episodes, frames)
    total = sum(b - a for _, a, b in spans)
    writer = VideoWriter(out, fps, OBS_SHAPE[0] * scale, crf)
    bar = tqdm(total=total, unit="frame", unit_scale=True, disable=not progress, desc="export")
    try:
        _encode(writer, _frames_of(info, split, spans, overlay_actions), scale, bar)
        path = writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    return {
        "out": str(path),
        "split": split,
        "frames": writer.frames,
        "fps": fps,
        "codec": CODECS[path.suffix.lower()][0],
        "bytes": path.stat().st_size,
        "wall_seconds": round(time.time() - t0, 2),
    }


def export_episodes(
    data: str | Path,
    out_dir: str | Path,
    split: str = "train",
    fps: float = 15.0,
    crf: int = DEFAULT_CRF,
    ext: str = ".mp4",
    episodes: list[int] | None = None,
) -> list[dict[str, Any]]:
    """Export each episode of ``split`` (or the ``episodes`` given) to its own file
    ``out_dir/episode_<id>.<ext>``; returns ``[{"episode_id", "path", "frames"}]``."""
    info = open_dataset(Path(data))
    where = episode_spans(info.chunks[split])
    out = []
    for e in sorted(where) if episodes is None else episodes:
        path = Path(out_dir) / f"episode_{e:06d}{ext}"
        s = export_video(data, path, split, [e], None, fps, crf=crf, progress=False)
        out.append({"episode_id": e, "path": s["out"], "frames": s["frames"]})
    return out

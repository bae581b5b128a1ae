"""``lapo data import-video`` / ``export-video``: videos made here with PyAV become datasets
with the expected frames, Procgen episodes survive a round trip, a killed import resumes to
the same dataset, and every bad input is one line with exit status 2."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from lapo.cli import main
from lapo.data.collect import collect
from lapo.data.format import DatasetError, open_dataset, validate_dataset, visible_chunks
from lapo.data.video import VideoImport, import_videos, resample
from lapo.data.video_export import episode_spans, export_episodes, export_video, read_span


def _pal8(img: np.ndarray) -> av.VideoFrame:
    """A GIF frame: ``img``'s own colours (256 at most) as its palette, so nothing is lost."""
    colours, index = np.unique(img.reshape(-1, 3), axis=0, return_inverse=True)
    palette = np.zeros((256, 4), np.uint8)  # ARGB
    palette[:, 0] = 255
    palette[: len(colours), 1:] = colours
    pixels = index.reshape(img.shape[:2]).astype(np.uint8)
    return av.VideoFrame.from_ndarray((pixels, palette), format="pal8")


# codec -> (pixel format, options): lossless or nearly so, so grey levels survive
ENCODERS = {
    "libx264": ("yuv444p", {"qp": "0"}),
    "libvpx-vp9": ("yuv420p", {"crf": "4", "b": "0"}),
    "gif": ("pal8", {}),
    "mpeg4": ("yuv420p", {}),
}


def make_video(
    path: Path,
    frames: np.ndarray,
    fps: int = 30,
    codec: str = "libx264",
    pts_ms: list[int] | None = None,
) -> Path:
    """Encode ``frames`` ``(n, H, W, 3)`` uint8; ``pts_ms`` gives irregular timestamps (ms)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt, s.options = ENCODERS[codec]
        if pts_ms is not None:
            s.codec_context.time_base = Fraction(1, 1000)
        for i, img in enumerate(frames):
            img = np.ascontiguousarray(img)
            f = _pal8(img) if codec == "gif" else av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts_ms is not None:
                f.pts, f.time_base = pts_ms[i], Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def grey(n: int, h: int = 64, w: int = 64) -> np.ndarray:
    """Frame i is grey level 8 i: which source frame an output frame shows can be read back."""
    return np.broadcast_to((8 * np.arange(n, dtype=np.uint8))[:, None, None, None], (n, h, w, 3))


def split_obs(root: Path, split: str = "train") -> np.ndarray:
    """Every frame of a split ``(n, 64, 64, 3)``."""
    chunks = open_dataset(root).chunks[split]
    return np.concatenate([b for c in chunks for b in read_span(c, 0, c.frames)])


def source_index(obs: np.ndarray) -> np.ndarray:
    """The source frame each grey output frame shows."""
    return np.rint(obs.reshape(len(obs), -1).mean(1) / 8).astype(int)


def test_resample_takes_the_nearest_frame() -> None:
    # frames at 0, 0.1, 0.35 s (0.05 s long); 10 fps: t = 0, .1, .2, .3 -> a, b, b, c (0.2 is
    # nearer 0.1 than 0.35; 0.3 nearer 0.35), and nothing at 0.4 (c ends at 0.4)
    times = [(Fraction(0), "a"), (Fraction(1, 10), "b"), (Fraction(35, 100), "c")]
    frames = [(t, Fraction(5, 100), x) for t, x in times]
    assert list(resample(frames, Fraction(10))) == [("a", 1), ("b", 2), ("c", 1)]
    assert list(resample(frames, Fraction(10), start=Fraction(1, 10), end=Fraction(3, 10))) == [
        ("b", 2)
    ]


def test_import_codecs_rates_and_crops(tmp_path: Path) -> None:
    vids = tmp_path / "vids"
    vids.mkdir()
    make_video(vids / "a.mp4", grey(30, 80, 96), fps=30)
    make_video(vids / "b.webm", grey(24), fps=24, codec="libvpx-vp9")
    make_video(vids / "c.gif", grey(12, 32, 32), fps=10, codec="gif")
    # variable frame rate: gaps of 20, 40 and 70 ms
    gaps = [20, 40, 70] * 7
    pts = [0, *np.cumsum(gaps).tolist()][:20]
    make_video(vids / "d.mkv", grey(20), codec="libx264", pts_ms=pts)
    out = tmp_path / "ds"
    s = import_videos([vids], out, VideoImport(test_fraction=0), progress=False)
    info = validate_dataset(out)
    assert not info.has_actions and info.chunks["test"] == []
    m = info.manifest
    by_name = {Path(v["path"]).name: v for v in m["sources"]}
    # constant-rate videos at their own rate: every frame once
    assert [by_name[n]["frames"] for n in ("a.mp4", "b.webm", "c.gif")] == [30, 24, 12]
    obs = split_obs(out)
    assert obs.shape == (s["frames"]["train"], 64, 64, 3)
    first = {
        n: sum(v["frames"] for v in m["sources"][: m["sources"].index(by_name[n])]) for n in by_name
    }
    for n, k in (("a.mp4", 30), ("b.webm", 24), ("c.gif", 12)):
        assert (source_index(obs[first[n] : first[n] + k]) == np.arange(k)).all(), n
    # the VFR video comes out evenly spaced at --fps 20: frame k shows the source frame
    # nearest to k / 20 s
    vfr = tmp_path / "vfr"
    import_videos([vids / "d.mkv"], vfr, VideoImport(fps=20, test_fraction=0), progress=False)
    got = source_index(split_obs(vfr))
    with av.open(str(vids / "d.mkv")) as c:
        st = c.streams.video[0]
        decoded = [(f.pts * st.time_base, f.duration * st.time_base) for f in c.decode(st)]
    times = [t for t, _ in decoded]
    end = decoded[-1][0] + decoded[-1][1]
    assert len(got) == math.ceil(end * 20)  # output frames k / 20 s before the last one ends
    for k, i in enumerate(got):  # exact times: ties go to the later frame
        gap = [abs(t - Fraction(k, 20)) for t in times]
        assert i == max(j for j in range(len(times)) if gap[j] == min(gap)), k


def test_crop_and_trim(tmp_path: Path) -> None:
    wide = np.zeros((6, 64, 128, 3), np.uint8)
    wide[:, :, :32, 0] = wide[:, :, 32:96, 2] = wide[:, :, 96:, 1] = 255  # red | blue | green
    make_video(tmp_path / "wide.mp4", wide)
    for crop, left in (("centre", (0, 0, 255)), ("none", (255, 0, 0))):
        out = tmp_path / crop
        import_videos(
            [tmp_path / "wide.mp4"], out, VideoImport(crop=crop, test_fraction=0), progress=False
        )
        obs = split_obs(out).astype(int)
        assert np.abs(obs[:, 32, 2] - left).max() < 8, crop
    make_video(tmp_path / "long.mp4", grey(30), fps=10)  # 3 s
    out = tmp_path / "trim"
    import_videos(
        [tmp_path / "long.mp4"], out, VideoImport(start=1, end=2, test_fraction=0), progress=False
    )
    assert (source_index(split_obs(out)) == np.arange(10, 20)).all()


@pytest.fixture(scope="module")
def procgen(tmp_path_factory) -> Path:
    """A tiny coinrun dataset with actions: 300 train + 100 test frames of random play."""
    out = tmp_path_factory.mktemp("coin") / "data"
    collect("coinrun", "random", 300, out, test_frames=100, num_envs=2, progress=False)
    return out


def episode(root: Path, split: str, e: int) -> np.ndarray:
    chunks = open_dataset(root).chunks[split]
    return np.concatenate(
        [b for c, a, z in episode_spans(chunks)[e] for b in read_span(chunks[c], a, z)]
    )


def test_round_trip_psnr(tmp_path: Path, procgen: Path) -> None:
    files = export_episodes(procgen, tmp_path / "mp4", "train", fps=15)
    out = tmp_path / "back"
    opts = VideoImport(fps=15, crop="none", test_fraction=0)
    import_videos([tmp_path / "mp4"], out, opts, progress=False)
    sources = {Path(v["path"]).name: v for v in open_dataset(out).manifest["sources"]}
    psnr = []
    for f in files:
        orig = episode(procgen, "train", f["episode_id"]).astype(float)
        back = episode(out, "train", sources[Path(f["path"]).name]["episode_id"])
        assert back.shape == orig.shape
        mse = ((back - orig) ** 2).reshape(len(orig), -1).mean(1)
        psnr.append(10 * np.log10(255**2 / mse))
    psnr = np.concatenate(psnr)
    # H.264 yuv420p at --crf 15, measured 33.1 dB mean, 31.2 worst on coinrun: halving the
    # colour resolution of 64x64 pixel art costs most of it (34.1 dB mean even at crf 0)
    assert psnr.mean() > 31 and psnr.min() > 29


def test_export_gif_is_lossless_and_overlay(tmp_path: Path, procgen: Path) -> None:
    s = export_video(procgen, tmp_path / "t.gif", "test", frames=(5, 45), progress=False)
    assert s["frames"] == 40
    with av.open(str(tmp_path / "t.gif")) as c:
        got = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert (got == split_obs(procgen, "test")[5:45]).all()
    s = export_video(
        procgen, tmp_path / "o.mp4", episodes=[0], overlay_actions=True, scale=2, progress=False
    )
    assert s["frames"] == len(episode(procgen, "train", 0))


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root``, by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, Path]:
    """One file per kind of bad input."""
    d = tmp_path / "bad"
    d.mkdir()
    (d / "text.mp4").write_text("not a video\n")
    (d / "empty.mp4").touch()
    noise = np.random.default_rng(0).integers(0, 255, (90, 64, 64, 3), dtype=np.uint8)
    good = make_video(d / "good.webm", noise, codec="libvpx-vp9").read_bytes()
    (d / "cut.webm").write_bytes(good[: len(good) // 2])  # decodes, but ends early
    (d / "good.webm").unlink()
    (d / "cut.mp4").write_bytes(make_video(d / "x.mp4", grey(30)).read_bytes()[:2000])
    (d / "x.mp4").unlink()
    with av.open(str(d / "audio.mp4"), "w") as c:
        s = c.add_stream("aac", rate=44100)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), "fltp", "mono")
        frame.sample_rate = 44100
        for p in [*s.encode(frame), *s.encode()]:
            c.mux(p)
    # an AVI whose codec tag no decoder knows
    avi = make_video(d / "x.avi", grey(5), codec="mpeg4").read_bytes()
    (d / "codec.avi").write_bytes(avi.replace(b"FMP4", b"ZQ9X"))
    (d / "x.avi").unlink()
    make_video(d / "short.mp4", grey(2))
    (d / "novideos").mkdir()
    (d / "novideos" / "notes.txt").write_text("no videos here")
    return {p.name: p for p in d.iterdir()}


def test_bad_inputs_one_line_exit_2(tmp_path: Path, bad_files: dict, capsys) -> None:
    vids = tmp_path / "vids"
    vids.mkdir()
    make_video(vids / "ok.mp4", grey(10))
    make_video(vids / "ok2.mp4", grey(12))
    ds = tmp_path / "ds"
    assert run_cli(capsys, "data", "import-video", str(vids), "--out", str(ds), "--quiet")[0] == 0
    before = snapshot(ds)
    expect = {
        "text.mp4": "not a video FFmpeg can read",
        "empty.mp4": "empty (0 bytes)",
        "cut.webm": "truncated",
        "cut.mp4": "truncated",
        "audio.mp4": "no video stream (audio only)",
        "codec.avi": "no decoder for its video codec",
        "short.mp4": "a window needs 3",
        "novideos": "holds no videos",
    }
    for name, words in expect.items():
        path = str(bad_files[name])
        argv = ["data", "import-video", path, "--out", str(ds), "--quiet", "--resume"]
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and err.count("\n") == 1 and words in err and path in err, err
        with pytest.raises(DatasetError, match=re.escape(words)):
            import_videos([path], tmp_path / "new", progress=False)  # a new dataset: none left
        assert not (tmp_path / "new").exists()
        assert snapshot(ds) == before, name
    code, _, err = run_cli(capsys, "data", "import-video", str(vids), "--out", str(ds))
    assert code == 2 and "--resume" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "data", "import-video", str(vids), "--out", "x", "--size", "128")
    assert code == 2 and "64x64" in err and err.count("\n") == 1
    code, _, err = run_cli(
        capsys,
        "data",
        "export-video",
        str(ds),
        "--out",
        str(tmp_path / "a.mp4"),
        "--overlay-actions",
    )
    assert code == 2 and "no actions" in err and err.count("\n") == 1
    assert snapshot(ds) == before
    # --skip-bad: the good videos of a folder go in, the bad ones are listed
    for name in ("ok.mp4", "ok2.mp4"):
        (bad_files["text.mp4"].parent / name).write_bytes((vids / name).read_bytes())
    argv = ["data", "import-video", str(bad_files["text.mp4"].parent), "--out", str(tmp_path / "s")]
    code, out, err = run_cli(capsys, *argv, "--skip-bad", "--quiet")
    summary = json.loads(out)
    assert code == 0 and sum(summary["videos"].values()) == 2
    skipped = {Path(s["path"]).name for s in summary["skipped"]}
    assert skipped == set(expect) - {"novideos"}
    assert err.count("lapo: skipped: ") == len(skipped)


def unrecorded(out: Path) -> int:
    """Visible chunks of ``out`` that its manifest does not list yet, once it lists a video."""
    try:
        m = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return 0
    if not m["sources"]:
        return 0
    listed = {f"{s}/{n}" for s in m["splits"] for n in m["splits"][s]["chunk_lengths"]}
    return sum(f"{s}/{n}" not in listed for s in m["splits"] for n in visible_chunks(out / s))


def test_resume_after_kill_matches_uninterrupted(tmp_path: Path) -> None:
    vids = tmp_path / "vids"
    vids.mkdir()
    for i, n in enumerate((20, 300, 12)):
        make_video(vids / f"v{i}.mp4", np.roll(grey(32), i, 0)[np.arange(n) % 32])
    args = ["data", "import-video", str(vids), "--chunk-frames", "8", "--quiet"]
    whole = tmp_path / "whole"
    assert main([*args, "--out", str(whole)]) == 0
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "lapo", *args, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # kill it in the middle of the long video: one video recorded, chunks unrecorded
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if unrecorded(out) >= 3:
                break
            time.sleep(0.005)
        else:
            pytest.fail("the import ended before it could be killed in the middle of a video")
    finally:
        proc.kill()  # SIGKILL
        proc.wait()
    info = validate_dataset(out)  # valid: only the finished videos count
    done = len(info.manifest["sources"])
    assert done < 3 and info.uncommitted
    assert info.frames("train") + info.frames("test") == sum(
        v["frames"] for v in info.manifest["sources"]
    )
    assert main([*args, "--out", str(out), "--resume"]) == 0
    a, b = open_dataset(whole).manifest, open_dataset(out).manifest
    assert a["sources"] == b["sources"] and a["splits"] == b["splits"]
    for split in ("train", "test"):
        assert (split_obs(whole, split) == split_obs(out, split)).all()


def test_lam_trains_on_imported_video(tmp_path: Path, capsys) -> None:
    vids = tmp_path / "vids"
    vids.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        make_video(vids / f"v{i}.mp4", rng.integers(0, 255, (40, 64, 64, 3), dtype=np.uint8))
    ds = tmp_path / "ds"
    import_videos([vids], ds, VideoImport(test_fraction=0.34), progress=False)
    argv = ["lam", "train", "--data", str(ds), "--out", str(tmp_path / "run"), "--preset", "fast"]
    code, out, _ = run_cli(capsys, *argv, "--steps", "2", "--threads", "1", "--quiet")
    assert code == 0 and json.loads(out)["steps"] == 2


@pytest.mark.slow
def test_one_video_is_enough_for_stage1_stage2_and_play(tmp_path: Path, procgen: Path, capsys):
    # one recording (here 300 real coinrun frames in one H.264 file): its last --test-fraction
    # becomes the test split, so training, evaluation and play all have what they need
    video = tmp_path / "one.mp4"
    export_video(procgen, video, "train", fps=15, progress=False)
    ds = tmp_path / "ds"
    code, out, _ = run_cli(capsys, "data", "import-video", str(video), "--out", str(ds), "--quiet")
    summary = json.loads(out)
    assert code == 0 and summary["frames"] == {"train": 270, "test": 30}, summary
    assert summary["test_tails"] == 1 and not summary["notes"]
    # the cut is in time: the train episode is the first 90%, the test episode the rest, and
    # both end with done
    whole = split_obs(procgen, "train")
    assert np.abs(split_obs(ds, "train").astype(int) - whole[:270]).mean() < 8
    assert np.abs(split_obs(ds, "test").astype(int) - whole[270:]).mean() < 8
    (source,) = open_dataset(ds).manifest["sources"]
    assert source["frames"] == 300 and source["test_tail"]["first_frame"] == 270
    lam, bc = tmp_path / "lam", tmp_path / "bc"
    tiny = ["--preset", "fast", "--steps", "4", "--threads", "1", "--quiet"]
    argv = ["lam", "train", "--data", str(ds), "--out", str(lam), *tiny, "--eval-every", "2"]
    assert run_cli(capsys, *argv)[0] == 0
    argv = ["bc", "train", "--lam", str(lam), "--data", str(ds), "--out", str(bc), *tiny]
    assert run_cli(capsys, *argv)[0] == 0
    from lapo.play.server import make_server
    from lapo.play.session import open_session

    session = open_session(lam, ds, windows=20, clusters=3)
    server = make_server(session, "127.0.0.1", 0)
    try:
        assert len(session.buttons) == 3 and session.info["data"] == str(ds)
    finally:
        server.server_close()


def test_a_video_too_short_to_hold_out_its_end_is_one_line(tmp_path: Path, capsys) -> None:
    make_video(tmp_path / "five.mp4", grey(5))
    argv = ["data", "import-video", str(tmp_path / "five.mp4"), "--out", str(tmp_path / "d")]
    code, _, err = run_cli(capsys, *argv, "--quiet")
    assert code == 2 and err.count("\n") == 1 and "too few to hold out its end" in err, err
    assert not (tmp_path / "d").exists()
    # with --test-fraction 0 the same video imports, and says what lam train will lack
    code, out, _ = run_cli(capsys, *argv, "--test-fraction", "0", "--quiet")
    assert code == 0 and "--test-fraction above 0" in json.loads(out)["notes"][0]


def test_tail_start_by_hand() -> None:
    from lapo.data.video import holds_out_tail, tail_start

    assert tail_start(300, 0.1) == 270 and tail_start(10, 0.5) == 5
    assert tail_start(6, 0.01) == 3 and tail_start(100, 0.99) == 3  # each part a window long
    assert holds_out_tail(1, 0.1) and not holds_out_tail(2, 0.1) and not holds_out_tail(1, 0.0)

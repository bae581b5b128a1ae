"""`lapo demo --fast` end to end on real Procgen, its report, resuming; `lapo reproduce` on a
toy grid."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from margins import accuracy_se, assert_margin
from PIL import Image

from lapo.cli import main
from lapo.config import DemoConfig, preset
from lapo.report.demo import labels_used
from lapo.workflows import demo as demo_workflow
from lapo.workflows import workers
from lapo.workflows.demo import (
    DEMO_STAGES,
    NEEDS,
    PRIORITY,
    STAGE1_STAGES,
    demo_stages,
    find_resumable,
    run_demo,
    saved_settings,
)
from lapo.workflows.workers import lanes

FAST = preset(DemoConfig, "fast")
# the policies of the fixture's demo (--compare-labels: LAPO from frames alone too) -> where
# each used the K labels
USED = labels_used(dataclasses.replace(FAST, compare_labels=True))
SECTIONS = [
    "Summary",
    "Returns",
    "Did the latent actions learn the true actions?",
    "Latent actions by true action",
    "Probe confusion matrix",
    "World-model predictions",
    "Learning curves",
    "What was run",
]
PICTURES = SECTIONS[3:7]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo-fast"
    assert main(["demo", "--fast", "--compare-labels", "--quiet", "--out", str(out)]) == 0
    return out


def _images(html: str) -> dict[str, list[Image.Image]]:
    """Section heading -> the images embedded in it."""
    found = {}
    for part in re.split(r"<h2 ", html)[1:]:
        heading = re.search(r">([^<]+)</h2>", part).group(1)
        found[heading] = [
            Image.open(io.BytesIO(base64.b64decode(b)))
            for b in re.findall(r"src='data:image/(?:png|gif);base64,([^']+)'", part)
        ]
    return found


def test_report_holds_every_section_with_a_real_image(demo):
    html = (demo / "report.html").read_text()
    images = _images(html)
    assert list(images) == SECTIONS
    assert images["Returns"] and len(images["Latent actions by true action"]) == 2  # + clusters
    for heading in ["Returns", *PICTURES]:
        assert images[heading], f"no image in {heading}"
        for im in images[heading]:
            assert im.width >= 200 and im.height >= 150
            # a real picture, not a blank canvas
            assert np.asarray(im.convert("L")).std() > 5
    assert images["World-model predictions"][1].format == "GIF"
    assert images["World-model predictions"][1].n_frames > 3
    for name in ("random", "demonstrator", *USED):
        assert name in html
    # the summary says where each policy used the labels
    for where in USED.values():
        assert where in html
    assert "CPU cores" in html  # the machine is stated
    # the policies lead the summary: LAPO first, then its paired difference from each baseline
    # on the same labels, and only then the probe
    summary = html[: html.index("<h2 id='returns'")]
    first = [summary.index(s) for s in ("return: LAPO (decoded)", "return: BC on the same",
             "LAPO (decoded) - BC on the same labels", "LAPO (decoded) - supervised IDM",
             "probe accuracy")]  # fmt: skip
    assert first == sorted(first)
    assert "paired episodes" in summary


def test_demo_numbers_beat_their_baselines(demo):
    probe = json.loads((demo / "probe.json").read_text())
    # latent actions recover the true action better than chance (measured on an AMD EPYC
    # with AVX512, float32, stage 1 from frames alone: 0.292 against 1/15, 21.6 s.e.)
    se = accuracy_se(probe["chance"], probe["n_test"])
    assert_margin("demo probe over chance", probe["accuracy"], probe["chance"], se)
    stages = json.loads((demo / "stages.json").read_text())
    assert list(stages) == [
        "collect",
        "stage1",
        "probe",
        "ceiling",
        "plots",
        "stage2",
        "decode",
        "baseline",
        "idm_bc",
        "stage1_video",
        "stage2_video",
        "decode_video",
        "eval_random",
        "eval_demonstrator",
        "eval_decoded",
        "eval_baseline",
        "eval_idm_bc",
        "eval_decoded_video",
        "evaluate",
        "report",
    ]
    # two at a time on 2 or more cores: some stages' spans overlap
    spans = sorted((v["started"], v["finished"]) for v in stages.values())
    overlap = any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False))
    assert overlap == (lanes(0)[0] == 2)
    # every method that used labels used the same K windows (each drew them by the seed)
    starts = json.loads((demo / "decoded" / "labelled_windows.json").read_text())["starts"]
    assert len(starts) == FAST.labels
    for run in ("stage1", "decoded_video", "bc_on_labels", "idm_labels_bc"):
        assert json.loads((demo / run / "labelled_windows.json").read_text())["starts"] == starts
    returns = json.loads((demo / "returns.json").read_text())
    assert list(returns) == ["random", "demonstrator", *USED]
    # the report sets the probe beside the untrained IDM and the supervised ceiling
    untrained = json.loads((demo / "probe_untrained.json").read_text())
    ceiling = json.loads((demo / "ceiling.json").read_text())
    assert untrained["n_test"] == probe["n_test"] and ceiling["steps"] == FAST.ceiling_steps
    html = (demo / "report.html").read_text()
    assert f"{untrained['accuracy']:.3f}" in html and f"{ceiling['accuracy']:.3f}" in html
    # and stage 1's action head beside (b)'s IDM, each fit on the same K labels alone
    idm = stages["idm_bc"]["result"]
    assert f"{probe['head_accuracy']:.3f} / {probe['head_balanced_accuracy']:.3f}" in html
    assert f"{idm['idm_test_accuracy']:.3f} / {idm['idm_test_balanced_accuracy']:.3f}" in html
    # LAPO (the labels in stage 1) decodes from stage 1's action head, LAPO from frames alone
    # with a fresh decoder, and the report sets each against both baselines, paired over the
    # same episodes
    for run, init in (("decoded", "stage1-head"), ("decoded_video", "fresh")):
        offline = json.loads((demo / run / "config.json").read_text())["offline"]
        assert offline["decoder_init"] == init, run
    assert json.loads((demo / "stage1_video" / "config.json").read_text())["lam"]["labels"] == 0
    # both stages 1 with the demo's world model at 32x32 (--wm-space-to-depth, the default)
    for run in ("stage1", "stage1_video"):
        lam = json.loads((demo / run / "config.json").read_text())["lam"]
        assert lam["wm_space_to_depth"] is FAST.wm_space_to_depth is True, run
    for lapo in ("LAPO (decoded)", "LAPO from frames alone (decoded)"):
        for name in ("BC on the same labels", "supervised IDM labels, then BC"):
            assert f"{lapo} - {name}" in html
    # each training stage's wall time covers the time the stage reports itself (both rounded)
    for name, key in (("stage1", "train_seconds"), ("stage2", "wall_seconds")):
        assert 0 < stages[name]["result"][key] <= stages[name]["wall_seconds"] + 0.1, name


def test_resume_skips_finished_stages(demo, tmp_path):
    run = tmp_path / "demo-copy"
    shutil.copytree(demo, run)
    # recorded before --policy existed: a setting added since takes its default
    saved = json.loads((run / "demo_config.json").read_text())
    del saved["policy"]
    (run / "demo_config.json").write_text(json.dumps(saved))
    stages = json.loads((run / "stages.json").read_text())
    # as if the run had been interrupted while writing its report (the last stage: the cheapest
    # to redo, and every earlier stage must be skipped)
    del stages["report"]
    (run / "stages.json").write_text(json.dumps(stages))
    (run / "report.html").unlink()
    weights = (run / "stage1" / "lam.safetensors").stat().st_mtime_ns
    policy = (run / "stage2" / "policy.safetensors").stat().st_mtime_ns
    cfg = dataclasses.replace(FAST, compare_labels=True)
    assert find_resumable(tmp_path, cfg) == run
    run_demo(cfg, run, progress=False)
    after = json.loads((run / "stages.json").read_text())
    for name in stages:  # collect, stage1, probe, ceiling, plots, stage2, decode, ..., evaluate
        assert after[name] == stages[name]
    assert "evaluate" in after and "report" in after
    assert (run / "stage1" / "lam.safetensors").stat().st_mtime_ns == weights
    assert (run / "stage2" / "policy.safetensors").stat().st_mtime_ns == policy
    assert (run / "report.html").exists()
    assert find_resumable(tmp_path, cfg) is None  # finished runs are not resumed


def test_a_demo_recorded_before_a_setting_resumes_as_it_was_trained(tmp_path):
    # written before --video-only, --bc-arch and --wm-space-to-depth: stage 1 from frames
    # alone, IMPALA policies, the world model at 64x64
    fast = dataclasses.replace(FAST, bc_arch="nature")
    saved = dataclasses.asdict(fast)
    del saved["video_only"], saved["bc_arch"], saved["wm_space_to_depth"]
    (tmp_path / "demo_config.json").write_text(json.dumps(saved))
    settings = saved_settings(tmp_path / "demo_config.json")
    was = {"video_only": True, "bc_arch": "impala", "wm_space_to_depth": False}
    assert settings == {**dataclasses.asdict(fast), **was}


def test_stages_run_after_what_they_read_and_two_at_a_time_on_two_cores():
    assert sorted(PRIORITY) == sorted(DEMO_STAGES)
    order = list(DEMO_STAGES)  # one after another, in this order, every need comes first
    for name, needs in NEEDS.items():
        assert all(order.index(k) < order.index(name) for k in needs), name
    assert NEEDS["report"] == tuple(order[:-1])
    assert (lanes(1), lanes(2), lanes(3), lanes(8)) == ((1, 1), (2, 1), (2, 1), (2, 4))


def test_a_failing_stage_keeps_what_finished_and_a_rerun_does_the_rest(tmp_path, monkeypatch):
    # the scheduler alone, on one thread (one lane, in this process), with stages that only
    # record when they ran: the third to become ready fails once
    ran: list[str] = []
    fail = {"ceiling"}

    def stage(name):
        def run(d):
            assert all(k in ran for k in NEEDS.get(name, ()) if k in demo_stages(d.cfg))
            if name in fail:
                fail.discard(name)
                raise RuntimeError(f"{name} failed")
            ran.append(name)
            return {"ran": name}

        return run

    monkeypatch.setattr(demo_workflow, "DEMO_STAGES", {k: stage(k) for k in DEMO_STAGES})
    cfg = dataclasses.replace(FAST, threads=1)
    with pytest.raises(RuntimeError, match="ceiling failed"):
        run_demo(cfg, tmp_path, progress=False)
    first = list(ran)
    recorded = json.loads((tmp_path / "stages.json").read_text())
    assert list(recorded) == [k for k in DEMO_STAGES if k in first]  # in the demo's order
    assert "ceiling" not in recorded and "report" not in recorded
    run_demo(cfg, tmp_path, progress=False)
    assert sorted(first + ran[len(first) :]) == sorted(demo_stages(cfg))  # each stage once
    assert ran[-1] == "report"


def test_demo_refuses_a_game_without_a_demonstrator(capsys):
    assert main(["demo", "--fast", "--game", "bigfish", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no demonstrator ships for 'bigfish'" in err
    assert "--policy random" in err  # and says what to do instead
    argv = ["demo", "--fast", "--policy", "random", "--compare-labels", "--out", "unused"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--compare-labels" in err
    assert main(["demo", "--fast", "--policy", "random", "--game", "pong", "--out", "u"]) == 2
    assert "unknown game 'pong'" in capsys.readouterr().err


def test_a_random_play_demo_stops_after_stage1_and_its_report_says_so(demo, tmp_path):
    # the fast demo's stage-1 stages stand in for a random-play run's (the same functions; the
    # recording differs only in the policy collect() is given)
    run = tmp_path / "demo-random"
    shutil.copytree(demo, run)
    cfg = dataclasses.replace(FAST, policy="random")
    assert list(demo_stages(cfg)) == list(STAGE1_STAGES)
    stages = json.loads((run / "stages.json").read_text())
    kept = {k: v for k, v in stages.items() if k in STAGE1_STAGES and k != "report"}
    (run / "stages.json").write_text(json.dumps(kept))
    (run / "demo_config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    (run / "returns.json").unlink()
    run_demo(cfg, run, progress=False)
    assert list(json.loads((run / "stages.json").read_text())) == list(STAGE1_STAGES)
    html = (run / "report.html").read_text()
    assert list(_images(html)) == [s for s in SECTIONS if s != "Returns"]
    assert "random-play data" in html and "No policy was trained" in html
    assert "action the random policy took" in html and "return:" not in html


def test_paired_difference_is_the_mean_and_standard_error_of_per_episode_differences():
    from lapo.report.demo import paired_difference

    # differences 1, 0, 2: mean 1, sample s.d. 1, s.e. 1/sqrt(3)
    mean, se, n = paired_difference({"episode_returns": [1, 2, 3]}, {"episode_returns": [0, 2, 1]})
    assert (mean, n) == (1.0, 3) and se == pytest.approx(1 / np.sqrt(3))
    # evaluations that kept no episodes, or other episodes, are not paired
    assert paired_difference({"episode_returns": [1, 2]}, {"mean_return": 1.0}) is None
    assert paired_difference({"episode_returns": [1, 2]}, {"episode_returns": [1, 2, 3]}) is None


def test_charts_name_actions_and_label_axes():
    from lapo.envs import ACTION_NAMES
    from lapo.report.charts import confusion_chart, returns_chart

    conf = np.eye(15, dtype=int).tolist()
    ax = confusion_chart(conf, "coinrun", "probe").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(ACTION_NAMES)
    assert ax.get_xlabel() and ax.get_ylabel() and "coinrun" in ax.get_title()
    ax = returns_chart({"random": {"mean_return": 1.0, "stderr_return": 0.1}}, "coinrun").axes[0]
    assert ax.get_ylabel() and "coinrun" in ax.get_title()


def test_grid_summary_has_a_row_per_game_and_method_and_a_mean_over_games(tmp_path):
    # two games' evaluation files as the grid writes them; the summary is what is under test
    from lapo.config import ReproduceConfig
    from lapo.report.grid import summarise

    cfg = dataclasses.replace(preset(ReproduceConfig, "cpu"), games=["coinrun", "jumper"], seeds=2)
    for g, base in (("coinrun", 0.2), ("jumper", 0.6)):
        (tmp_path / g).mkdir()
        (tmp_path / g / "eval_random.json").write_text(json.dumps({"mean_return": 1.0}))
        for seed in range(2):
            folder = tmp_path / g / f"seed{seed}"
            folder.mkdir()
            for method, lift in (("bc_k256", 0.0), ("lapo_offline_k256", 0.1)):
                e = {"mean_return": 5.0, "stderr_return": 0.5, "episodes": 10,
                     "normalized_return": base + lift + 0.1 * seed}  # fmt: skip
                (folder / f"eval_{method}.json").write_text(json.dumps(e))
    result = summarise(cfg, tmp_path)
    assert result["evaluations"] == 8
    rows = (tmp_path / "results.csv").read_text().splitlines()[1:]
    assert {tuple(r.split(",")[:3:2]) for r in rows} == {
        (g, m) for g in ("coinrun", "jumper") for m in ("bc_k256", "lapo_offline_k256")
    }
    summary = (tmp_path / "summary.md").read_text()
    # lapo_offline: coinrun 0.35 +- 0.05 (0.3, 0.4), jumper 0.75 +- 0.05, mean over games 0.55
    assert (
        "| lapo_offline_k256 | 0.35 ± 0.05 (nan; n=2) | 0.75 ± 0.05 (nan; n=2) | 0.55 |" in summary
    )
    assert Image.open(result["offline"]).width > 300


def test_grid_summary_gives_label_margins_in_standard_errors_and_stage1_probes(tmp_path):
    from lapo.config import ReproduceConfig
    from lapo.report.grid import summarise

    cfg = dataclasses.replace(
        preset(ReproduceConfig, "cpu"), games=["coinrun"], seeds=2, labels=[256]
    )
    g = tmp_path / "coinrun"
    returns = {"lapo_labels_k256": (6.0, 7.0), "bc_k256": (5.0, 5.0), "idm_bc_k256": (6.5, 6.5)}
    for seed in range(2):
        folder = g / f"seed{seed}"
        folder.mkdir(parents=True)
        for method, r in returns.items():
            e = {"mean_return": r[seed], "stderr_return": 0.4, "episodes": 100,
                 "normalized_return": r[seed] / 10}  # fmt: skip
            (folder / f"eval_{method}.json").write_text(json.dumps(e))
        for run, acc in (("lam", 0.30), ("lam_labels_k256", 0.34 + 0.02 * seed)):
            (folder / run).mkdir()
            (folder / f"{run}.done.json").write_text("{}")
            (folder / run / "metrics.csv").write_text(
                "step,probe_acc,probe_balanced_acc,head_acc,head_balanced_acc\n0,0.2,0.1,,\n"
                f"100,,,,\n200,{acc},{acc / 2},{acc - 0.1},0.05\n300,,,,\n"
            )
        (folder / "idm_bc_k256").mkdir()
        (folder / "idm_bc_k256.done.json").write_text("{}")
        idm = {"idm_test_accuracy": 0.26, "idm_test_balanced_accuracy": 0.11}
        (folder / "idm_bc_k256" / "supervised_idm.json").write_text(json.dumps(idm))
    (g / "seed1" / "lam.done.json").unlink()  # an unfinished run does not count
    assert summarise(cfg, tmp_path)["evaluations"] == 6
    summary = (tmp_path / "summary.md").read_text()
    # differences (1, 2): mean 1.5, std 0.707, s.e. over seeds 0.5 -> 3.0; of episodes: four
    # evaluations with s.e. 0.4, sqrt(4 x 0.16) / 2 = 0.4 -> 3.75; (-0.5, 0.5): 0 -> 0.0
    assert (
        "| lapo_labels_k256 - bc_k256 | +1.50 (+3.0 s.e. over seeds, +3.8 of episodes; n=2) |"
        in summary
    )
    assert (
        "| lapo_labels_k256 - idm_bc_k256 | +0.00 (+0.0 s.e. over seeds, +0.0 of episodes; n=2) |"
        in summary
    )
    assert "| stage 1, video only | 0.300 / 0.150 (n=1) |" in summary
    assert "| stage 1 with K = 256 labels | 0.350 / 0.175 (n=2) |" in summary
    assert "| (b)'s supervised IDM on K = 256 | 0.260 / 0.110 (n=2) |" in summary
    assert "| stage 1's action head on its K = 256 | 0.250 / 0.050 (n=2) |" in summary


def test_a_worker_ends_itself_when_the_process_that_started_it_is_killed(tmp_path):
    # a demo or grid killed with SIGKILL (or `kill`) cannot tell its workers; each watches it
    script = tmp_path / "parent.py"
    script.write_text(
        "import os, time\n"
        "from lapo.workflows import workers\n"
        "def work(parent):\n"
        "    workers.exit_with(parent, every=0.1)\n"
        "    time.sleep(120)\n"
        "if __name__ == '__main__':\n"
        "    p = workers.context().Process(target=work, args=(os.getpid(),))\n"
        "    p.start()\n"
        "    print(p.pid, flush=True)\n"
        "    time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    time.sleep(0.5)
    assert workers.alive(worker)
    parent.kill()
    parent.wait()
    deadline = time.time() + 20
    while workers.alive(worker) and time.time() < deadline:
        time.sleep(0.1)
    assert not workers.alive(worker), "the worker outlived the process that started it"

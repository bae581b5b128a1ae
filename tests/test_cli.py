"""The ``lapo`` command line: generated from the config dataclasses, ``--config FILE``, one-line
errors, and ``lapo reproduce``'s commands built from configs."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lapo.cli import main
from lapo.cli.options import command_config
from lapo.cli.parser import COMMANDS, build_parser
from lapo.config import (
    BCConfig,
    ExpertConfig,
    LAMConfig,
    OnlineConfig,
    QuantizerConfig,
    ReproduceConfig,
    preset,
)
from lapo.flags import to_flags
from lapo.progress import EstimatedProgress
from lapo.workflows.reproduce import (
    CPU_STEP_SECONDS,
    build_tasks,
    estimated_seconds,
    step_kind,
)


def one_line_error(capsys, *text: str) -> None:
    """stderr is one ``lapo: error:`` line holding ``text``: no traceback, no usage."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lapo: error: "), err
    assert "Traceback" not in err and "usage:" not in err
    for t in text:
        assert t in err, err


def test_every_command_has_help(capsys):
    for name, *_ in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([*name.split(), "--help"])
        assert e.value.code == 0
        assert "usage: lapo " + name in capsys.readouterr().out


@pytest.mark.parametrize("module", ["lapo", "lapo.cli"])
def test_python_m_runs_the_command(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "reproduce" in out.stdout


def test_field_docstrings_are_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["lam", "train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--quantizer.num-codebooks" in text and "VQ: number of codebooks." in text
    assert "--no-idm-differences" in text and "(default: 3000)" in text  # the cpu preset's


def test_lam_train_out_naming_a_file_is_one_line(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["lam", "train", "--data", str(tmp_path), "--out", str(afile), "--quiet"]) == 2
    one_line_error(capsys, "is a file")


def test_unknown_preset_is_one_line(tmp_path, capsys):
    args = ["--data", str(tmp_path), "--out", str(tmp_path / "run"), "--preset", "nope"]
    assert main(["lam", "train", *args]) == 2
    one_line_error(capsys, "unknown preset 'nope'", "paper, cpu, fast")
    assert main(["bc", "train", "--lam", str(tmp_path), *args]) == 2
    one_line_error(capsys, "unknown preset 'nope'")


def test_out_of_range_options_are_one_line(capsys):
    assert main(["eval", "--policy", "random", "--env", "coinrun", "--episodes", "0"]) == 2
    one_line_error(capsys, "--episodes must be at least 1")
    assert main(["reproduce", "--preset", "cpu", "--seeds", "0", "--out", "unused"]) == 2
    one_line_error(capsys, "--seeds must be at least 1")
    assert main(["reproduce", "--preset", "cpu", "--first-seed", "-1", "--out", "unused"]) == 2
    one_line_error(capsys, "--first-seed must be at least 0")
    assert main(["reproduce", "--preset", "cpu", "--stages", "lam,nope", "--out", "unused"]) == 2
    one_line_error(capsys, "unknown --stages nope")


def saved_run(tmp_path: Path, section: str, cfg: object, **extra: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"kind": section, **extra, section: dataclasses.asdict(cfg)}))
    return path


def test_config_file_is_the_base_and_options_override_it(tmp_path):
    saved = dataclasses.replace(
        preset(LAMConfig, "paper"), steps=7, seed=3, quantizer=QuantizerConfig(num_entries=32)
    )
    path = saved_run(tmp_path, "lam", saved, data="somewhere")
    argv = ["lam", "train", "--data", "d", "--out", "o", "--config", str(path)]
    args = build_parser().parse_args([*argv, "--steps", "9", "--quantizer.decay", "0.5"])
    cfg = command_config(args, LAMConfig, section="lam")
    assert cfg == dataclasses.replace(
        saved, steps=9, quantizer=QuantizerConfig(num_entries=32, decay=0.5)
    )
    # no options: the saved run's config as it was (not the --preset's)
    assert command_config(build_parser().parse_args(argv), LAMConfig, section="lam") == saved
    # the same for the other stages' sections
    online = saved_run(tmp_path, "online", OnlineConfig(frames=1234, num_envs=4))
    argv = ["decode", "online", "--policy", "p", "--env", "coinrun", "--out", "o"]
    args = build_parser().parse_args([*argv, "--config", str(online), "--seed", "5"])
    assert command_config(args, OnlineConfig, section="online") == OnlineConfig(
        frames=1234, num_envs=4, seed=5
    )


def test_a_config_file_that_does_not_fit_is_one_line(tmp_path, capsys):
    base = ["--data", str(tmp_path), "--out", str(tmp_path / "run"), "--quiet"]
    path = saved_run(tmp_path, "lam", LAMConfig())
    cfg = json.loads(path.read_text())
    cfg["lam"]["no_such_setting"] = 1
    path.write_text(json.dumps(cfg))
    assert main(["lam", "train", *base, "--config", str(path)]) == 2
    one_line_error(capsys, "unknown LAMConfig setting(s) no_such_setting")
    # a stage-2 run's config is no stage-1 config
    path = saved_run(tmp_path, "bc", BCConfig())
    assert main(["lam", "train", *base, "--config", str(path)]) == 2
    one_line_error(capsys, "is not a run config of this command", "'lam'")
    path.write_text("not json")
    assert main(["lam", "train", *base, "--config", str(path)]) == 2
    one_line_error(capsys, "cannot read")
    assert main(["lam", "train", *base, "--config", str(tmp_path / "missing.json")]) == 2
    one_line_error(capsys, "cannot read")


def test_to_flags_round_trips_through_the_parser():
    base = preset(LAMConfig, "cpu")
    cfg = dataclasses.replace(
        base,
        idm_differences=False,
        learning_rate=1.5e-4,
        wm_target="embedding",
        quantizer=dataclasses.replace(base.quantizer, kind="fsq", reference_counts=True),
    )
    flags = to_flags(cfg, base)
    assert "--no-idm-differences" in flags and "--quantizer.reference-counts" in flags
    args = build_parser().parse_args(["lam", "train", "--data", "d", "--out", "o", *flags])
    assert command_config(args, LAMConfig) == cfg


def test_reproduce_commands_parse_to_the_configs_they_were_built_from(tmp_path):
    cfg = dataclasses.replace(
        preset(ReproduceConfig, "cpu"), games=["coinrun", "bigfish"], seeds=2, labels=[64]
    )
    tasks = build_tasks(cfg, tmp_path)
    parser = build_parser()
    for t in tasks:  # every command is one the CLI reads
        parser.parse_args(t.cmd[3:])
    lam = {t.name: t.cmd[3:] for t in tasks if "lam" in t.name.split("/")[-1]}
    for name, argv in lam.items():
        seed = int(name.split("/")[1])
        want = dataclasses.replace(preset(LAMConfig, "cpu"), seed=seed)
        if name.endswith("_k64"):
            want = dataclasses.replace(want, labels=64, labels_seed=seed)
        assert command_config(parser.parse_args(argv), LAMConfig) == want, name
    assert {t.name for t in tasks} >= {"bigfish/expert", "coinrun/1/ppo_scratch"}


def test_first_seed_runs_and_summarises_the_seeds_from_it_on(tmp_path):
    from lapo.report.grid import summarise

    cfg = dataclasses.replace(
        preset(ReproduceConfig, "cpu"), games=["coinrun"], seeds=2, first_seed=3, labels=[64]
    )
    tasks = build_tasks(cfg, tmp_path)
    assert {t.name.split("/")[1] for t in tasks if t.name.count("/") == 2} == {"3", "4"}
    lam = next(t for t in tasks if t.name == "coinrun/4/lam")
    assert command_config(build_parser().parse_args(lam.cmd[3:]), LAMConfig).seed == 4
    assert lam.done.parent == tmp_path / "coinrun" / "seed4"
    # seed 0's folder, copied in from another machine, is outside the range: not counted
    for seed in (0, 3):
        folder = tmp_path / "coinrun" / f"seed{seed}"
        folder.mkdir(parents=True)
        e = {"mean_return": 5.0, "stderr_return": 0.5, "episodes": 10, "normalized_return": 0.5}
        (folder / "eval_bc_k64.json").write_text(json.dumps(e))
    assert summarise(cfg, tmp_path)["evaluations"] == 1
    rows = (tmp_path / "results.csv").read_text().splitlines()[1:]
    assert [r.split(",")[1] for r in rows] == ["3"]


def test_the_grid_bar_weighs_steps_by_the_measured_time_of_their_kind(tmp_path):
    cfg = dataclasses.replace(
        preset(ReproduceConfig, "cpu"), games=["coinrun"], seeds=2, labels=[64]
    )
    tasks = build_tasks(cfg, tmp_path)
    assert step_kind("coinrun/1/idm_bc_k64") == "idm_bc"
    assert step_kind("coinrun/0/eval_lapo_labels_head_k64") == "eval"
    before = estimated_seconds(tasks, cfg)
    assert before["coinrun/1/lam"] == CPU_STEP_SECONDS["lam"]  # nothing measured yet: the prior
    # seed 0's stage 1 took 800 s and its K=64 idm-bc 90 s; a finished evaluation's marker
    # is its own report (no wall_seconds) and is not counted
    (tmp_path / "coinrun/seed0").mkdir(parents=True)
    (tmp_path / "coinrun/seed0/lam.done.json").write_text(json.dumps({"wall_seconds": 800.0}))
    (tmp_path / "coinrun/seed0/idm_bc_k64.done.json").write_text('{"wall_seconds": 90}')
    (tmp_path / "coinrun/seed0/eval_bc_k64.json").write_text('{"mean_return": 1.0}')
    after = estimated_seconds(tasks, cfg)
    assert after["coinrun/1/lam"] == after["coinrun/0/lam"] == 800.0
    assert after["coinrun/1/idm_bc_k64"] == 90.0
    assert after["coinrun/1/lam_labels_k64"] == CPU_STEP_SECONDS["lam_labels"]
    assert after["coinrun/1/eval_bc_k64"] == CPU_STEP_SECONDS["eval"]


def test_the_estimated_bar_runs_with_the_clock_but_never_past_a_steps_estimate():
    bar = EstimatedProgress({"a": 10.0, "b": 100.0, "c": 5.0}, done={"c"}, enabled=False)
    try:
        assert bar.bar.n == 5.0  # c counted as done
        bar.start("a")
        bar.start("b")
        bar.running["a"] -= 60.0  # a began a minute ago: held at 95% of its 10 s
        bar.running["b"] -= 20.0  # b 20 s ago: 20 of its 100 s
        assert abs(bar._target() - (5.0 + 9.5 + 20.0)) < 0.5
        bar.finish("a")
        assert abs(bar._target() - (15.0 + 20.0)) < 0.5
    finally:
        bar.close()


def test_stage3_presets_are_named_and_the_default_is_the_published_one():
    argv = ["decode", "online", "--policy", "p", "--env", "coinrun", "--out", "o"]
    default = command_config(build_parser().parse_args(argv), OnlineConfig)
    assert default == OnlineConfig()  # paper: the published configuration
    fast = command_config(build_parser().parse_args([*argv, "--preset", "fast"]), OnlineConfig)
    assert (fast.frames, fast.num_envs, fast.num_steps) == (8_192, 16, 64)
    args = build_parser().parse_args([*argv, "--preset", "cpu", "--frames", "1000"])
    assert command_config(args, OnlineConfig).frames == 1000  # options override the preset


def test_a_failed_command_leaves_no_folder_it_put_nothing_into(tmp_path, capsys):
    # stage 1 on real frames with no test split fails after its run folder was made (it writes
    # its config first): the folder is removed, and the one line says so
    from lapo.data.collect import collect

    data = tmp_path / "data"
    collect("coinrun", "random", 64, data, test_frames=0, num_envs=2, progress=False)
    run = tmp_path / "run"
    assert main(["lam", "train", "--data", str(data), "--out", str(run), "--preset", "fast"]) == 2
    one_line_error(capsys, "test", f"{run} was removed")
    assert not run.exists()
    # a folder that holds earlier work is kept as it was
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "lam.safetensors").write_bytes(b"work")
    assert main(["lam", "train", "--data", str(data), "--out", str(earlier)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "removed" not in err
    assert (earlier / "lam.safetensors").read_bytes() == b"work"


def test_holds_work_sees_checkpoints_and_frames_only(tmp_path):
    from lapo.cli import holds_work

    (tmp_path / "tb").mkdir()
    (tmp_path / "config.json").write_text("{}")
    assert not holds_work(tmp_path)
    (tmp_path / "train" / "c0").mkdir(parents=True)
    (tmp_path / "train" / "c0" / "obs.npy").write_bytes(b"")
    assert holds_work(tmp_path)


def test_baseline_ppo_runs_the_whole_config_it_is_given(tmp_path, monkeypatch):
    import lapo.stages.baselines as baselines

    ran = []
    monkeypatch.setattr(baselines, "ppo_from_scratch", lambda cfg, *a: ran.append((cfg, a)) or {})
    argv = ["baseline", "ppo", "--env", "jumper", "--out", str(tmp_path / "o"), "--quiet"]
    assert main([*argv, "--frames", "640", "--seed", "2"]) == 0
    want = dataclasses.replace(preset(ExpertConfig, "baseline"), frames=640, seed=2)
    assert ran[-1][0] == want and ran[-1][1][0] == "jumper"
    # a saved run's config passes through whole, fields the command line lacks included
    saved = ExpertConfig(frames=999, learning_rate=1e-3, gamma=0.99, arch="nature")
    path = saved_run(tmp_path, "train", saved)
    assert main([*argv, "--config", str(path), "--seed", "3"]) == 0
    assert ran[-1][0] == dataclasses.replace(saved, seed=3)


@pytest.mark.parametrize("extra", [["--port", "-1"], ["--port", "70000"], ["--threads", "-2"]])
def test_play_numbers_out_of_range_are_one_line(tmp_path, capsys, extra):
    assert main(["play", "--run", str(tmp_path), "--no-browser", *extra]) == 2
    one_line_error(capsys, extra[0])

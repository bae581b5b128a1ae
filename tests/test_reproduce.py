"""`lapo reproduce`: refused where it cannot finish, and a toy grid end to end."""

import numpy as np
import pytest
from PIL import Image

from lapo.cli import main


def test_reproduce_refuses_the_paper_preset_on_cpu(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["reproduce", "--games", "coinrun", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "GPU job" in err and "hours" in err and err.count("\n") == 1


@pytest.mark.slow
def test_reproduce_toy_grid_writes_csv_and_figures(tmp_path, capsys):
    out = tmp_path / "grid"
    argv = [
        "reproduce", "--games", "coinrun", "--seeds", "1", "--preset", "cpu",
        "--labels", "64", "--frames", "1500", "--online-frames", "64", "--episodes", "2",
        "--jobs", "2", "--out", str(out), "--quiet",
        "--lam-args", "--steps 10 --batch-size 8 --eval-every 5 --probe-every 0 --test-windows 64",
        "--bc-args", "--steps 10 --batch-size 8 --eval-every 5 --test-windows 64",
        "--idm-args", "--idm-steps 5", "--decode-args", "--steps 20 --test-windows 64",
        "--online-args", "--num-envs 4 --num-steps 8 --decoder-fit-start 0",
        "--ppo-args", "--num-envs 4 --num-steps 8",
    ]  # fmt: skip
    assert main(argv) == 0
    rows = (out / "results.csv").read_text().splitlines()
    methods = {"lapo_offline_k64", "lapo_labels_k64", "bc_k64", "idm_bc_k64", "lapo_online"}
    methods |= {"lapo_labels_head_k64", "ppo_scratch"}
    found = {tuple(r.split(",")[:3:2]) for r in rows[1:]}  # (game, method)
    assert found == {("coinrun", m) for m in methods}
    for fig in ("offline_vs_labels.png", "online_curves.png"):
        im = Image.open(out / fig)
        assert im.width > 300 and np.asarray(im.convert("L")).std() > 5
    assert "lapo_offline_k64" in (out / "summary.md").read_text()
    # a second run finds every step done and starts none
    starts = (out / "stderr.log").read_text().count("] start ")
    capsys.readouterr()
    assert main(argv) == 0
    assert (out / "stderr.log").read_text().count("] start ") == starts


def test_grid_steps_run_as_lapo_commands_their_output_kept_and_a_failure_stops_the_grid(tmp_path):
    import json
    import sys

    from lapo.workflows.reproduce import Task, run_tasks

    lapo = [sys.executable, "-m", "lapo.cli"]
    play = Task("coinrun/eval_random", [*lapo, "eval", "--policy", "random", "--env", "coinrun",
                "--episodes", "2", "--num-envs", "2"], tmp_path / "eval_random.json")  # fmt: skip
    log = tmp_path / "stderr.log"
    run_tasks([play], jobs=1, threads=1, log=log, progress=False)
    assert json.loads(play.done.read_text())["episodes"] == 2  # the command's stdout, kept
    bad = Task("coinrun/eval_bad", [*lapo, "eval", "--policy", str(tmp_path / "none"), "--env",
               "coinrun"], tmp_path / "eval_bad.json", deps=("coinrun/eval_random",))  # fmt: skip
    with pytest.raises(RuntimeError, match="eval_bad failed \\(exit 2\\)"):
        run_tasks([play, bad], jobs=1, threads=1, log=log, progress=False)
    assert not bad.done.exists()
    assert "lapo: error:" in log.read_text()  # its one-line message, in the grid's log

"""The supervised ceiling for stage 1: the IDM's encoder trained on the *true* actions.

    python benchmarks/supervised_idm.py --data DIR [--minutes 15] [--idm-width 1] [--batch 32]

Same encoder as the latent IDM (IMPALA-CNN over o[t-1], o[t], o[t+1] stacked on channels),
a linear head to the 15 actions, cross-entropy on the middle frame's action, same data and a
fixed wall-clock budget. Test accuracy on a fixed set of test windows is printed as it
trains; a stage-1 probe is judged against this figure at the same wall time. With
``--labels K`` it trains on only the K labelled windows that stage 1 with ``--labels K``,
offline decoding and the baselines draw (the supervised IDM of baseline (b)).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lapo.data.dataset import WindowDataset
from lapo.data.labels import labelled_starts
from lapo.envs import NUM_ACTIONS
from lapo.evaluation.probe import classification_report
from lapo.models.frames import frames_to_float
from lapo.models.idm import stack_frames
from lapo.models.impala import ImpalaCNN


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--data", required=True)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--idm-width", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument(
        "--differences", action="store_true", help="also feed frame differences (idm_differences)"
    )
    ap.add_argument(
        "--difference-scale", type=float, default=1.0, help="multiplier of the frame differences"
    )
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--test", type=int, default=4096, help="test windows")
    ap.add_argument("--eval-every", type=float, default=60.0, help="seconds between evals")
    ap.add_argument(
        "--labels", type=int, default=0, help="train on only K labelled windows (0 = all)"
    )
    ap.add_argument("--labels-seed", type=int, default=0, help="seed of the K windows' draw")
    ap.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: the forward pass under bfloat16 autocast (as lam train --precision bf16)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train, test = WindowDataset(args.data, "train", 3), WindowDataset(args.data, "test", 3)
    te = test.read(np.sort(rng.choice(test.starts, min(args.test, len(test)), replace=False)))
    model = nn.Sequential(
        ImpalaCNN(in_channels=15 if args.differences else 9, width=args.idm_width),
        nn.Linear(256, NUM_ACTIONS),
    )
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    labelled = None
    if args.labels:  # the same K windows stage 1 with --labels and decode offline draw
        labelled = labelled_starts(args.data, args.labels, args.labels_seed)

    def stack(x: torch.Tensor) -> torch.Tensor:
        return stack_frames(x, args.differences, args.difference_scale)

    def evaluate() -> dict:
        model.eval()
        preds = []
        with torch.no_grad():
            for i in range(0, len(te["obs"]), 256):
                x = frames_to_float(torch.from_numpy(te["obs"][i : i + 256]))
                preds.append(model(stack(x)).argmax(-1))
        model.train()
        rep = classification_report(te["actions"][:, 1], torch.cat(preds).numpy(), NUM_ACTIONS)
        rep.pop("confusion")
        return rep

    # the clock counts training steps only (as lam train's train_seconds does), not evaluations
    t0, evaluating = time.time(), 0.0
    next_eval, step, curve = args.eval_every, 0, []
    while time.time() - t0 - evaluating < args.minutes * 60:
        if labelled is None:
            b = train.sample(args.batch, rng)
        else:
            b = train.read(np.sort(rng.choice(labelled, args.batch)))
        x = stack(frames_to_float(torch.from_numpy(b["obs"])))
        with torch.autocast("cpu", torch.bfloat16, enabled=args.precision == "bf16"):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), torch.from_numpy(b["actions"][:, 1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if time.time() - t0 - evaluating >= next_eval:
            seconds, t_eval = time.time() - t0 - evaluating, time.time()
            rep = evaluate()
            evaluating += time.time() - t_eval
            curve.append({"seconds": round(seconds), "step": step, **rep})
            print(json.dumps(curve[-1]), flush=True)
            next_eval += args.eval_every
    final = {"seconds": round(time.time() - t0 - evaluating), "step": step, **evaluate()}
    print(
        json.dumps(
            {
                "data": args.data,
                "idm_width": args.idm_width,
                "batch": args.batch,
                "differences": args.differences,
                "difference_scale": args.difference_scale,
                "minutes": args.minutes,
                "labels": args.labels or "all",
                "lr": args.lr,
                "precision": args.precision,
                "final": final,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

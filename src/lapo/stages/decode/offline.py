"""Offline decoding: a latent -> action decoder fit on K labelled transitions.

The decoder learns from the frozen IDM's latents of K labelled train windows; the deployed
policy is ``decoder(latent_policy(o))`` (a :class:`lapo.models.policy.DecodedPolicy`). The
K windows are drawn by seed and written to ``labelled_windows.json``, so the baselines can
be given exactly the same labels.

An output folder holds ``config.json`` (kind ``decoded-policy``), ``policy.safetensors``
(latent policy + decoder: all ``lapo eval`` needs), ``labelled_windows.json`` and
``decode.json`` (held-out accuracies).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from lapo import distributed
from lapo.checkpoint import save_tensors, write_json
from lapo.config import OfflineConfig
from lapo.data.checks import dataset_for
from lapo.data.dataset import WindowDataset
from lapo.data.labels import labelled_starts, write_labelled
from lapo.envs import NUM_ACTIONS
from lapo.evaluation.probe import classification_report
from lapo.models.frames import frames_to_float
from lapo.models.idm import IDM
from lapo.models.policy import ActionDecoder, DecodedPolicy, LatentPolicy, build_network
from lapo.runkinds import (
    DECODED_POLICY,
    data_fields,
    decoded_policy_spec,
    load_action_head,
    load_stage2,
)
from lapo.stages.decode import encode_dataset_windows, fit_decoder


def deployed_policy(policy: LatentPolicy, decoder: ActionDecoder) -> DecodedPolicy:
    """``decoder(policy(o))`` as one network (eval mode): what ``lapo eval`` plays."""
    deployed = build_network(network_spec(policy, decoder))
    assert isinstance(deployed, DecodedPolicy)
    deployed.latent_policy.load_state_dict(policy.state_dict())
    deployed.decoder.load_state_dict(decoder.state_dict())
    return deployed.eval()


def network_spec(policy: LatentPolicy, decoder: ActionDecoder) -> dict:
    """The deployed policy's spec: stage 2's encoder and the decoder's form."""
    skip = decoder.skip is not None
    return decoded_policy_spec(policy.latent_dim, policy.width, skip, policy.arch)


@torch.no_grad()
def held_out_scores(
    idm: IDM, decoder: ActionDecoder, deployed: DecodedPolicy, data: Path, cfg: OfflineConfig
) -> dict:
    """On up to ``cfg.test_windows`` test windows drawn by ``cfg.seed + 1``: how well the
    decoder reads the IDM's latents, and how often the deployed policy picks the
    demonstrator's action."""
    test = WindowDataset(data, "test", k=3)
    rng = np.random.default_rng(cfg.seed + 1)
    te_starts = np.sort(rng.choice(test.starts, min(cfg.test_windows, len(test)), replace=False))
    idm_pred, pol_pred, y_te = [], [], []
    for batch in test.chunks(te_starts, 512):  # one read for the IDM and the policy
        zt = idm(frames_to_float(torch.from_numpy(batch["obs"])))[0]
        obs = torch.from_numpy(np.ascontiguousarray(batch["obs"][:, 1]))
        idm_pred.append(decoder(zt).argmax(-1).numpy())
        pol_pred.append(deployed(obs).argmax(-1).numpy())
        y_te.append(batch["actions"][:, 1])
    y = np.concatenate(y_te)
    idm_rep = classification_report(y, np.concatenate(idm_pred), NUM_ACTIONS)
    pol_rep = classification_report(y, np.concatenate(pol_pred), NUM_ACTIONS)
    return {
        "test_windows": int(len(y)),
        "decoder_accuracy_on_idm_latents": idm_rep["accuracy"],
        "decoder_balanced_accuracy_on_idm_latents": idm_rep["balanced_accuracy"],
        "policy_accuracy_vs_demonstrator": pol_rep["accuracy"],
        "majority_class_accuracy": idm_rep["majority_class_accuracy"],
        "chance": idm_rep["chance"],
    }


def decode_offline(policy_run: Path, data: Path, out: Path, cfg: OfflineConfig) -> dict:
    """Fit the decoder for stage-2 run ``policy_run`` on ``cfg.labels`` windows of ``data``.

    The fit takes seconds on a CPU: under torchrun rank 0 does it while the others wait, and
    every rank returns its summary."""
    distributed.init("cpu")
    return distributed.on_main(lambda: fit_offline(policy_run, data, out, cfg))


def fit_offline(policy_run: Path, data: Path, out: Path, cfg: OfflineConfig) -> dict:
    """:func:`decode_offline` in this process."""
    t0 = time.time()
    policy, idm, config = load_stage2(policy_run)
    head = load_action_head(policy_run) if cfg.decoder_init == "stage1-head" else None
    what = f"stage-2 run {policy_run}"
    manifest = dataset_for(data, what, config.get("game"), actions_for="offline decoding")
    train = WindowDataset(data, "train", k=3)
    starts = labelled_starts(data, cfg.labels, cfg.seed, purpose="offline decoding", train=train)
    z, y = encode_dataset_windows(idm, train, starts, torch.device("cpu"))
    decoder = fit_decoder(
        z,
        torch.from_numpy(y),
        cfg.steps,
        cfg.batch_size,
        cfg.learning_rate,
        cfg.weight_decay,
        cfg.label_smoothing,
        cfg.seed,
        head,
    )
    deployed = deployed_policy(policy, decoder)
    scores = held_out_scores(idm, decoder, deployed, data, cfg)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_labelled(out, data, starts, cfg.seed)
    save_tensors(out / "policy.safetensors", deployed.state_dict())
    report = {
        "labels": cfg.labels,
        "seed": cfg.seed,
        **scores,
        "labelled_action_counts": np.bincount(y, minlength=NUM_ACTIONS).tolist(),
        "wall_seconds": round(time.time() - t0, 1),
    }
    write_json(out / "decode.json", report)
    write_json(
        out / "config.json",
        {
            "kind": DECODED_POLICY,
            "network": network_spec(policy, decoder),
            **data_fields(manifest),
            "game": config.get("game"),
            "policy_run": str(policy_run),
            "data": str(data),
            "offline": dataclasses.asdict(cfg),
        },
    )
    return {"out": str(out), **report}

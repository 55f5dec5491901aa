"""Making an ensemble run: members checked for compatibility, weights fitted on validation."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from scipy.optimize import minimize

from ..data import DataError, cache_dir_for, decode_split, read_manifest
from ..core.fileio import atomic_write, atomic_write_text
from ..engine import load_run, predict_logits
from ..core.runs import RunError, RunFiles
from ..engine import logits_to_probs
from ..core.spec import ENSEMBLE_ARCH, write_spec
from ..core import __version__

__all__ = ["make_ensemble", "fit_ensemble_weights"]


def fit_ensemble_weights(member_probs: Sequence[np.ndarray], labels: np.ndarray) -> list[float]:
    """Weights on the simplex minimising the cross-entropy of the weighted average probabilities.

    Args:
        member_probs: one ``(N, K)`` float array per member (validation predictions).
        labels: ``(N,)`` int class indices.

    Solved with SciPy's SLSQP (bounds [0, 1], sum 1), from equal weights.
    """
    stack = np.stack(member_probs)  # (M, N, K)
    picked = stack[:, np.arange(len(labels)), labels]  # (M, N): each member's probability of the truth

    def nll(w: np.ndarray) -> float:
        return float(-np.mean(np.log(np.clip(w @ picked, 1e-12, None))))

    m = len(member_probs)
    res = minimize(
        nll, np.full(m, 1.0 / m), method="SLSQP", bounds=[(0.0, 1.0)] * m,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
    )
    w = np.clip(res.x, 0.0, None)
    return (w / w.sum()).tolist()


def make_ensemble(
    runs: Sequence[Path],
    out_dir: Path,
    weights: Union[str, Sequence[float]] = "equal",
    checkpoint: str = "best",
    progress: bool = True,
    manifest: Optional[Path] = None,
) -> dict:
    """Write an ensemble run to ``out_dir`` that refers to its member runs.

    ``manifest``: the split the ensemble run records, for members trained on different
    validation splits (the folds of :func:`medclass.evaluation.cv.cross_validate`): then only the
    test splits must agree, and ``weights`` cannot be ``"auto"``.

    ``weights``: ``"equal"``, ``"auto"`` (fitted on the members' common validation split with
    :func:`fit_ensemble_weights`) or one number per member. The ensemble run is then evaluated
    and used for prediction like any run (``medclass evaluate``/``predict``).

    Raises:
        RunError: fewer than two members, ``out_dir`` already a run.
        DataError: members with other class names, image size or channels, or other
            validation/test splits (the message says which).
        ValueError: a weight list of the wrong length or with negative values.
    """
    if len(runs) < 2:
        raise RunError("an ensemble needs at least two runs")
    out = RunFiles(Path(out_dir))
    if out.root.exists() and any(out.root.iterdir()):
        raise RunError(f"{out.root} already exists; choose another --name")
    members = [load_run(Path(r), checkpoint) for r in runs]
    first = members[0]
    for m in members[1:]:
        if m.class_names != first.class_names:
            raise DataError(f"{m.files.root} has classes {m.class_names}, {first.files.root} has {first.class_names}")
        a, b = m.spec, first.spec
        if (a.image_size, a.channels) != (b.image_size, b.channels):
            raise DataError(
                f"{m.files.root} takes {a.image_size} px x {a.channels} channels, {first.files.root} "
                f"{b.image_size} px x {b.channels}: ensemble members must share image size and channels"
            )
    manifests = [read_manifest(m.files.manifest) for m in members]
    if manifest is not None and isinstance(weights, str) and weights == "auto":
        raise ValueError("weights 'auto' are fitted on a validation split the members share; these have none")
    for m, man in zip(members[1:], manifests[1:]):
        for split in ("valid", "test") if manifest is None else ("test",):
            if [s.path for s in man.splits[split]] != [s.path for s in manifests[0].splits[split]]:
                raise DataError(f"{m.files.root} has another {split} split than {first.files.root}: "
                                "ensemble members must be trained on the same split (same manifest)")
    if isinstance(weights, str) and weights == "equal":
        w = [1.0] * len(members)
    elif isinstance(weights, str) and weights == "auto":
        c, s = first.cfg.data, first.spec
        val = decode_split(manifests[0].splits["valid"], s.channels, s.image_size, c.skip_corrupt, "decode valid", progress,
                           cache_dir=cache_dir_for(c), dicom_window=s.dicom_window, resize=s.resize)
        probs = [
            logits_to_probs(predict_logits(m.model, val.images, m.preprocess, m.device)).numpy() for m in members
        ]
        w = fit_ensemble_weights(probs, val.labels.numpy())
    else:
        w = [float(x) for x in weights]
        if len(w) != len(members) or any(x < 0 for x in w) or sum(w) <= 0:
            raise ValueError(f"give {len(members)} non-negative weights, not all 0; got {w}")
    out.root.mkdir(parents=True, exist_ok=True)
    ensemble = {
        "members": [str(m.files.root.resolve()) for m in members],
        "weights": [x / sum(w) for x in w],
        "weights_from": weights if isinstance(weights, str) else "given",
        "checkpoint": checkpoint,
    }
    atomic_write_text(out.ensemble, json.dumps(ensemble, indent=1))
    atomic_write(out.config, lambda tmp: shutil.copyfile(first.files.config, tmp))
    atomic_write(out.manifest, lambda tmp: shutil.copyfile(first.files.manifest if manifest is None else manifest, tmp))
    atomic_write_text(out.classes, json.dumps(first.class_names, indent=1))
    # its own run contract: the members' input, soft-voted probabilities, no normalisation outside
    # the model (each member normalises inside it), uncalibrated until `medclass evaluate`
    write_spec(dataclasses.replace(
        first.spec, mean=None, std=None, intensity="fixed", single_logit=False, arch=ENSEMBLE_ARCH, run=out.root.resolve().name,
        checkpoint_epoch=-1, temperature=1.0, threshold=None, medclass_version=__version__,
        extra={"members": ensemble["members"]},
    ), out.root)
    return ensemble

"""``data.intensity: auto`` (opt-in): the intensity rule of a new run, chosen from its images.

Greyscale content (CT, MRI, X-ray, ultrasound, whatever the file format) gets ``per_image``: each
image standardised by its own mean and standard deviation, as nnU-Net does for every modality
without calibrated intensities (Isensee et al., "nnU-Net", Nature Methods 2021; MONAI
``NormalizeIntensity``). Colour content (dermoscopy, stained smears) keeps ``fixed``: colour is
part of the diagnosis there. On the validation splits of the five shared data sets
(``results/ablation/*-3min-intensity.json``) per-image was within one validation image or better
on the three greyscale sets and lost 2 and 25 points of balanced accuracy on the two colour sets;
but at the comparison's budgets it lost on the chest-ct and brain MRI test splits
(``benchmarks/results/intensity-auto/``), so ``fixed`` stays the default.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from ..core.config import RunConfig
from ..data import greyscale_content

__all__ = ["resolve_intensity"]


def resolve_intensity(cfg: RunConfig, samples: Sequence, log: Optional[Callable[[str], None]] = None) -> str:
    """Set ``cfg.data.intensity`` from ``"auto"`` to the rule it stands for, in place, and return
    the reason (one line; ``""`` when the config named a rule itself, which is kept).

    ``fixed`` when the run standardises by a fixed mean/std already (``data.normalize``, or
    ``model.pretrained`` weights, which expect their own normalisation), or when the images are in
    colour; ``per_image`` when they are greyscale (:func:`medclass.data.greyscale_content` on up to
    32 of ``samples``, the training images). Unreadable samples count for neither; when none can
    be read the rule is ``fixed``.

    Args:
        cfg: the run's config; ``cfg.data.intensity`` is ``auto``, ``fixed`` or ``per_image``.
        samples: the training split's :class:`medclass.data.Sample` list.
        log: where the reason goes (e.g. ``print``); None: nowhere.
    Returns:
        The reason for the choice, or ``""`` for a rule given in the config.
    """
    if cfg.data.intensity != "auto":
        return ""
    if cfg.data.normalize or cfg.model.pretrained:
        rule, why = "fixed", ("data.normalize gives a fixed mean/std" if cfg.data.normalize
                              else "pretrained weights expect their own normalisation")
    else:
        grey = greyscale_content(samples, cfg.data.channels, dicom_window=cfg.data.dicom_window)
        if grey:
            rule, why = "per_image", "the images are greyscale: each one standardised by its own mean and std"
        else:
            rule, why = "fixed", ("the images are in colour: one fixed normalisation for all" if grey is False
                                  else "no training image could be read to tell")
    cfg.data.intensity = rule
    reason = f"intensity auto: {rule} ({why})"
    if log is not None:
        log(reason)
    return reason

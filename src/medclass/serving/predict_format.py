"""Predictions of image files as ``medclass predict`` writes them: a table, CSV or JSON.

Torch-free (the ONNX path of ``medclass predict`` never imports PyTorch). Works on any list of
objects with ``path``, ``predicted``, ``probabilities`` (class name -> probability), ``error``,
``ood_score`` and ``ood_flag`` (None without an OOD detector) and a ``to_dict()``:
:class:`medclass.serving.prediction.Prediction` (also known as ``medclass.serving.predict.Prediction``
and :class:`medclass.serving.prediction.Prediction`).
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Sequence

__all__ = ["PREDICTION_FORMATS", "format_predictions"]

PREDICTION_FORMATS = ("table", "csv", "json")


def _ood_of(p: Any) -> tuple:
    """``(ood_score, ood_flag)`` of a prediction, ``(None, None)`` without them."""
    return getattr(p, "ood_score", None), getattr(p, "ood_flag", None)


def format_predictions(preds: Sequence[Any], class_names: Sequence[str], fmt: str = "table") -> str:
    """The predictions as text ending in a newline.

    - ``table``: a header and one line per file (predicted class, probability per class to four
      decimals, and when the model has an OOD detector the ``ood_score`` and ``ood_flag``:
      ``UNLIKE TRAINING`` or ``ok``), or ``ERROR: <reason>`` for a file that could not be
      predicted; columns are as wide as the longest path and the class names (never cut);
    - ``csv``: columns ``path, predicted, p_<class>..., ood_score, ood_flag, error``
      (probabilities to six decimals; the OOD score to six significant digits and the flag
      ``true``/``false``, both empty without an OOD detector);
    - ``json``: a list of ``to_dict()`` objects (with ``ood_score`` and ``ood_flag``, null
      without a detector), indented by one space.

    Raises:
        ValueError: ``fmt`` is not one of :data:`PREDICTION_FORMATS`.
    """
    buf = io.StringIO()
    if fmt == "json":
        json.dump([p.to_dict() for p in preds], buf, indent=1)
        buf.write("\n")
    elif fmt == "csv":
        w = csv.writer(buf)
        w.writerow(["path", "predicted", *[f"p_{n}" for n in class_names], "ood_score", "ood_flag", "error"])
        for p in preds:
            probs = [f"{p.probabilities[n]:.6f}" for n in class_names] if p.probabilities else [""] * len(class_names)
            score, flag = _ood_of(p)
            w.writerow([p.path, p.predicted or "", *probs, "" if score is None else f"{score:.6g}",
                        "" if flag is None else str(bool(flag)).lower(), p.error or ""])
    elif fmt == "table":
        width = max([len(p.path) for p in preds], default=len("path"))
        with_ood = any(_ood_of(p)[0] is not None for p in preds)
        # columns as wide as the class names: never cut (``squamous.cell.carcinoma`` stays whole)
        pw = max([len("predicted"), *(len(n) for n in class_names)])
        cw = [max(6, len(n)) for n in class_names]
        buf.write(f"{'path':{width}s}  {'predicted':>{pw}s}  " + "  ".join(f"{n:>{w}s}" for n, w in zip(class_names, cw))
                  + (f"  {'ood_score':>12s}  ood_flag" if with_ood else "") + "\n")
        for p in preds:
            if p.error:
                buf.write(f"{p.path:{width}s}  ERROR: {p.error}\n")
            else:
                score, flag = _ood_of(p)
                ood = ""
                if with_ood:
                    ood = (f"  {score:12.4g}  {'UNLIKE TRAINING' if flag else 'ok'}" if score is not None
                           else f"  {'':>12s}  ")
                buf.write(f"{p.path:{width}s}  {p.predicted:>{pw}s}  "
                          + "  ".join(f"{p.probabilities[n]:{w}.4f}" for n, w in zip(class_names, cw)) + ood + "\n")
    else:
        raise ValueError(f"--format must be table, csv or json, got {fmt!r}")
    return buf.getvalue()

"""The model card of a served run: its data, metrics and intended use, on one page.

Follows the sections of Mitchell et al., "Model Cards for Model Reporting" (FAT* 2019): model
details, intended use, data, metrics (with confidence intervals), caveats. Everything is read from
the run folder: the model's contract (classes, input, calibration) from the spec
(:func:`medclass.core.spec.read_spec`, or the served one), the rest from ``config.yaml``,
``train_summary.json`` and the newest ``eval-*/metrics.json`` written by ``medclass evaluate``;
and the results of :mod:`medclass.evaluation.result_sections` when the run has them: per patient/lesion/study,
per subgroup (small ones flagged, the best-worst gap), the cross-validation of a fold ensemble,
and the out-of-distribution warning (``ood.json``). Nothing is invented: a section whose source
file is missing says so, or is left out. Torch-free (json, yaml, Jinja2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import yaml

from .result_sections import collect_sections, render_sections
from ..core.runs import EVAL_PREFIX, RunError, RunFiles
from ..core.spec import calibration_record, read_spec

__all__ = ["build_model_card", "render_model_card", "INTENDED_USE", "OUT_OF_SCOPE"]

#: What a medclass model may be used for, shown on every card.
INTENDED_USE = (
    "Research and education: exploring how an image classifier behaves on data like the training "
    "data, and as a second look alongside a qualified reader. Not a medical device; its outputs "
    "must not be used on their own to diagnose, treat or triage patients."
)

#: Uses the card warns against.
OUT_OF_SCOPE = [
    "Clinical decisions without review by a qualified clinician.",
    "Images from other modalities, body parts, scanners, sites or populations than the training data "
    "(accuracy can drop sharply under such a shift).",
    "Images that are not one of the classes the model knows: it always answers with one of them.",
]


def _read_json(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _latest_eval(root: Path) -> Optional[dict]:
    """The metrics of the test split if evaluated, else of the newest ``eval-*`` folder."""
    candidates = sorted(root.glob(f"{EVAL_PREFIX}*/metrics.json"), key=lambda p: (p.parent != RunFiles(root).eval_dir("test"), -p.stat().st_mtime))
    for path in candidates:
        metrics = _read_json(path)
        if isinstance(metrics, dict):
            metrics["_folder"] = path.parent.name
            return metrics
    return None


def build_model_card(run_dir: Path, spec: Optional[Any] = None) -> dict[str, Any]:
    """Collect a run's model card as plain data (JSON-serialisable).

    Args:
        run_dir: a run folder (``medclass train`` output).
        spec: the served :class:`~medclass.core.spec.ModelSpec` (image size, channels, temperature,
            threshold actually in use); None: the run folder's (:func:`medclass.core.spec.read_spec`),
            if it has a readable one.

    Returns:
        A dict with keys ``name``, ``model``, ``data``, ``training``, ``metrics`` (or None),
        ``calibration`` (or None), ``results`` (:func:`medclass.evaluation.result_sections.collect_sections`:
        ``group_level``, ``subgroups``, ``cv``, ``ood``, each None when absent), ``intended_use``,
        ``out_of_scope``, ``caveats``.
    """
    root = Path(run_dir)
    cfg = {}
    try:
        cfg = yaml.safe_load(RunFiles(root).config.read_text()) or {}
    except (OSError, yaml.YAMLError):
        pass
    data_cfg, model_cfg, train_cfg = cfg.get("data", {}), cfg.get("model", {}), cfg.get("train", {})
    served = spec is not None
    if spec is None:
        try:
            spec = read_spec(root)
        except (RunError, ValueError):
            pass
    classes = list(spec.class_names) if spec is not None else []
    summary = _read_json(RunFiles(root).summary) or {}
    calibration = calibration_record(spec) if spec is not None else None
    metrics = _latest_eval(root)

    caveats: list[str] = []
    per_class, ci = {}, {}
    if metrics:
        per_class = metrics.get("per_class") or {}
        ci = (metrics.get("confidence_intervals") or {}).get("metrics", {})
        dup = metrics.get("held_out_duplicates") or {}
        if dup.get("n"):
            caveats.append(
                f"{dup['n']} of the {metrics.get('n')} {metrics.get('split', 'test')} images duplicate training or "
                "validation images (medclass audit); the metrics "
                + ("exclude them." if dup.get("deduplicated") else "include them and may be optimistic.")
            )
        small = [name for name, pc in per_class.items() if int(pc.get("support", 0)) < 30]
        if small:
            caveats.append(f"Fewer than 30 evaluation images for: {', '.join(small)}; their metrics are uncertain.")
    else:
        caveats.append("This run has not been evaluated (run `medclass evaluate RUN`): no held-out metrics.")
    results = collect_sections(root, metrics)
    if results["ood"] is None:
        caveats.append("No out-of-distribution detector: the model answers every image with one of its classes, "
                       "even an image unlike anything it was trained on (`medclass ood-fit RUN` fits one).")
    else:
        caveats.append(f"Images unlike the training images are flagged ({results['ood']['method']} score above "
                       f"{results['ood']['threshold']:.4g}); about {1 - results['ood']['quantile']:.0%} of "
                       "in-distribution images are flagged too, and a foreign image is not always caught.")
    for column, table in (results["subgroups"] or {}).items():
        small = [n for n, r in table.get("subgroups", {}).items() if r.get("too_small")]
        if small:
            caveats.append(f"Subgroups of {column} with fewer than {table.get('min_n')} images: {', '.join(small)}; "
                           "their figures are uncertain.")
    if not calibration:
        caveats.append("Probabilities are not calibrated (run `medclass evaluate RUN` to fit a temperature on validation).")
    image_size = spec.image_size if spec is not None else data_cfg.get("image_size")
    how = "padded (aspect ratio kept) to" if spec is not None and spec.resize == "pad" else "squashed to"
    caveats.append(f"Images are {how} {image_size} x {image_size} px; fine detail below that scale is not seen.")
    if spec is not None and spec.intensity == "per_image":
        caveats.append("Each image is standardised by its own mean and standard deviation (data.intensity: per_image): "
                       "the model does not see an image's overall brightness or contrast.")

    return {
        "name": root.name,
        "model": {
            "architecture": model_cfg.get("arch"),
            "pretrained": model_cfg.get("pretrained"),
            "classes": classes,
            "image_size": image_size,
            "channels": spec.channels if spec is not None else data_cfg.get("channels"),
            "checkpoint_epoch": spec.checkpoint_epoch if served else summary.get("best_epoch"),
        },
        "data": {
            "source": data_cfg.get("source"),
            "train_images": summary.get("train_images"),
            "valid_images": summary.get("valid_images"),
            "evaluated_split": metrics.get("split") if metrics else None,
            "evaluated_images": metrics.get("n") if metrics else None,
            "dicom_window": data_cfg.get("dicom_window"),
        },
        "training": {
            "epochs_run": summary.get("epochs_run"),
            "best_epoch": summary.get("best_epoch"),
            "monitor": summary.get("monitor"),
            "optimizer": train_cfg.get("optimizer"),
            "lr": train_cfg.get("lr"),
            "device": summary.get("device"),
            "train_seconds": summary.get("train_seconds"),
        },
        "metrics": None if not metrics else {
            "split": metrics.get("split"),
            "folder": metrics.get("_folder"),
            "n": metrics.get("n"),
            "overall": {k: {"estimate": metrics.get(k), "low": ci.get(k, {}).get("low"), "high": ci.get(k, {}).get("high")}
                        for k in ("accuracy", "balanced_accuracy", "macro_f1", "auroc")},
            "per_class": per_class,
        },
        "calibration": None if not calibration else {
            "temperature": spec.temperature,
            "threshold": spec.threshold,
            "threshold_method": (calibration.get("threshold") or {}).get("method"),
        },
        "results": results,
        "intended_use": INTENDED_USE,
        "out_of_scope": OUT_OF_SCOPE,
        "caveats": caveats,
    }


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Model card: {{ c.name }}</title>
<link rel="stylesheet" href="/static/style.css"></head><body>
<nav><a href="/">Predict</a> · <a href="/model-card">Model card</a> · <a href="/docs">API</a></nav>
<h1>Model card: <span id="card-name">{{ c.name }}</span></h1>
<h2>Intended use</h2><p id="intended-use">{{ c.intended_use }}</p>
<h3>Out of scope</h3><ul>{% for u in c.out_of_scope %}<li>{{ u }}</li>{% endfor %}</ul>
<h2>Model</h2><table>
<tr><th>architecture</th><td>{{ c.model.architecture }}{% if c.model.pretrained %} (initialised from {{ c.model.pretrained }}){% endif %}</td></tr>
<tr><th>classes</th><td>{{ c.model.classes|join(", ") }}</td></tr>
<tr><th>input</th><td>{{ c.model.image_size }} x {{ c.model.image_size }} px, {{ c.model.channels }} channel(s)</td></tr>
<tr><th>checkpoint epoch</th><td>{{ c.model.checkpoint_epoch }}</td></tr></table>
<h2>Data</h2><table>
<tr><th>source</th><td>{{ c.data.source or "bundled BreastMNIST" }}</td></tr>
<tr><th>training images</th><td>{{ c.data.train_images }}</td></tr>
<tr><th>validation images</th><td>{{ c.data.valid_images }}</td></tr>
<tr><th>evaluated on</th><td>{% if c.data.evaluated_split %}{{ c.data.evaluated_images }} {{ c.data.evaluated_split }} images{% else %}not evaluated{% endif %}</td></tr>
{% if c.data.dicom_window %}<tr><th>DICOM window</th><td>center {{ c.data.dicom_window[0] }}, width {{ c.data.dicom_window[1] }}</td></tr>{% endif %}
</table>
<h2>Training</h2><table>
<tr><th>epochs</th><td>{{ c.training.epochs_run }} (best {{ c.training.best_epoch }} by {{ c.training.monitor }})</td></tr>
<tr><th>optimizer</th><td>{{ c.training.optimizer }}, learning rate {{ c.training.lr }}</td></tr>
<tr><th>device, time</th><td>{{ c.training.device }}{% if c.training.train_seconds %}, {{ "%.0f"|format(c.training.train_seconds) }} s{% endif %}</td></tr></table>
<h2>Metrics</h2>
{% if c.metrics %}<p>On the {{ c.metrics.n }} images of the {{ c.metrics.split }} split ({{ c.metrics.folder }}); 95% bootstrap intervals.</p>
<table id="metrics"><tr><th>metric</th><th>estimate</th><th>95% CI</th></tr>
{% for k, v in c.metrics.overall.items() %}{% if v.estimate is not none %}<tr><td>{{ labels[k] }}</td><td>{{ "%.3f"|format(v.estimate) }}</td>
<td>{% if v.low is not none %}{{ "%.3f"|format(v.low) }} to {{ "%.3f"|format(v.high) }}{% endif %}</td></tr>{% endif %}{% endfor %}</table>
<table><tr><th>class</th><th>precision</th><th>recall (sensitivity)</th><th>F1</th><th>support</th></tr>
{% for name, pc in c.metrics.per_class.items() %}<tr><td>{{ name }}</td><td>{{ "%.3f"|format(pc.precision) }}</td><td>{{ "%.3f"|format(pc.recall) }}</td><td>{{ "%.3f"|format(pc.f1) }}</td><td>{{ pc.support }}</td></tr>{% endfor %}</table>
{% else %}<p>Not evaluated: run <code>medclass evaluate</code> on this run.</p>{% endif %}
{% if c.results %}{{ sections_html|safe }}{% endif %}
<h2>Calibration</h2>{% if c.calibration %}<p>Temperature {{ "%.3f"|format(c.calibration.temperature) }} (fitted on validation){% if c.calibration.threshold is not none %}; decision threshold {{ "%.3f"|format(c.calibration.threshold) }} ({{ c.calibration.threshold_method }}){% endif %}.</p>{% else %}<p>Not calibrated.</p>{% endif %}
<h2>Caveats</h2><ul id="caveats">{% for w in c.caveats %}<li>{{ w }}</li>{% endfor %}</ul>
<p class="small">Format: Mitchell et al., "Model Cards for Model Reporting", FAT* 2019. JSON: <a href="/model-card.json">/model-card.json</a>.</p>
</body></html>
"""


_LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro F1", "auroc": "AUROC"}


def render_model_card(card: dict[str, Any]) -> str:
    """The card as an HTML page (Jinja2, autoescaped)."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    sections = render_sections(card["results"], heading_level=2) if card.get("results") else ""
    return env.from_string(_TEMPLATE).render(c=card, labels=_LABELS, sections_html=sections)

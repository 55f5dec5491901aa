"""One self-contained HTML report of a run: config, data and audit, curves, metrics with
intervals, confusion matrix, ROC, reliability diagram and Grad-CAM examples; and, when the run
has them, the results per patient/lesion/study, per subgroup, of the cross-validation it is the
ensemble of, and its out-of-distribution warning (:mod:`medclass.evaluation.result_sections`).

Every figure is embedded as a base64 PNG ``data:`` URI, so the single file can be mailed or
archived. Rendered with Jinja2 (autoescaped).
"""

from __future__ import annotations

import base64
import csv
import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from ..data import read_manifest
from ..data.audit import audit as audit_index
from ..core.fileio import atomic_write_text
from ..core.runs import RunFiles
from .evaluate import evaluate_run

__all__ = ["build_report"]

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>medclass report: {{ name }}</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
 h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
 table { border-collapse: collapse; margin: .6em 0; } td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
 th { background: #f3f3f3; } td.l, th.l { text-align: left; }
 .warn { background: #fff3cd; border: 1px solid #e0c36c; padding: .6em 1em; }
 .figs img { max-width: 100%; margin: .4em 0; border: 1px solid #eee; }
 .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: .6em; }
 .grid figure { margin: 0; } .grid img { width: 100%; border: 1px solid #eee; }
 tr.small-n td { color: #8a6d3b; background: #fffaf0; }
 figcaption { font-size: .8em; color: #555; } pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .85em; }
</style></head><body>
<h1>medclass report: {{ name }}</h1>
<p>Run <code>{{ run }}</code>; {{ split }} split{% if dedupe %}, cross-split duplicates removed (<code>--dedupe</code>){% endif %};
checkpoint {{ m.checkpoint }} (epoch {{ m.checkpoint_epoch }}); {{ m.image_size }} px{% if m.tta %}; test-time augmentation {{ m.tta|join(", ") }}{% endif %}.
Written {{ written }}.</p>

{% if leak %}<p class="warn">{{ leak }}</p>{% endif %}

<h2>Metrics on the {{ split }} split ({{ m.n }} images)</h2>
<table><tr><th class="l">metric</th><th>estimate</th><th>95% CI</th></tr>
{% for row in ci_rows %}<tr><td class="l">{{ row[0] }}</td><td>{{ row[1] }}</td><td>{{ row[2] }}</td></tr>{% endfor %}
<tr><td class="l">loss (cross-entropy, nats)</td><td>{{ "%.4f"|format(m.loss) }}</td><td></td></tr>
</table>
<p>Intervals: percentile bootstrap, {{ ci.n_resamples }} resamples of the {{ m.n }} images, seed {{ ci.seed }}.</p>
{% if other %}<p>{{ other_label }}: accuracy {{ "%.3f"|format(other.accuracy) }}, balanced accuracy
{{ "%.3f"|format(other.balanced_accuracy) }}, macro F1 {{ "%.3f"|format(other.macro_f1) }}{% if other.auroc is not none %}, AUROC {{ "%.3f"|format(other.auroc) }}{% endif %}
({{ other.n }} images).</p>{% endif %}

<h3>Per class</h3>
<table><tr><th class="l">class</th><th>precision</th><th>recall (sensitivity)</th><th>F1</th><th>support</th></tr>
{% for name, pc in m.per_class.items() %}<tr><td class="l">{{ name }}</td><td>{{ "%.3f"|format(pc.precision) }}</td><td>{{ "%.3f"|format(pc.recall) }}</td><td>{{ "%.3f"|format(pc.f1) }}</td><td>{{ pc.support }}</td></tr>{% endfor %}
</table>

{% if op %}<h3>Operating point (positive class: {{ op.positive_class }})</h3>
<table><tr><th class="l">threshold</th><th>value</th><th>sensitivity</th><th>specificity</th></tr>
<tr><td class="l">chosen on validation ({{ op.chosen_on_valid.method }})</td><td>{{ "%.3f"|format(op.at_chosen.threshold) }}</td><td>{{ fmt(op.at_chosen.sensitivity) }}</td><td>{{ fmt(op.at_chosen.specificity) }}</td></tr>
<tr><td class="l">0.5</td><td>0.500</td><td>{{ fmt(op["at_0.5"].sensitivity) }}</td><td>{{ fmt(op["at_0.5"].specificity) }}</td></tr>
</table>{% endif %}

{{ sections_html|safe }}

<div class="figs">
<h3>Confusion matrix and ROC</h3>
<img alt="confusion matrix" src="{{ figs.confusion }}"> <img alt="ROC" src="{{ figs.roc }}">
<h3>Calibration</h3>
{% if cal.temperature %}<p>Temperature scaling (Guo et al. 2017) fitted on the validation split: T = {{ "%.3f"|format(cal.temperature) }}.
ECE ({{ cal.n_bins }} equal-width bins) on this split: {{ "%.3f"|format(cal.ece_before) }} before, {{ "%.3f"|format(cal.ece_after) }} after.</p>
{% else %}<p>ECE ({{ cal.n_bins }} bins): {{ "%.3f"|format(cal.ece_before) }}; {{ cal.note }}.</p>{% endif %}
<img alt="reliability diagram" src="{{ figs.reliability }}">
{% if figs.curves %}<h3>Training curves</h3><img alt="training curves" src="{{ figs.curves }}">{% endif %}
</div>
{% if history %}<p>Best epoch {{ summary.best_epoch }} of {{ summary.epochs_run }} by {{ summary.monitor }} ({{ "%.4f"|format(summary.best_value) }});
training took {{ "%.1f"|format(summary.train_seconds / 60) }} min on {{ summary.device }}.</p>{% endif %}

{% if cams %}<h2>Grad-CAM: what the model looked at</h2>
<p>Grad-CAM (Selvaraju et al. 2017, MONAI) at {{ target_layer }} for the most confident right and wrong predictions per true class.</p>
{% for cls, kinds in cams.items() %}<h3>{{ cls }}</h3>
{% for kind, items in kinds.items() %}<p><b>{{ kind }}</b>{% if not items %}: none{% endif %}</p>
<div class="grid">{% for it in items %}<figure><img alt="Grad-CAM {{ it.name }}" src="{{ it.src }}"><figcaption>{{ it.name }}</figcaption></figure>{% endfor %}</div>
{% endfor %}{% endfor %}{% endif %}

<h2>Data</h2>
<table><tr><th class="l">class</th>{% for s in splits %}<th>{{ s }}</th>{% endfor %}</tr>
{% for c in class_names %}<tr><td class="l">{{ c }}</td>{% for s in splits %}<td>{{ counts.get(s, {}).get(c, 0) }}</td>{% endfor %}</tr>{% endfor %}
</table>
{% if audit %}<h3>Audit</h3>
<table>
<tr><td class="l">images / distinct contents</td><td>{{ audit.n_images }} / {{ audit.n_distinct }}</td></tr>
<tr><td class="l">exact duplicate groups (cross-split / within a split)</td><td>{{ audit.exact_duplicates.n_groups }} ({{ audit.exact_duplicates.n_cross_split }} / {{ audit.exact_duplicates.n_within_split }})</td></tr>
<tr><td class="l">near-duplicate pairs, pHash distance &le; {{ audit.near_duplicates.threshold }} (cross-split)</td><td>{{ audit.near_duplicates.n_pairs }} ({{ audit.near_duplicates.n_cross_split_pairs }})</td></tr>
<tr><td class="l">groups in several splits</td><td>{{ audit.groups_in_several_splits|length }}</td></tr>
<tr><td class="l">label conflicts</td><td>{{ audit.label_conflicts|length }}</td></tr>
<tr><td class="l">unreadable files</td><td>{{ audit.unreadable|length }}</td></tr>
</table>
<table><tr><th class="l">split</th><th>images</th><th>width min / median / max</th><th>height min / median / max</th><th class="l">modes</th></tr>
{% for s, st in audit.images.items() %}<tr><td class="l">{{ s }}</td><td>{{ st.n }}</td><td>{{ sz(st.width) }}</td><td>{{ sz(st.height) }}</td><td class="l">{{ st.modes }}</td></tr>{% endfor %}
</table>{% endif %}
{% if removed %}<h3>Held-out images that duplicate an earlier split ({{ removed|length }})</h3>
<table><tr><th class="l">image</th><th class="l">split</th><th class="l">kind</th><th class="l">copy of</th></tr>
{% for r in removed[:50] %}<tr><td class="l">{{ r.path }}</td><td class="l">{{ r.split }}</td><td class="l">{{ r.kind }}{% if r.kind == "near" %} ({{ r.distance }}){% endif %}</td><td class="l">{{ r.duplicate_of.path }} ({{ r.duplicate_of.split }})</td></tr>{% endfor %}
</table>{% if removed|length > 50 %}<p>... and {{ removed|length - 50 }} more (metrics.json).</p>{% endif %}{% endif %}

<h2>Configuration</h2>
<pre>{{ config }}</pre>
<p>medclass: data sources and credits are in the project README.</p>
</body></html>
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _fmt(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _sz(stats: Any) -> str:
    if isinstance(stats, dict):
        return " / ".join(f"{stats.get(k, 0):.0f}" for k in ("min", "median", "max"))
    return str(stats)


def _earlier_settings(path: Path) -> dict[str, Any]:
    """The subgroup columns and group aggregation of an earlier ``metrics.json`` (empty when none)."""
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(m, dict):
        return {}
    out: dict[str, Any] = {}
    if isinstance(m.get("subgroups"), dict) and m["subgroups"]:
        out["subgroups"] = tuple(m["subgroups"])
    if isinstance(m.get("group_level"), dict) and m["group_level"].get("aggregation") in ("mean", "max"):
        out["group_how"] = m["group_level"]["aggregation"]
    return out


def build_report(
    run_dir: Path,
    out: Optional[Path] = None,
    split: str = "test",
    dedupe: bool = False,
    explain: int = 2,
    n_bootstrap: int = 1000,
    tta: Sequence[str] = (),
    target_layer: Optional[str] = None,
    audit: bool = True,
    progress: bool = False,
    group_how: Optional[str] = None,
    subgroups: Sequence[str] = (),
) -> Path:
    """Evaluate ``run_dir`` on ``split`` (see :func:`evaluate_run`; ``dedupe`` leaves out held-out
    images that duplicate an earlier split), audit its data, and write one HTML file with every
    figure embedded: ``out`` (default ``<run>/report-<split>[-dedupe].html``). Returns its path.

    Besides the image-level results it shows, when present: the group-level results (images that
    share a CSV group; aggregated by ``group_how``, ``mean`` or ``max``), the subgroup results of
    the CSV columns ``subgroups`` (small subgroups flagged, the best-worst gap), the cross-validation summary when
    the run is the fold ensemble of ``medclass cv``, and the out-of-distribution detector's method
    and threshold with the share of the split it flags (:mod:`medclass.evaluation.result_sections`). The
    report re-evaluates into ``<run>/eval-<split>``: without ``subgroups`` / ``group_how`` it keeps
    those of the ``metrics.json`` already there (an earlier ``medclass evaluate --subgroups``).

    Raises:
        RunError, CheckpointError, DataError: as :func:`evaluate_run`.
    """
    run_dir = Path(run_dir)
    files = RunFiles(run_dir)
    tag = f"{split}{'-dedupe' if dedupe else ''}"
    eval_dir = files.eval_dir(tag)
    earlier = _earlier_settings(eval_dir / "metrics.json")
    subgroups = tuple(subgroups) or earlier.get("subgroups", ())
    group_how = group_how or earlier.get("group_how") or "mean"
    m = evaluate_run(run_dir, split=split, out_dir=eval_dir, progress=progress, tta=tta, n_bootstrap=n_bootstrap,
                     dedupe=dedupe, explain=explain, target_layer=target_layer, group_how=group_how,
                     subgroups=subgroups)
    index = read_manifest(files.manifest)
    counts = {s: {} for s in ("train", "valid", "test") if index.splits.get(s)}
    for s in counts:
        for x in index.splits[s]:
            c = index.class_names[x.label]
            counts[s][c] = counts[s].get(c, 0) + 1
    audit_report = audit_index(index, progress=progress) if audit else None
    if audit_report is not None:
        atomic_write_text(eval_dir / "audit.json", json.dumps(audit_report, indent=1, default=str))
    ci = m["confidence_intervals"]
    names = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro F1", "auroc": "AUROC"}
    ci_rows = [
        (names[k], _fmt(v["estimate"]), f"{_fmt(v['low'])} to {_fmt(v['high'])}") for k, v in ci["metrics"].items()
    ]
    dup = m.get("held_out_duplicates")
    leak, other, other_label, removed = None, None, None, []
    if dup:
        removed = dup.get("removed") or dup.get("found") or []
        if dedupe:
            other, other_label = dup.get("metrics_with_duplicates"), "With the duplicates kept"
            leak = (f"{dup['n']} {split} images duplicate (exactly or nearly, pHash distance <= "
                    f"{dup['near_threshold']}) an image of an earlier split and are left out of the figures above.")
        else:
            other, other_label = dup.get("metrics_without_duplicates"), "Without them"
            leak = (f"Leakage: {dup['n']} {split} images duplicate (exactly or nearly) an image of an earlier split. "
                    "The figures below include them; rerun with --dedupe to leave them out.")
    cams = {}
    for cls, kinds in (m.get("explanations") or {}).items():
        cams[cls] = {k: [{"name": Path(p).name, "src": _data_uri(Path(p))} for p in paths] for k, paths in kinds.items()}
    figs = {
        "confusion": _data_uri(eval_dir / "confusion_matrix.png"),
        "roc": _data_uri(eval_dir / "roc.png"),
        "reliability": _data_uri(eval_dir / "reliability.png"),
        "curves": _data_uri(files.curves) if files.curves.is_file() else None,
    }
    summary = json.loads(files.summary.read_text()) if files.summary.is_file() else {}
    history = []
    if files.metrics_csv.is_file():
        with open(files.metrics_csv) as f:
            history = list(csv.DictReader(f))
    from jinja2 import Environment

    from .result_sections import collect_sections, render_sections

    env = Environment(autoescape=True)
    html = env.from_string(_TEMPLATE).render(
        name=run_dir.name, run=str(run_dir), split=split, dedupe=dedupe, m=m, ci=ci, ci_rows=ci_rows,
        cal=m["calibration"], op=m.get("operating_point"), figs=figs, cams=cams, leak=leak, other=other,
        other_label=other_label, removed=removed, audit=audit_report, counts=counts, splits=list(counts),
        class_names=index.class_names, config=files.config.read_text() if files.config.is_file() else "",
        summary=summary, history=history and summary, fmt=_fmt, sz=_sz,
        target_layer=target_layer or "the last stage", written=time.strftime("%Y-%m-%d %H:%M"),
        sections_html=render_sections(collect_sections(run_dir, m), heading_level=2),
    )
    out = Path(out) if out else run_dir / f"report-{tag}.html"
    atomic_write_text(out, html)
    return out

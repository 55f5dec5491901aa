"""The clinical-study results of a run as sections of the HTML report and the model card.

Four results, each shown only when the run has it (nothing is invented; a missing file means a
missing section):

* **group level** (``metrics.json["group_level"]``, written by ``medclass evaluate`` when images
  share a patient/lesion/study): the group-aggregated metrics with bootstrap intervals over
  groups, the aggregation, and the groups left out because their images carry different labels;
* **subgroups** (``metrics.json["subgroups"]``, ``evaluate --subgroups``): per column the
  subgroups' n, accuracy, balanced accuracy and AUROC with intervals, the subgroups with too few
  images flagged (never hidden), the numeric bins, and the gap between the best and the worst
  subgroup;
* **cross-validation** (``cv.json`` beside the run, for the fold ensemble ``RUN/ensemble`` of
  ``medclass cv``): fold count, per-fold figures with their mean and standard deviation, the
  out-of-fold figures with intervals, the ensemble on test;
* **out-of-distribution warning** (``RUN/ood.json``, :mod:`medclass.core.ood`): method, threshold,
  quantile, what it was fitted on, and the share of the evaluated images it flags
  (``metrics.json["ood"]``).

:func:`collect_sections` gathers them as plain data (JSON-serialisable, what
``/model-card.json`` returns); :func:`render_sections` turns them into HTML (Jinja2,
autoescaped) that :mod:`medclass.evaluation.report` and :mod:`medclass.evaluation.model_card` embed.
Torch-free (json, Jinja2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ..core.runs import RunFiles

__all__ = ["collect_sections", "render_sections", "cv_record_of", "ood_record_of", "CV_FILE"]

#: The record ``medclass cv`` writes in its folder (:data:`medclass.evaluation.cv.CV_FILE`).
CV_FILE = "cv.json"

_METRICS = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("auroc", "AUROC"))


def _read_json(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cv_record_of(run_dir: Path) -> Optional[dict[str, Any]]:
    """The ``cv.json`` of the cross-validation whose fold ensemble ``run_dir`` is (``RUN/ensemble``
    of ``medclass cv``, an ensemble run beside ``cv.json``), or None (any other run, or an
    unreadable record)."""
    root = Path(run_dir)
    if not RunFiles(root).ensemble.is_file():
        return None
    record = _read_json(root.parent / CV_FILE)
    return record if isinstance(record, dict) and "out_of_fold" in record else None


def ood_record_of(run_dir: Path) -> Optional[dict[str, Any]]:
    """The summary in ``RUN/ood.json`` (method, threshold, quantile, thresholds, split sizes; the
    matrices are not read), or None when the run has none or it is not readable."""
    record = _read_json(RunFiles(Path(run_dir)).ood)
    return record if isinstance(record, dict) and "method" in record and "threshold" in record else None


def collect_sections(run_dir: Path, metrics: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The four result sections of ``run_dir`` (see the module description) as
    ``{"group_level", "subgroups", "cv", "ood"}``, each None when the run does not have it.

    Args:
        run_dir: a run folder.
        metrics: the evaluation shown beside them (``metrics.json`` of ``medclass evaluate``), or
            None when the run was not evaluated.
    """
    metrics = metrics or {}
    ood = ood_record_of(run_dir)
    if ood is not None:
        ood = {k: ood.get(k) for k in ("method", "threshold", "quantile", "thresholds", "n_train", "n_valid",
                                        "layers", "combine", "valid_flagged", "checkpoint_epoch")}
        ood["layers"] = ood["layers"] or ["penultimate"]  # version 1 of ood.json: the penultimate features only
        on_split = metrics.get("ood")
        if isinstance(on_split, dict) and on_split.get("method") == ood["method"]:
            ood["evaluated"] = {"split": metrics.get("split"), **{k: on_split.get(k) for k in
                                                                  ("n", "n_flagged", "flagged_share")}}
    raw = cv_record_of(run_dir)
    cv = None
    if raw is not None:
        cv = {k: raw.get(k) for k in ("settings", "n_pool", "n_test", "n_groups", "fold_sizes", "folds",
                                      "fold_mean_std", "ensemble_test")}
        oof = raw.get("out_of_fold") or {}
        cv["out_of_fold"] = {"n": oof.get("n"), **{k: oof.get(k) for k, _ in _METRICS},
                             "ci": (oof.get("confidence_intervals") or {}).get("metrics", {})}
    group = metrics.get("group_level")
    if isinstance(group, dict):
        group = {k: group.get(k) for k in ("aggregation", "n_images", "n_groups", "conflicts", "accuracy",
                                           "balanced_accuracy", "macro_f1", "auroc")} | {
            "ci": (group.get("confidence_intervals") or {}).get("metrics", {})}
    subgroups = metrics.get("subgroups") if isinstance(metrics.get("subgroups"), dict) else None
    return {"group_level": group or None, "subgroups": subgroups or None, "cv": cv, "ood": ood}


_TEMPLATE = """
{%- macro num(v) %}{% if v is none %}n/a{% else %}{{ "%.3f"|format(v) }}{% endif %}{% endmacro -%}
{%- macro ci(c) %}{% if c and c.low is not none %}{{ "%.3f"|format(c.low) }} to {{ "%.3f"|format(c.high) }}{% endif %}{% endmacro -%}
{%- macro ci2(pair) %}{% if pair and pair[0] is not none %}{{ "%.3f"|format(pair[0]) }} to {{ "%.3f"|format(pair[1]) }}{% endif %}{% endmacro -%}
{% if s.group_level %}{% set g = s.group_level %}
<section id="group-level"><h{{ h }}>Results per patient, lesion or study</h{{ h }}>
<p>{{ g.n_images }} images in {{ g.n_groups }} groups; each group's probabilities are the
{{ "mean" if g.aggregation == "mean" else "maximum (any image positive)" }} of its images', scored against the group's
label; 95% intervals by bootstrap over groups.</p>
<table><tr><th class="l">metric</th><th>estimate</th><th>95% CI</th></tr>
{% for k, label in metrics %}<tr><td class="l">{{ label }}</td><td>{{ num(g[k]) }}</td><td>{{ ci(g.ci.get(k)) }}</td></tr>{% endfor %}
</table>
{% if g.conflicts %}<p class="warn">{{ g.conflicts|length }} groups hold images of different labels and are left out
(not merged): {% for c in g.conflicts[:10] %}{{ c.group }}{% if not loop.last %}, {% endif %}{% endfor %}{% if g.conflicts|length > 10 %} ...{% endif %}.</p>{% endif %}
</section>{% endif %}
{% if s.subgroups %}<section id="subgroups"><h{{ h }}>Subgroups</h{{ h }}>
{% for column, t in s.subgroups.items() %}<h{{ h + 1 }}>By {{ column }}</h{{ h + 1 }}>
{% if t.bins %}<p>Numeric column cut into quantile bins at {{ t.bins|join(", ") }} (each bin lo &le; value &lt; hi, the last one closed).</p>{% endif %}
<table class="subgroups"><tr><th class="l">{{ column }}</th><th>n</th>{% for k, label in metrics %}<th>{{ label }} (95% CI)</th>{% endfor %}</tr>
{% for name, r in t.subgroups.items() %}<tr{% if r.too_small %} class="small-n"{% endif %}><td class="l">{{ name }}{% if r.too_small %} <b>(too few: n &lt; {{ t.min_n }})</b>{% endif %}</td><td>{{ r.n }}</td>
{% for k, label in metrics %}<td>{{ num(r[k]) }} ({{ ci2(r.ci95.get(k)) }})</td>{% endfor %}</tr>{% endfor %}
</table>
{% set gap = t.gap.get("balanced_accuracy") or t.gap.get("accuracy") %}
{% if gap %}<p>Gap between the best and the worst subgroup with at least {{ t.min_n }} images:
{% for k, label in metrics %}{% if t.gap.get(k) %}{{ label }} {{ "%.3f"|format(t.gap[k].difference) }} ({{ t.gap[k].best }} over {{ t.gap[k].worst }}){% if not loop.last %}; {% endif %}{% endif %}{% endfor %}.</p>
{% else %}<p>No gap: fewer than two subgroups with at least {{ t.min_n }} images.</p>{% endif %}
{% endfor %}</section>{% endif %}
{% if s.cv %}{% set c = s.cv %}<section id="cross-validation"><h{{ h }}>Cross-validation</h{{ h }}>
<p>{{ c.settings.folds }} stratified folds over {{ c.n_pool }} training and validation images in {{ c.n_groups }} groups
(each group inside one fold{% if c.settings.group_pattern %}, groups from the pattern <code>{{ c.settings.group_pattern }}</code>{% endif %});
fold sizes {{ c.fold_sizes|join(", ") }}. This model is the soft-voting ensemble of the {{ c.settings.folds }} fold models.</p>
<table><tr><th class="l">fold</th><th>validation images</th>{% for k, label in metrics %}<th>{{ label }}</th>{% endfor %}</tr>
{% for f in c.folds %}<tr><td class="l">{{ f.fold }}</td><td>{{ f.n_valid }}</td>{% for k, label in metrics %}<td>{{ num(f[k]) }}</td>{% endfor %}</tr>{% endfor %}
{% if c.fold_mean_std %}<tr><td class="l">mean &plusmn; sd</td><td></td>{% for k, label in metrics %}<td>{% if c.fold_mean_std.get(k) %}{{ "%.3f"|format(c.fold_mean_std[k].mean) }} &plusmn; {{ "%.3f"|format(c.fold_mean_std[k].std) }}{% endif %}</td>{% endfor %}</tr>{% endif %}
<tr><td class="l">out of fold (95% CI)</td><td>{{ c.out_of_fold.n }}</td>{% for k, label in metrics %}<td>{{ num(c.out_of_fold[k]) }} ({{ ci(c.out_of_fold.ci.get(k)) }})</td>{% endfor %}</tr>
{% if c.ensemble_test %}<tr><td class="l">ensemble on test</td><td>{{ c.ensemble_test.n }}</td>{% for k, label in metrics %}<td>{{ num(c.ensemble_test[k]) }}</td>{% endfor %}</tr>{% endif %}
</table>
<p>Out of fold: every image predicted by the one fold model that did not train on it.</p></section>{% endif %}
<section id="ood"><h{{ h }}>Out-of-distribution warning</h{{ h }}>
{% if s.ood %}{% set o = s.ood %}<p>Images whose {{ o.method }} score
({% if o.method == "energy" %}energy of the logits, Liu et al. 2020{% elif o.layers|length > 1 %}Mahalanobis distance to the nearest class mean of the pooled features of each of the layers {{ o.layers|join(", ") }}, each standardised by its validation median and IQR, their {{ o.combine }}; Lee et al. 2018, Ledoit-Wolf covariance{% else %}Mahalanobis distance of the penultimate features to the nearest class mean, Lee et al. 2018, Ledoit-Wolf covariance{% endif %})
is above <b>{{ "%.4g"|format(o.threshold) }}</b> are flagged "this image is unlike the training images". The threshold lets
{{ "%.0f"|format(100 * o.quantile) }}% of the {{ o.n_valid }} validation images pass; the class means and covariance come from
the {{ o.n_train }} training images.{% if o.evaluated and o.evaluated.n %} On the {{ o.evaluated.n }} {{ o.evaluated.split }} images,
{{ o.evaluated.n_flagged }} ({{ "%.1f"|format(100 * o.evaluated.flagged_share) }}%) are flagged.{% endif %}</p>
{% else %}<p>This model has no out-of-distribution detector{% if s.cv %} (an ensemble: its members' features differ){% endif %}:
it answers every image with one of its classes, however unlike its training images the image is.</p>{% endif %}
</section>
"""


def render_sections(sections: dict[str, Any], heading_level: int = 2) -> str:
    """The sections of :func:`collect_sections` as HTML (``<section>`` elements with ``<h{level}>``
    headings; tables use the classes ``l`` (left-aligned cell), ``warn`` and ``small-n`` (a
    subgroup with too few images)). Every value is escaped."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    return env.from_string(_TEMPLATE).render(s=sections, h=heading_level, metrics=_METRICS)

"""Group-level results (per patient/lesion) and subgroup tables (issue 13): medclass.evaluation.groups."""

import numpy as np
import pytest

from medclass.evaluation.groups import aggregate_groups, is_numeric, numeric_bins, subgroup_metrics
from medclass.evaluation.metrics import bootstrap_ci


def test_mean_and_max_aggregate_a_lesions_images_into_one_row():
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.2, 0.8], [0.3, 0.7]])
    labels = [1, 1, 0, 1, 1]
    groups = ["a", "a", "b", "c", "c"]
    mean = aggregate_groups(probs, labels, groups, "mean")
    assert mean.groups == ["a", "b", "c"] and mean.labels.tolist() == [1, 0, 1] and mean.n_images.tolist() == [2, 1, 2]
    np.testing.assert_allclose(mean.probs, [[0.65, 0.35], [0.7, 0.3], [0.25, 0.75]])
    # "any image positive": lesion a has one image at 0.6, so it is called positive
    top = aggregate_groups(probs, labels, groups, "max")
    np.testing.assert_allclose(top.probs[0], [0.4, 0.6])
    assert top.probs.argmax(1).tolist() == [1, 0, 1] and mean.probs.argmax(1).tolist() == [0, 0, 1]
    # multi-class max: each class's maximum, renormalised
    three = aggregate_groups(np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]), [2, 2], ["x", "x"], "max")
    np.testing.assert_allclose(three.probs, [[0.6 / 1.5, 0.3 / 1.5, 0.6 / 1.5]])


def test_a_group_with_two_labels_is_reported_not_merged():
    probs = np.full((4, 2), 0.5)
    r = aggregate_groups(probs, [0, 1, 1, 1], ["p1", "p1", "p2", "p2"])
    assert r.groups == ["p2"] and r.conflicts == [{"group": "p1", "labels": {0: 1, 1: 1}}]
    with pytest.raises(ValueError, match="mean, max"):
        aggregate_groups(probs, [0, 1, 1, 1], ["a"] * 4, "median")
    with pytest.raises(ValueError, match="length"):
        aggregate_groups(probs, [0, 1, 1], ["a"] * 4)


def test_the_bootstrap_over_groups_resamples_groups():
    rng = np.random.default_rng(0)
    # 10 lesions of 20 images each: image-level intervals are too narrow; group-level ones are wider
    groups = np.repeat(np.arange(10), 20)
    labels = np.repeat(np.arange(10) % 2, 20)
    shift = rng.normal(0, 0.25, 10)[groups]  # lesions differ: their images are not independent draws
    p1 = np.clip(labels * 0.3 + 0.35 + shift + rng.normal(0, 0.05, 200), 0.01, 0.99)
    probs = np.stack([1 - p1, p1], axis=1)
    g = aggregate_groups(probs, labels, groups)
    assert len(g.labels) == 10
    width_images = np.diff([bootstrap_ci(labels, probs, 300)["metrics"]["accuracy"][k] for k in ("low", "high")])
    width_groups = np.diff([bootstrap_ci(g.labels, g.probs, 300)["metrics"]["accuracy"][k] for k in ("low", "high")])
    assert width_groups[0] > width_images[0]


def test_subgroups_give_intervals_flag_small_ones_and_the_gap():
    rng = np.random.default_rng(1)
    n = 200
    labels = rng.integers(0, 2, n)
    sex = np.where(np.arange(n) < 100, "male", "female").astype(object)
    sex[:5] = None  # unknown
    # the model is right on every male image and at chance on female ones
    p1 = np.where(sex == "male", labels * 0.8 + 0.1, rng.uniform(0, 1, n))
    probs = np.stack([1 - p1, p1], axis=1)
    out = subgroup_metrics(probs, labels, sex, n_resamples=200, min_n=30)
    t = out["subgroups"]
    assert set(t) == {"male", "female", "unknown"} and t["unknown"]["n"] == 5 and t["unknown"]["too_small"]
    assert t["male"]["accuracy"] == 1.0 and t["female"]["accuracy"] < 0.7
    lo, hi = t["female"]["ci95"]["accuracy"]
    assert lo <= t["female"]["accuracy"] <= hi
    assert out["gap"]["accuracy"]["best"] == "male" and out["gap"]["accuracy"]["worst"] == "female"
    assert out["gap"]["accuracy"]["difference"] == pytest.approx(1.0 - t["female"]["accuracy"])


def test_numeric_columns_become_stated_quartile_bins_and_missing_stays_unknown():
    ages = [20, 30, 40, 50, 60, 70, 80, 90, "", "unknown", None]
    assert is_numeric(ages) and not is_numeric(["male", "female", ""]) and not is_numeric(["", None])
    bins, edges = numeric_bins(ages)
    assert edges == [20.0, 37.5, 55.0, 72.5, 90.0]
    assert bins[:8] == ["20-37.5", "20-37.5", "37.5-55", "37.5-55", "55-72.5", "55-72.5", "72.5-90", "72.5-90"]
    assert bins[8:] == [None, None, None]
    assert numeric_bins([5, 5, 5])[0] == ["5", "5", "5"]  # one value: one bin


def _csv_with_patients(root, n_patients=24, conflict=False):
    """A CSV data set: patients of 1-3 PNGs each, dark = class a, bright = class b; with
    ``conflict`` patient P02 (3 images) has one of the other class."""
    import csv

    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for p in range(n_patients):
        label = "ab"[p % 2]
        for k in range(1 + p % 3):
            lab = ("b" if label == "a" else "a") if (conflict and p == 2 and k == 1) else label
            level = 60 if lab == "a" else 190
            rel = f"img/p{p}_{k}.png"
            (root / "img").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(rng.normal(level, 20, (16, 16)), 0, 255).astype(np.uint8)).save(root / rel)
            rows.append({"path": rel, "label": lab, "patient_id": f"P{p:02d}", "sex": ["male", "female", ""][p % 3],
                         "age": str(20 + 3 * p)})
    with open(root / "meta.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "patient_id", "sex", "age"])
        w.writeheader()
        w.writerows(rows)
    return root / "meta.csv", rows


@pytest.mark.integration
def test_evaluate_reports_patient_level_results_beside_image_level(tmp_path):
    from helpers import tiny_config

    from medclass.engine import train
    from medclass.evaluation import evaluate_run
    from medclass.evaluation.evaluate import format_metrics

    csv_path, rows = _csv_with_patients(tmp_path / "data")
    cfg = tiny_config(csv_path, epochs=1)
    train(cfg, tmp_path / "run")
    m = evaluate_run(tmp_path / "run", progress=False, n_bootstrap=50, calibrate=False)
    g = m["group_level"]
    test_patients = {r["patient_id"] for r in rows} & {line.split(",")[-1].strip() for line in
                                                      (tmp_path / "run" / "manifest.csv").read_text().splitlines()
                                                      if line.startswith("test,")}
    assert g["n_groups"] == len(test_patients) < g["n_images"] == m["n"]
    assert g["aggregation"] == "mean" and g["conflicts"] == [] and 0 <= g["accuracy"] <= 1
    assert g["confidence_intervals"]["metrics"]["accuracy"]["low"] is not None
    assert "per group" in format_metrics(m)

    # another data set where one patient's images disagree: reported, left out, "max" on request
    other, other_rows = _csv_with_patients(tmp_path / "other", n_patients=6, conflict=True)
    m = evaluate_run(tmp_path / "run", data=str(other), progress=False, n_bootstrap=50, calibrate=False,
                     out_dir=tmp_path / "eval-other", group_how="max")
    g = m["group_level"]
    assert g["aggregation"] == "max" and [c["group"] for c in g["conflicts"]] == ["P02"] and g["n_groups"] == 5
    with pytest.raises(ValueError, match="mean or max"):
        evaluate_run(tmp_path / "run", progress=False, calibrate=False, group_how="median")

    # subgroups from the CSV's columns: sex as written (missing: "unknown"), age in stated quartile bins
    m = evaluate_run(tmp_path / "run", data=str(other), progress=False, n_bootstrap=50, calibrate=False,
                     out_dir=tmp_path / "eval-sub", subgroups=["sex", "age"])
    sex, age = m["subgroups"]["sex"], m["subgroups"]["age"]
    assert set(sex["subgroups"]) == {"male", "female", "unknown"} and sex["bins"] is None
    assert sum(r["n"] for r in sex["subgroups"].values()) == m["n"] == len(other_rows)
    assert all(r["too_small"] for r in sex["subgroups"].values())  # 12 images: every subgroup is flagged
    assert len(age["bins"]) == 5 and len(age["subgroups"]) == 4
    assert "by sex" in format_metrics(m) and "too few" in format_metrics(m)
    from medclass.data import DataError

    with pytest.raises(DataError, match="no column 'site'"):
        evaluate_run(tmp_path / "run", data=str(other), progress=False, calibrate=False, subgroups=["site"],
                     out_dir=tmp_path / "eval-x")


# ---- the results in the report and the model card ------------------------------------------------


def _metrics_with_groups_and_subgroups() -> dict:
    ci = {"accuracy": {"estimate": 0.8, "low": 0.6, "high": 0.9}, "balanced_accuracy": {"estimate": 0.75, "low": 0.5,
          "high": 0.9}, "auroc": {"estimate": 0.85, "low": 0.7, "high": 0.95}}
    sub = {"subgroups": {"female": {"n": 40, "too_small": False, "accuracy": 0.9, "balanced_accuracy": 0.88,
                                    "auroc": 0.93, "ci95": {"accuracy": [0.8, 0.97], "balanced_accuracy": [0.7, 0.95],
                                                            "auroc": [0.85, 0.99]}},
                         "male": {"n": 35, "too_small": False, "accuracy": 0.7, "balanced_accuracy": 0.66,
                                  "auroc": 0.8, "ci95": {"accuracy": [0.55, 0.85], "balanced_accuracy": [0.5, 0.8],
                                                         "auroc": [0.65, 0.9]}},
                         "unknown": {"n": 4, "too_small": True, "accuracy": 0.5, "balanced_accuracy": 0.5,
                                     "auroc": None, "ci95": {"accuracy": [0.0, 1.0], "balanced_accuracy": [0.0, 1.0],
                                                             "auroc": [None, None]}}},
           "gap": {"accuracy": {"best": "female", "worst": "male", "difference": 0.2},
                   "balanced_accuracy": {"best": "female", "worst": "male", "difference": 0.22}},
           "min_n": 30, "bins": None}
    return {"split": "test", "n": 79, "accuracy": 0.8, "group_level": {
        "aggregation": "max", "n_images": 79, "n_groups": 31, "conflicts": [{"group": "P07", "labels": {"0": 1, "1": 2}}],
        "accuracy": 0.81, "balanced_accuracy": 0.77, "macro_f1": 0.76, "auroc": 0.86,
        "confidence_intervals": {"metrics": ci}}, "subgroups": {"sex": sub},
        "ood": {"method": "mahalanobis", "threshold": 812.5, "quantile": 0.95, "n": 79, "n_flagged": 4,
                "flagged_share": 4 / 79}}


def test_report_and_card_sections_show_groups_subgroups_cv_and_ood(tmp_path):
    import json

    from medclass.evaluation.result_sections import collect_sections, render_sections
    from medclass.evaluation.model_card import build_model_card, render_model_card

    run = tmp_path / "run"
    run.mkdir()
    (run / "ood.json").write_text(json.dumps({"method": "mahalanobis", "threshold": 812.5, "quantile": 0.95,
                                              "n_train": 300, "n_valid": 90, "thresholds": {"energy": -3.1}}))
    (run / "eval-test").mkdir()
    (run / "eval-test" / "metrics.json").write_text(json.dumps(_metrics_with_groups_and_subgroups()))
    card = build_model_card(run)
    r = card["results"]
    assert r["group_level"]["n_groups"] == 31 and r["group_level"]["ci"]["auroc"]["low"] == 0.7
    assert r["subgroups"]["sex"]["gap"]["balanced_accuracy"]["difference"] == 0.22 and r["cv"] is None
    assert r["ood"]["threshold"] == 812.5 and r["ood"]["evaluated"]["n_flagged"] == 4
    assert any("Subgroups of sex" in c and "unknown" in c for c in card["caveats"])
    assert any("unlike the training images are flagged" in c for c in card["caveats"])
    json.dumps(card)  # what /model-card.json returns
    html = render_model_card(card)
    assert "Results per patient, lesion or study" in html and "31 groups" in html and "maximum (any image positive)" in html
    assert "P07" in html and "left out" in html
    assert "By sex" in html and "unknown <b>(too few: n &lt; 30)</b>" in html
    assert "balanced accuracy 0.220 (female over male)" in html
    assert "812.5" in html and "Lee et al. 2018" in html and "4 (5.1%) are flagged" in html
    assert "Cross-validation" not in html

    # the fold ensemble of `medclass cv`: its cv.json beside it; no OOD detector of its own
    cv_root = tmp_path / "cv"
    ens = cv_root / "ensemble"
    ens.mkdir(parents=True)
    (ens / "ensemble.json").write_text('{"members": [], "weights": []}')
    (cv_root / "cv.json").write_text(json.dumps({
        "settings": {"folds": 3, "group_pattern": "^(P\\d+)_"}, "n_pool": 60, "n_test": 20, "n_groups": 25,
        "fold_sizes": [20, 21, 19],
        "folds": [{"fold": i, "n_valid": 20, "accuracy": 0.7 + i / 100, "balanced_accuracy": 0.7, "auroc": 0.8}
                  for i in (1, 2, 3)],
        "fold_mean_std": {"accuracy": {"mean": 0.72, "std": 0.01}},
        "out_of_fold": {"n": 60, "accuracy": 0.71, "balanced_accuracy": 0.7, "auroc": 0.79,
                        "confidence_intervals": {"metrics": {"accuracy": {"low": 0.6, "high": 0.8}}}},
        "ensemble_test": {"n": 20, "accuracy": 0.75, "balanced_accuracy": 0.74, "auroc": 0.83}}))
    sections = collect_sections(ens, None)
    assert sections["cv"]["settings"]["folds"] == 3 and sections["ood"] is None
    html = render_sections(sections)
    assert "3 stratified folds over 60" in html and "0.720 &plusmn; 0.010" in html and "0.600 to 0.800" in html
    assert "ensemble on test" in html and "no out-of-distribution detector (an ensemble" in html
    assert "Results per patient" not in html and "Subgroups" not in html
    # values are escaped, never markup
    (run / "ood.json").write_text(json.dumps({"method": "<script>", "threshold": 1, "quantile": 0.95}))
    assert "<script>" not in render_sections(collect_sections(run, None))


@pytest.mark.integration
def test_report_of_a_run_with_patients_subgroups_and_ood(tmp_path):
    from helpers import tiny_config

    from medclass.engine import train
    from medclass.evaluation import evaluate_run
    from medclass.evaluation.ood import fit_run_ood
    from medclass.evaluation.report import build_report

    csv_path, _ = _csv_with_patients(tmp_path / "data", n_patients=30)
    train(tiny_config(csv_path, epochs=1), tmp_path / "run")
    detector = fit_run_ood(tmp_path / "run")
    m = evaluate_run(tmp_path / "run", progress=False, n_bootstrap=50, subgroups=["sex"])
    assert m["ood"]["method"] == detector.method and m["ood"]["n"] == m["n"]
    # the report keeps the earlier evaluation's subgroup columns
    html = build_report(tmp_path / "run", n_bootstrap=50, explain=0, audit=False).read_text()
    assert "Results per patient, lesion or study" in html and "By sex" in html
    assert "Out-of-distribution warning" in html and f"{detector.threshold:.4g}" in html


def test_subgroups_are_listed_in_numeric_order_unknown_last():
    rng = np.random.default_rng(0)
    ages = [5, 8, 12, 30, 35, 44, 60, 75, None, 90] * 3
    bins, _ = numeric_bins(ages)
    y = rng.integers(0, 2, len(ages))
    p = rng.dirichlet([1, 1], len(ages))
    names = list(subgroup_metrics(p, y, bins, n_resamples=10)["subgroups"])
    lows = [float(n.split("-")[0]) for n in names[:-1]]
    assert lows == sorted(lows) and len(lows) >= 3 and names[-1] == "unknown"
    assert list(subgroup_metrics(p, y, ["b", "a", "10", "9"] * 7 + ["b", "a"], n_resamples=10)["subgroups"]) == \
        ["9", "10", "a", "b"]

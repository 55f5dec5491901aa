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

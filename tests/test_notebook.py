"""examples/quickstart.ipynb runs top to bottom on the CPU (nbclient, an IPython kernel) and shows
what it says: training lines, the evaluation with its figures, a prediction table, a Grad-CAM image."""

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def _outputs(cell) -> tuple[str, set[str]]:
    """A code cell's text (stdout, stderr, text/plain, text/html) and the MIME types it showed."""
    text, kinds = [], set()
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            text.append(out.get("text", ""))
        for mime, value in (out.get("data") or {}).items():
            kinds.add(mime)
            if mime in ("text/plain", "text/html"):
                text.append(value if isinstance(value, str) else "".join(value))
    return "\n".join(text), kinds


@pytest.mark.slow
def test_the_quickstart_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel", reason="the notebook runs in an IPython kernel (pip install ipykernel)")
    monkeypatch.delenv("MEDCLASS_MLFLOW", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error

    code = [c for c in nb.cells if c.cell_type == "code"]
    by_source = {c.source.splitlines()[0]: _outputs(c) for c in code}
    train_text, _ = by_source['run = medclass.train(config=cfg, runs_dir="runs")']
    assert "epoch  10/10" in train_text and "best epoch" in train_text
    assert "TqdmWarning" not in train_text and "Traceback" not in train_text
    eval_text, eval_kinds = by_source["ev = run.evaluate(bootstrap=500)"]
    assert "text/html" in eval_kinds and "balanced accuracy" in eval_text and "data:image/png;base64," in eval_text
    assert "image/png" in by_source["run.curves()"][1]
    assert "image/png" in by_source['run.explain("ultrasound.png")'][1]
    predict_text, _ = next(v for k, v in by_source.items() if k.startswith("from PIL import Image"))
    assert "<table>" in predict_text and "malignant" in predict_text
    config_text, _ = next(v for k, v in by_source.items() if k.startswith("cfg = medclass.configure("))
    assert "custom_cnn [32, 64, 128], 28 px" in config_text and "error: unknown config key 'epoch'" in config_text

    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    run = runs[0]
    for name in ("checkpoints/best.pt", "eval-test/metrics.json", "export/model.onnx", "report-test.html"):
        assert (run / name).is_file(), name

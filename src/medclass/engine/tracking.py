"""MLflow tracking of runs (optional: ``pip install medclass[mlflow]``).

On when ``train.mlflow`` is true (``medclass train --mlflow``, ``medclass.train(mlflow=True)``) or
the environment variable :data:`ENV_VAR` (``MEDCLASS_MLFLOW``) says so; a set ``MEDCLASS_MLFLOW``
(``1/true/yes/on`` or ``0/false/no/off``) overrides the config both ways. TensorBoard and the run
folder are written as always; MLflow gets a copy:

- at the start of training, one MLflow run per medclass run (named after the run folder, tagged
  with its path): the resolved config flattened to params (``train.lr``, ``data.image_size``, ...;
  after a time budget's plan, so ``train.epochs`` is the planned number);
- after every epoch the row of ``metrics.csv`` (``loss``, ``accuracy``, ``val_loss``,
  ``val_accuracy``, ``val_balanced_accuracy``, ``lr``, ``seconds``) at ``step = epoch``;
- at the end of training ``curves.png``, ``metrics.csv``, ``train_summary.json`` and ``config.yaml``
  as artifacts, and the run marked FINISHED (FAILED or KILLED when training raised);
- at evaluation (:func:`medclass.evaluation.evaluate_run`, so also ``medclass evaluate`` and
  ``report`` later, in another process) the metrics of the split as ``<split>_<metric>`` with the
  bootstrap 95 % interval as ``<split>_<metric>_ci_low`` / ``_ci_high``, the ECE and temperature,
  and the figures, ``metrics.json`` and the model card (``model_card.html``) under the artifact
  folder ``eval-<split>``.

Where: MLflow's ordinary default (MLflow 3: ``sqlite:///mlflow.db`` in the working directory, the
artifacts in ``./mlruns``; nothing needs a server), or ``$MLFLOW_TRACKING_URI`` (the team's server,
a ``file:`` or ``sqlite:`` URI). The experiment is ``$MLFLOW_EXPERIMENT_NAME`` or ``medclass``.
The MLflow run's id and the tracking URI are kept in ``RUN/mlflow_run.json`` (:data:`RECORD`), so
a resumed run and a later evaluation log to the same MLflow run. See it with ``mlflow ui`` (full
``mlflow`` package) or :class:`mlflow.tracking.MlflowClient`.

``mlflow`` is imported only when tracking is on. An error of the tracking server during training
is printed once as a warning and tracking stops for that run: a network glitch does not cost the
training.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from ..core.config import ConfigError, RunConfig
from ..core.fileio import atomic_write_text
from ..core.runs import EVAL_PREFIX, RunFiles

__all__ = ["ENV_VAR", "RECORD", "TrackingError", "tracking_enabled", "check_tracking", "import_mlflow",
           "flatten_config", "RunTracker", "open_tracker", "log_evaluation"]

#: The environment variable that turns tracking on (``1``) or off (``0``) whatever the config says.
ENV_VAR = "MEDCLASS_MLFLOW"
#: The file in a run folder that names its MLflow run: ``{"run_id", "experiment_id", "tracking_uri"}``.
RECORD = "mlflow_run.json"
#: Metric columns logged per epoch (the columns of ``metrics.csv`` but ``epoch``, which is the step).
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy", "lr", "seconds")
#: Evaluation metrics logged as ``<split>_<name>`` (those of metrics.json that are numbers).
EVAL_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "loss", "n")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
_INSTALL = "pip install 'medclass[mlflow]' (mlflow-skinny with its SQLite store)"


class TrackingError(RuntimeError):
    """MLflow tracking is on but cannot work: mlflow is not installed, ``$MEDCLASS_MLFLOW`` has
    a value that is not a yes/no, or the tracking store cannot be opened (names the URI)."""


def tracking_enabled(cfg: Optional[RunConfig] = None) -> bool:
    """Whether MLflow tracking is on: ``$MEDCLASS_MLFLOW`` when set (``1/true/yes/on`` or
    ``0/false/no/off``, case ignored), else ``cfg.train.mlflow`` (False without a config).

    Raises:
        ConfigError: ``$MEDCLASS_MLFLOW`` is set to anything else.
    """
    raw = os.environ.get(ENV_VAR)
    if raw is not None:
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise ConfigError(f"${ENV_VAR} must be 1 or 0 (also true/false, yes/no, on/off), got {raw!r}")
    return bool(cfg is not None and getattr(cfg.train, "mlflow", False))


def import_mlflow():
    """The ``mlflow`` module (mlflow or mlflow-skinny).

    Raises:
        TrackingError: it is not installed; the message says how to install it, or how to turn
            tracking off.
    """
    try:
        import mlflow
    except ImportError as e:
        raise TrackingError(
            f"MLflow tracking is on (train.mlflow / --mlflow / ${ENV_VAR}) but mlflow is not installed ({e}): "
            f"{_INSTALL}, or turn tracking off ({ENV_VAR}=0, train.mlflow=false)") from None
    return mlflow


def check_tracking(cfg: Optional[RunConfig]) -> None:
    """Before a run starts: when tracking is on for ``cfg`` (:func:`tracking_enabled`), mlflow
    must be importable.

    Raises:
        TrackingError: tracking on and mlflow missing (says ``pip install 'medclass[mlflow]'``).
        ConfigError: a bad ``$MEDCLASS_MLFLOW``.
    """
    if tracking_enabled(cfg):
        import_mlflow()


def flatten_config(cfg: RunConfig) -> dict[str, str]:
    """The config as MLflow params: ``{"section.key": value as text}`` for every key of
    ``cfg.to_dict()`` (lists and dicts as compact JSON, None as ``"null"``)."""
    out: dict[str, str] = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
            out[f"{section}.{key}"] = text
    return out


def _experiment_id(client, mlflow) -> str:
    """``$MLFLOW_EXPERIMENT_ID``, else the experiment ``$MLFLOW_EXPERIMENT_NAME`` (default
    ``medclass``), created when missing."""
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "medclass"
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except mlflow.exceptions.MlflowException:  # created meanwhile by another process
        return client.get_experiment_by_name(name).experiment_id


def _absolute_uri(uri: str) -> str:
    """``uri`` with a relative local path made absolute (``sqlite:///mlflow.db``, ``file:mlruns``,
    ``mlruns``), so the record names the same store from any working directory; others unchanged."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        return uri if path.startswith("/") or path == ":memory:" else "sqlite:///" + str(Path(path).resolve())
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return Path(uri[len("file:"):]).resolve().as_uri()
    if uri in ("databricks", "databricks-uc", "uc"):  # MLflow's bare store names, not paths
        return uri
    if "://" not in uri and ":" not in uri.split("/")[0]:
        return Path(uri).resolve().as_uri()
    return uri


def _check_store_support(uri: str) -> None:
    """A database store (MLflow 3's default ``sqlite:///mlflow.db``) needs SQLAlchemy, which
    mlflow-skinny alone lacks; without it MLflow's own error is about its model registry.

    Raises:
        TrackingError: a database URI and no sqlalchemy/alembic; says what to install or set.
    """
    if uri.split(":", 1)[0].split("+", 1)[0] not in ("sqlite", "postgresql", "mysql", "mssql"):
        return
    try:
        import alembic  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as e:
        raise TrackingError(
            f"the MLflow store {uri!r} is a database, which needs sqlalchemy and alembic ({e}): {_INSTALL}, "
            "or point MLFLOW_TRACKING_URI at a tracking server (http://...)") from None


def _read_record(files: RunFiles) -> Optional[dict[str, Any]]:
    path = files.root / RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise TrackingError(f"{path} is unreadable ({e}); delete it to start a new MLflow run") from e
    if not isinstance(record, dict) or not record.get("run_id") or not record.get("tracking_uri"):
        raise TrackingError(f"{path} lacks run_id or tracking_uri; delete it to start a new MLflow run")
    return record


class RunTracker:
    """One medclass run's MLflow run, logged through :class:`mlflow.tracking.MlflowClient` (no
    global active run, so a notebook's own ``mlflow.start_run`` is left alone).

    Every method is a no-op after :meth:`disable` (or when a logging call failed: the error is
    printed once as a warning and tracking stops).

    Attributes:
        run_id: the MLflow run's id. tracking_uri: the store it is in. files: the run folder.
    """

    def __init__(self, client, run_id: str, tracking_uri: str, files: RunFiles) -> None:
        self.client, self.run_id, self.tracking_uri, self.files = client, run_id, tracking_uri, files
        self.active = True

    # ----------------------------------------------------------------- opening

    @classmethod
    def open(cls, files: RunFiles, cfg: Optional[RunConfig], resume: bool = False) -> "RunTracker":
        """The MLflow run of ``files``: the one named in ``RUN/mlflow_run.json`` (a resumed run, a
        later evaluation), else a new one in the current tracking store, with the params of
        ``cfg`` and tags ``medclass.run_dir`` and ``medclass.data``; the record is written.

        Args:
            files: the run folder (must exist).
            cfg: the resolved config, logged as params (on a resumed run only params not logged
                before; a changed value is kept as a tag ``medclass.resumed_with.<key>``).
            resume: continuing the same run (marked RUNNING again).

        Raises:
            TrackingError: mlflow missing; an unreadable record; the store cannot be opened or
                written (the message names the tracking URI).
        """
        mlflow = import_mlflow()
        from mlflow.tracking import MlflowClient

        record = _read_record(files)
        uri = record["tracking_uri"] if record else _absolute_uri(mlflow.get_tracking_uri())
        _check_store_support(uri)
        try:
            client = MlflowClient(tracking_uri=uri)
            if record is not None:
                run_id = record["run_id"]
                client.get_run(run_id)  # it still exists
                if resume:
                    client.update_run(run_id, status="RUNNING")
            else:
                tags = {"medclass.run_dir": str(files.root.resolve()), "medclass.version": _version(),
                        "mlflow.source.name": "medclass"}
                if cfg is not None:
                    tags["medclass.data"] = str(cfg.data.source or "bundled breastmnist")
                run = client.create_run(_experiment_id(client, mlflow), run_name=files.root.resolve().name, tags=tags)
                run_id = run.info.run_id
                atomic_write_text(files.root / RECORD, json.dumps(
                    {"run_id": run_id, "experiment_id": run.info.experiment_id, "tracking_uri": uri}, indent=1))
            tracker = cls(client, run_id, uri, files)
            if cfg is not None:
                tracker._log_params(flatten_config(cfg), resume or record is not None)
        except TrackingError:
            raise
        except Exception as e:  # the store's own errors: a bad URI, no server, a locked database
            raise TrackingError(f"cannot open MLflow tracking store {uri!r}: {type(e).__name__}: {e} "
                                f"(set MLFLOW_TRACKING_URI, or turn tracking off with {ENV_VAR}=0)") from e
        return tracker

    def _log_params(self, params: dict[str, str], existing: bool) -> None:
        from mlflow.entities import Param

        if existing:  # MLflow refuses to change a param's value: log only the new keys
            logged = self.client.get_run(self.run_id).data.params
            changed = {k: v for k, v in params.items() if k in logged and logged[k] != v}
            params = {k: v for k, v in params.items() if k not in logged}
            for k, v in changed.items():
                self.client.set_tag(self.run_id, f"medclass.resumed_with.{k}", v[:5000])
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    # ----------------------------------------------------------------- logging

    def _guard(self, what: str, fn, *args, **kwargs) -> None:
        if not self.active:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:  # never lose a training to the tracking server
            self.active = False
            print(f"warning: MLflow tracking stopped ({what} failed on {self.tracking_uri}: {type(e).__name__}: {e}); "
                  f"the run folder {self.files.root} has everything")

    def log_metrics(self, metrics: dict[str, Any], step: int = 0) -> None:
        """Log the numeric values of ``metrics`` (None, bools and non-numbers skipped) at ``step``."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v]
        for start in range(0, len(items), 1000):
            self._guard("log_metrics", self.client.log_batch, self.run_id, metrics=items[start:start + 1000])

    def log_epoch(self, row: dict[str, Any]) -> None:
        """One epoch's row of ``metrics.csv``: :data:`EPOCH_METRICS` at ``step = row["epoch"]``."""
        self.log_metrics({k: row[k] for k in EPOCH_METRICS if k in row}, step=int(row["epoch"]))

    def log_artifacts(self, paths: Iterable[Path], artifact_path: Optional[str] = None) -> None:
        """Upload the files of ``paths`` that exist (others skipped) into ``artifact_path``."""
        for p in paths:
            if Path(p).is_file():
                self._guard(f"log_artifact {Path(p).name}", self.client.log_artifact, self.run_id, str(p),
                            artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        """Mark the MLflow run ``status`` (FINISHED, FAILED or KILLED) with its end time. Logging
        to it still works afterwards (an evaluation adds its metrics)."""
        self._guard("set_terminated", self.client.set_terminated, self.run_id, status)

    def disable(self) -> None:
        """Make every further call a no-op."""
        self.active = False

    # ----------------------------------------------------------------- training's hooks

    def __enter__(self) -> "RunTracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Leaving training by an exception marks the MLflow run FAILED (KILLED for Ctrl-C); a
        normal exit leaves it RUNNING until :meth:`end_training`."""
        if exc_type is not None:
            self.finish("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")
            self.active = False

    def end_training(self) -> None:
        """After ``train_summary.json`` and ``curves.png`` are written: upload them with
        ``metrics.csv`` and ``config.yaml``, and mark the MLflow run FINISHED."""
        f = self.files
        self.log_artifacts([f.curves, f.metrics_csv, f.summary, f.config])
        self.finish("FINISHED")


class _NoTracker:
    """The tracker when tracking is off (or on DDP ranks other than 0): every call does nothing."""

    active = False

    def __enter__(self) -> "_NoTracker":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def _should_track(files: RunFiles, cfg: Optional[RunConfig]) -> bool:
    """Whether to log to MLflow for the run ``files``: tracking is on for ``cfg``
    (:func:`tracking_enabled`), or the run was tracked before (``RUN/mlflow_run.json``) and
    ``$MEDCLASS_MLFLOW`` does not turn it off. A tracked run whose tracking is not asked for now,
    while mlflow is not installed, is not logged (a warning says so).

    Raises:
        TrackingError: tracking asked for (``cfg``, ``$MEDCLASS_MLFLOW=1``) and mlflow missing.
        ConfigError: a bad ``$MEDCLASS_MLFLOW``.
    """
    wanted = tracking_enabled(cfg)
    if wanted:
        import_mlflow()
        return True
    if os.environ.get(ENV_VAR) is not None or not (files.root / RECORD).is_file():  # off, or never tracked
        return False
    try:
        import_mlflow()
    except TrackingError:
        print(f"warning: {files.root} was tracked with MLflow ({RECORD}) but mlflow is not installed: "
              f"not logged there now ({_INSTALL})")
        return False
    return True


def open_tracker(cfg: RunConfig, files: Optional[RunFiles], resume: bool = False):
    """The training's tracker: a :class:`RunTracker` when ``files`` is given (rank 0) and
    tracking is on for ``cfg`` or, resuming, the run was tracked before (see
    :func:`_should_track`); else an object whose methods do nothing. Use it as a context manager
    around the epochs (an exception marks the MLflow run FAILED) and call ``log_epoch(row)`` per
    epoch and ``end_training()`` after the summary is written.

    Raises:
        TrackingError, ConfigError: see :meth:`RunTracker.open` and :func:`tracking_enabled`.
    """
    if files is None or not _should_track(files, cfg):
        return _NoTracker()
    return RunTracker.open(files, cfg, resume)


def _version() -> str:
    from ..core import __version__

    return __version__


def log_evaluation(files: RunFiles, cfg: Optional[RunConfig], metrics: dict[str, Any], out_dir: Path,
                   model_card: Optional[Callable[[], str]] = None) -> bool:
    """Log an evaluation to the run's MLflow run: the split's metrics (:data:`EVAL_METRICS`) as
    ``<split>_<name>``, their bootstrap intervals as ``<split>_<name>_ci_low`` / ``_ci_high``, the
    ECE before/after calibration and the temperature; then the figures (``*.png``),
    ``metrics.json`` and ``predictions.csv`` of ``out_dir`` and the model card
    (``model_card.html``, the HTML that ``model_card()`` returns: the evaluation passes
    :func:`medclass.evaluation.model_card.render_model_card`, since the engine may not import the
    evaluation) under the artifact folder ``eval-<split>`` (``out_dir``'s name for another folder).

    Logged when the run has a record (``RUN/mlflow_run.json``: it was tracked) and tracking is not
    turned off by ``$MEDCLASS_MLFLOW=0``, or when tracking is on for ``cfg`` (then an untracked run
    gets a new MLflow run); see :func:`_should_track`.

    Returns:
        Whether anything was logged.
    Raises:
        TrackingError: tracking is on (``cfg`` or ``$MEDCLASS_MLFLOW=1``) and mlflow is missing, or
            the store cannot be opened.
    """
    if not _should_track(files, cfg):
        return False
    recorded = (files.root / RECORD).is_file()
    tracker = RunTracker.open(files, cfg if not recorded else None)
    split = str(metrics.get("split", "test"))
    values = {f"{split}_{k}": metrics.get(k) for k in EVAL_METRICS}
    for name, ci in ((metrics.get("confidence_intervals") or {}).get("metrics") or {}).items():
        values[f"{split}_{name}_ci_low"] = ci.get("low")
        values[f"{split}_{name}_ci_high"] = ci.get("high")
    cal = metrics.get("calibration") or {}
    values.update({f"{split}_ece_before": cal.get("ece_before"), f"{split}_ece_after": cal.get("ece_after"),
                   f"{split}_temperature": cal.get("temperature")})
    op = (metrics.get("operating_point") or {}).get("at_chosen") or {}
    values.update({f"{split}_sensitivity": op.get("sensitivity"), f"{split}_specificity": op.get("specificity")})
    tracker.log_metrics(values, step=int(metrics.get("checkpoint_epoch") or 0))
    out = Path(out_dir)
    folder = out.name if out.name.startswith(EVAL_PREFIX) else files.eval_dir(split).name
    tracker.log_artifacts(sorted(out.glob("*.png")) + [out / "metrics.json", out / "predictions.csv"], folder)
    if model_card is None:
        return tracker.active
    try:
        html = model_card()
    except Exception as e:  # the card is a nicety here; the metrics are logged
        print(f"warning: model card not logged to MLflow: {type(e).__name__}: {e}")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            card = Path(tmp) / "model_card.html"
            card.write_text(html)
            tracker.log_artifacts([card], folder)
    return tracker.active

"""Training survives faults: SIGKILL mid-epoch and ``--resume``, a kill before the first
checkpoint, too little disk space before training, a full disk while saving a checkpoint.

The kill tests run ``python -m medclass train`` as a subprocess (10 steps of a small CNN at 32 px
per epoch, about a second on a CPU; small checkpoints keep the test fast, and what is tested, the
loop's checkpoints and resume, is the same for every architecture) and compare with an
uninterrupted subprocess run: CPU training in one process is deterministic and every epoch
reseeds from ``(seed, epoch)``, so a resumed run must repeat the uninterrupted run's numbers.

The mid-epoch kill is timed by what the run reports, not by the wall clock: the run prints a
progress line after every step (``train.log_interval``), the test freezes it (``SIGSTOP``) as
soon as a line of epoch 2 shows, checks while it is frozen that it stands after a checkpoint and
before its end, and only then sends ``SIGKILL``. A test process starved for the rest of the run
(a loaded machine) sees it end or freezes it too late: that try is discarded and a fresh run is
tried (:data:`KILL_TRIES`), with a clear failure when none can be caught.
"""

import collections
import csv
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medclass.cli.app import app
from medclass.core.config import RunConfig
from medclass.engine import load_checkpoint, train
from medclass.core.runs import RunError
from medclass.engine import checkpoint as checkpoint_module
from medclass.engine import fit as fit_module
from medclass.engine import run_folder as run_folder_module
from medclass.engine import trainer as trainer_module

from helpers import make_folder_dataset, tiny_config

#: epochs of a run: the kill aims at epoch 2, which leaves 4 more epochs (seconds) for the test to react in
EPOCHS = 6
#: 80 images: 40 train at batch 4 is 10 steps per epoch; 20 valid, 20 test
PER_CLASS = 40
STEPS_PER_EPOCH = 10
TRAIN_OPTIONS = [
    "--no-eval", "--epochs", str(EPOCHS), "--batch-size", "4", "--image-size", "32",
    "--set", "model.arch=custom_cnn", "--set", "model.cnn_widths=[16,32,64]",
    "--set", "data.val_fraction=0.25", "--set", "data.test_fraction=0.25",
    "--set", "train.log_interval=0.001",  # a progress line after every step (the kill's trigger; no effect on the numbers)
]
#: seconds any one subprocess run may take: a guard against a hang, not a timing (every wait ends as soon as
#: what it waits for happens), generous for a loaded machine where starting torch alone can take minutes
TIMEOUT = 600
#: (epoch, step) from whose progress line on the run is frozen and killed: after epoch 1's checkpoint, mid-epoch
KILL_AT = (2, 4)
#: runs tried for the kill before the test fails (each try that is caught too late is discarded)
KILL_TRIES = 3


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "medclass", "train", *args]


def start(args: list[str], log: Path) -> subprocess.Popen:
    """Start a training subprocess, its output to ``log`` (a pipe could fill and block it)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # MEDCLASS_CACHE_DIR: the test session's (conftest)
    return subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)


def finish(args: list[str], log: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT,
                          env=dict(os.environ))
    log.write_text(proc.stdout)
    return proc


def metric_rows(run: Path) -> list[dict[str, float]]:
    path = run / "metrics.csv"
    if not path.is_file():
        return []
    with open(path) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``condition`` every 20 ms while ``proc`` runs."""
    t0 = time.monotonic()
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"training ended (exit {proc.returncode}) before {what}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``, which must still be running, and check that the signal ended it."""
    assert proc.poll() is None, "training ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


PROGRESS_LINE = re.compile(r"train: epoch (\d+)/\d+ step (\d+)/\d+")


def progress(log: Path) -> tuple[int, int]:
    """The last ``(epoch, step)`` a training log reports (its per-step progress lines); (0, 0) before any."""
    found = PROGRESS_LINE.findall(log.read_text()) if log.is_file() else []
    return max(((int(e), int(s)) for e, s in found), default=(0, 0))


def checkpoint_epoch(run: Path) -> int:
    """The epoch of ``run``'s ``last.pt`` (0 when there is none)."""
    path = run / "checkpoints" / "last.pt"
    return int(load_checkpoint(path)["epoch"]) if path.is_file() else 0


def kill_mid_run(args: list[str], runs: Path, name: str, log_dir: Path) -> tuple[Path, tuple[int, int], int]:
    """Start ``python -m medclass train`` with ``args`` as run ``name`` under ``runs``; as soon as
    its log reports step :data:`KILL_AT` or later, freeze it (``SIGSTOP``), check that it stands
    after a checkpoint and before its end, and ``SIGKILL`` it there. A try caught too late (the
    run ended, wrote its last checkpoint or its summary before the test process could react) is
    killed and discarded, and a fresh run ``name-2``, ... is tried, :data:`KILL_TRIES` in all.

    Returns:
        The killed run's folder, the ``(epoch, step)`` its log last reported and the epoch of its ``last.pt``.
    Raises:
        AssertionError: no try could be killed mid-run (names what each reached), or a run failed.
    """
    late = []
    for attempt in range(1, KILL_TRIES + 1):
        run_name = name if attempt == 1 else f"{name}-{attempt}"
        run, log = runs / run_name, log_dir / f"{run_name}.log"
        proc = start(cli(*args, "--name", run_name, "--runs-dir", str(runs)), log)
        t0 = time.monotonic()
        while progress(log) < KILL_AT and proc.poll() is None and time.monotonic() - t0 < TIMEOUT:
            time.sleep(0.01)
        if proc.poll() is not None:  # ended before the test saw it reach epoch 2: starved, or failed
            assert proc.returncode == 0, log.read_text()
            late.append(f"try {attempt}: the run ended before the test saw step {KILL_AT} in its log")
            continue
        os.kill(proc.pid, signal.SIGSTOP)  # frozen: nothing below changes what the kill leaves behind
        at, saved = progress(log), checkpoint_epoch(run)
        if at < KILL_AT:  # neither reached nor ended: timed out
            proc.kill()
            raise AssertionError(f"timed out waiting for step {KILL_AT} of run {run_name}:\n{log.read_text()}")
        if 1 <= saved < EPOCHS and not (run / "train_summary.json").exists():
            kill(proc)
            return run, at, saved
        kill(proc)
        late.append(f"try {attempt}: frozen too late, at epoch {at[0]} step {at[1]} with last.pt of epoch {saved}")
    raise AssertionError(f"could not kill a run between its first checkpoint and its end in {KILL_TRIES} tries: the test "
                         f"process was starved for whole epochs ({'; '.join(late)}); nothing was resumed")


def stray_files(ck_dir: Path) -> list[str]:
    return sorted(p.name for p in ck_dir.iterdir() if p.name not in ("best.pt", "last.pt"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("faults") / "data", per_class=PER_CLASS)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(data, tmp_path):
    runs = tmp_path / "runs"
    t0 = time.monotonic()
    # the uninterrupted run goes alongside (each process computes the same numbers however loaded)
    straight = start(cli(str(data), "--name", "straight", "--runs-dir", str(runs), *TRAIN_OPTIONS),
                     tmp_path / "straight.log")

    # kill the second run part-way into epoch 2 (or later, on a loaded machine): epoch 1's checkpoint
    # and metrics row are written
    run, at, saved = kill_mid_run([str(data), *TRAIN_OPTIONS], runs, "killed", tmp_path)
    assert straight.wait(timeout=TIMEOUT) == 0, (tmp_path / "straight.log").read_text()
    t_straight = time.monotonic() - t0

    ck_dir = run / "checkpoints"
    last = load_checkpoint(ck_dir / "last.pt")  # whole, readable with weights_only=True
    best = load_checkpoint(ck_dir / "best.pt")
    killed_at = int(last["epoch"])
    assert killed_at == saved and 1 <= killed_at < EPOCHS, "the kill must fall after a checkpoint and before the run's end"
    # frozen in the epoch after that checkpoint, or right after the last step of the epoch it holds
    assert killed_at == at[0] - 1 or (killed_at == at[0] and at[1] == STEPS_PER_EPOCH), (at, killed_at)
    # best.pt is written just before last.pt: a kill between the two leaves it one epoch ahead
    assert best["epoch"] <= killed_at + 1 and len(last["history"]) == killed_at
    assert not (run / "train_summary.json").exists()  # written only when a run ends
    rows_at_kill = len(metric_rows(run))
    assert rows_at_kill in (killed_at, killed_at - 1)  # killed between last.pt and metrics.csv: one behind
    # only a kill inside save_checkpoint leaves a file beside the checkpoints: its temporary file
    leftovers = stray_files(ck_dir)
    assert all(n.startswith((".last.pt.", ".best.pt.")) and n.endswith(".tmp") for n in leftovers), leftovers
    # make sure the resume meets one (as a kill mid-save leaves it): half a checkpoint, never read
    (ck_dir / ".last.pt.k1ll3d.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")

    resumed = finish(cli("--name", run.name, "--runs-dir", str(runs), "--resume", "--no-eval"),
                     tmp_path / "resumed.log")
    assert resumed.returncode == 0, resumed.stdout
    assert "removed" in resumed.stdout and ".last.pt.k1ll3d.tmp" in resumed.stdout
    assert stray_files(ck_dir) == []

    a, b = metric_rows(runs / "straight"), metric_rows(run)
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == list(range(1, EPOCHS + 1))
    diffs = collections.defaultdict(float)
    for ra, rb in zip(a, b):
        for k in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            assert rb[k] == pytest.approx(ra[k], rel=1e-4, abs=1e-6), (ra["epoch"], k)
            diffs[k] = max(diffs[k], abs(ra[k] - rb[k]))
    sa = json.loads((runs / "straight" / "train_summary.json").read_text())
    sb = json.loads((run / "train_summary.json").read_text())
    for k in ("epochs_run", "best_epoch", "stopped_early"):
        assert sa[k] == sb[k], k
    assert sb["best_value"] == pytest.approx(sa["best_value"], rel=1e-4)
    wa, wb = load_checkpoint(runs / "straight" / "checkpoints" / "last.pt"), load_checkpoint(ck_dir / "last.pt")
    assert wa["epoch"] == wb["epoch"] == EPOCHS
    weight_diff = 0.0
    for k, v in wa["model"].items():
        assert torch.allclose(v.float(), wb["model"][k].float(), rtol=1e-4, atol=1e-5), k
        weight_diff = max(weight_diff, (v.float() - wb["model"][k].float()).abs().max().item())
    print(f"\nkilled {run.name} after its log reported epoch {at[0]} step {at[1]}/{STEPS_PER_EPOCH} "
          f"(last.pt at epoch {killed_at}, {rows_at_kill} metrics rows, leftovers {leftovers}); "
          f"max |difference| after resume: {dict(diffs)}, weights {weight_diff:.2e}; "
          f"uninterrupted run {t_straight:.1f} s, in all {time.monotonic() - t0:.1f} s")


def test_sigkill_before_the_first_checkpoint_restarts_cleanly(data, tmp_path):
    runs = tmp_path / "runs"
    run = runs / "early"
    args = cli(str(data), "--name", "early", "--runs-dir", str(runs), *TRAIN_OPTIONS,
               "--set", "train.max_steps_per_epoch=2")
    proc = start(args, tmp_path / "early.log")
    wait_for(lambda: (run / "config.yaml").is_file(), proc, "the run folder was set up")
    kill(proc)
    assert not (run / "checkpoints" / "last.pt").exists(), "killed too late for this test"

    # nothing to resume: a clear error, not a traceback (the CLI in this process)
    resumed = CliRunner().invoke(app, ["train", "--name", "early", "--runs-dir", str(runs), "--resume", "--no-eval"])
    assert resumed.exit_code == 2, resumed.output
    assert "error: cannot resume: no" in resumed.output and "without --resume" in resumed.output
    # the same command again starts over in the same folder
    again = CliRunner().invoke(app, args[3:] + ["--epochs", "2"])
    assert again.exit_code == 0, again.output
    assert [r["epoch"] for r in metric_rows(run)] == [1, 2]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2


# --------------------------------------------------------------------------- disk space


DiskUsage = collections.namedtuple("DiskUsage", "total used free")


def small_data(tmp_path):
    return make_folder_dataset(tmp_path / "data", per_class=8)


def small_config(data, **train):
    cfg = tiny_config(data, **train)
    cfg.model.arch, cfg.model.cnn_widths = "custom_cnn", [16, 32]
    return cfg


def test_too_little_disk_space_fails_before_decoding_or_training(tmp_path, monkeypatch):
    data = small_data(tmp_path)
    monkeypatch.setattr(run_folder_module.shutil, "disk_usage", lambda p: DiskUsage(10**12, 10**12, 2**20))

    def no_decoding(*a, **k):
        raise AssertionError("decoded images before checking the disk space")

    monkeypatch.setattr(fit_module, "decode_split", no_decoding)
    run = tmp_path / "runs" / "full"
    with pytest.raises(RunError) as info:
        train(small_config(data), run)
    message = str(info.value)
    assert "not enough free disk space" in message and "checkpoints" in message
    assert str(run / "checkpoints") in message and "1 MiB free" in message and "--runs-dir" in message
    needed = run_folder_module.checkpoint_bytes_needed(small_config(data), 2, 3)
    assert f"about {needed / 2**20:.0f} MiB needed" in message
    assert not (run / "metrics.csv").exists() and not (run / "checkpoints" / "last.pt").exists()

    # the CLI prints it as one error line with exit code 2
    result = CliRunner().invoke(app, ["train", str(data), "--name", "full2", "--runs-dir", str(tmp_path / "runs"),
                                      "--no-eval", "--image-size", "16"])
    assert result.exit_code == 2
    assert "error: not enough free disk space" in result.output and "Traceback" not in result.output


def test_checkpoint_space_estimate_covers_the_files_written(tmp_path):
    data = small_data(tmp_path)
    result = train(small_config(data, epochs=1), tmp_path / "run")
    written = result.files.best.stat().st_size + 2 * result.files.last.stat().st_size  # old + new last.pt
    needed = run_folder_module.checkpoint_bytes_needed(small_config(data), 2, 3)
    assert written < needed < 1.3 * written + run_folder_module.DISK_MARGIN_BYTES


def test_unwritable_decode_cache_fails_before_decoding(tmp_path):
    data = small_data(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = small_config(data)
    cfg.data.cache_dir = str(blocker / "cache")
    with pytest.raises(RunError, match="cannot write the decode cache in .*data.cache_dir"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.csv").exists()


def full_disk_on(monkeypatch, name: str, epoch: int) -> None:
    """Make the save of checkpoint ``name`` at ``epoch`` fail half-way with ENOSPC, as a full disk does."""
    real_save = checkpoint_module.torch.save
    real_checkpoint = trainer_module.save_checkpoint

    def half_then_enospc(obj, f):
        f.write(b"PK\x03\x04" + b"0" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def save(state, path):
        if Path(path).name == name and state["epoch"] == epoch:
            monkeypatch.setattr(checkpoint_module.torch, "save", half_then_enospc)
            try:
                return real_checkpoint(state, path)
            finally:
                monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
        return real_checkpoint(state, path)

    monkeypatch.setattr(trainer_module, "save_checkpoint", save)


def test_full_disk_while_saving_is_explained_and_the_previous_checkpoint_resumes(tmp_path, monkeypatch):
    data = small_data(tmp_path)
    run = tmp_path / "runs" / "disk"
    full_disk_on(monkeypatch, "last.pt", epoch=2)
    with pytest.raises(RunError) as info:
        train(small_config(data, epochs=3), run)
    message = str(info.value)
    last = run / "checkpoints" / "last.pt"
    assert f"cannot write {last}: no space left on device" in message
    assert "epoch 1) is intact" in message and "--resume" in message and "MiB free" in message
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert load_checkpoint(last)["epoch"] == 1  # whole and loadable
    assert stray_files(run / "checkpoints") == []  # the half-written temporary file is gone
    assert len(metric_rows(run)) == 1
    monkeypatch.undo()

    cfg = RunConfig.load(run / "config.yaml")
    cfg.train.progress = False
    resumed = train(cfg, run, resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]


def test_full_disk_at_the_first_checkpoint_says_to_start_again(tmp_path, monkeypatch):
    data = small_data(tmp_path)
    run = tmp_path / "runs" / "disk"
    full_disk_on(monkeypatch, "best.pt", epoch=1)
    with pytest.raises(RunError, match="best.pt: no space left on device.*no checkpoint was written yet"):
        train(small_config(data, epochs=2), run)
    assert stray_files(run / "checkpoints") == [] and not (run / "checkpoints" / "best.pt").exists()
    monkeypatch.undo()
    assert len(train(small_config(data, epochs=1), run).history) == 1  # the same folder starts over

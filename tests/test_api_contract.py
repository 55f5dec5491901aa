"""schemathesis against the live OpenAPI schema (issue 14): every check (``--checks all``: no
server error, documented status codes, content types, headers and response schemas, rejection of
schema-invalid requests, acceptance of valid ones, unsupported methods...), a bounded number of
examples per operation, against the service on loopback (uvicorn, the fake classifier of
``helpers.FakeClassifier``, the ``live`` fixture of conftest: the contract does not depend on the network). See
``tests/fixtures/schemathesis.toml`` for the one setting changed and why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("schemathesis")

CONFIG = Path(__file__).parent / "fixtures" / "schemathesis.toml"


@pytest.mark.slow
def test_schemathesis_all_checks_pass_on_the_live_schema(live, tmp_path):
    host, port, _ = live
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    assert exe, "the schemathesis command is not installed beside this Python"
    cmd = [exe, "--config-file", str(CONFIG), "run", f"http://{host}:{port}/openapi.json", "--checks", "all",
           "--max-examples", "10", "--seed", "14", "--no-color", "--request-timeout", "30"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "4/4" in proc.stdout  # every operation was tested

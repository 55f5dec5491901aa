"""Test-wide settings and fixtures.

- The decode cache goes to a temporary folder, never to ~/.cache.
- ``shared_data``: the folder of real data sets (``../shared/data``, or ``$MEDCLASS_SHARED_DATA``);
  ``chest_ct``: its chest CT set, skipping the test when it is missing.
- ``live``: :class:`helpers.FakeClassifier` served by uvicorn in a thread on loopback, with short
  header/body/keep-alive timeouts; yields ``(host, port, app)``.
- ``chromium``: the headless Chromium binary, skipping the test when there is none; every test that
  uses it (directly or through another fixture) is marked ``browser``.

Plain helpers (tiny data sets and configs, PNG and DICOM writers) are in ``tests/helpers.py``;
the markers ``slow``, ``integration`` and ``browser`` are described in ``pyproject.toml``.
"""

from pathlib import Path

import pytest

from helpers import SHARED_DATA, need


@pytest.fixture(autouse=True, scope="session")
def _decode_cache_in_tmp(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDCLASS_CACHE_DIR", str(tmp_path_factory.mktemp("decode-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real data sets: ``../shared/data`` beside the repository, or the folder named by
    ``$MEDCLASS_SHARED_DATA``. It may not exist: use ``helpers.need(shared_data / name)`` (or the
    ``chest_ct`` fixture) to skip when a set is missing. Read-only."""
    return SHARED_DATA


@pytest.fixture(scope="session")
def chest_ct(shared_data) -> Path:
    """``shared_data / "chest-ct"`` (train/valid/test, four classes); skips the test when missing."""
    return need(shared_data / "chest-ct")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a Chromium binary for headless rendering; skips the test when none is installed."""
    from browser import find_chromium

    path = find_chromium()
    if path is None:
        pytest.skip("chromium is not installed (Debian: apt-get install --no-install-recommends chromium; "
                    ".ci/run installs it); browser tests skipped")
    return path


def pytest_collection_modifyitems(config, items):
    """Mark every test that needs Chromium ``browser``, so ``-m "not browser"`` leaves them all out."""
    for item in items:
        if "chromium" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)


@pytest.fixture
def live():
    """The fake classifier served by uvicorn in a thread with short timeouts; yields (host, port, app)."""
    import socket
    import threading
    import time

    from medclass.serving.app import ServeOptions, create_app
    from medclass.serving.service import make_server

    from helpers import FakeClassifier

    options = ServeOptions(header_timeout_s=0.5, body_timeout_s=0.8, keep_alive_s=0.5)
    application = create_app(FakeClassifier(), options=options)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = make_server(application, "127.0.0.1", port, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline, "the server did not start"
        time.sleep(0.05)
    yield "127.0.0.1", port, application
    server.should_exit = True
    thread.join(timeout=10)

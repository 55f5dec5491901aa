"""Test-wide settings: the decode cache goes to a temporary folder, never to ~/.cache."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _decode_cache_in_tmp(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDCLASS_CACHE_DIR", str(tmp_path_factory.mktemp("decode-cache")))
    yield
    mp.undo()

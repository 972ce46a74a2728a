"""The /docs page, rendered by a real headless Chromium with no internet: endpoints listed."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.support import api_process


@pytest.fixture
def api_port(env, migrated, tmp_path):
    with api_process(env, tmp_path) as (port, _):
        yield port


def test_docs_page_lists_the_endpoints_in_a_real_browser(api_port, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium package is not installed (make test installs it as root)")
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            # Let Swagger UI fetch /openapi.json and render before the DOM is dumped.
            "--virtual-time-budget=15000",
            "--dump-dom",
            f"http://127.0.0.1:{api_port}/docs",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = result.stdout
    assert "swagger-ui" in dom, result.stderr[-2000:]
    for path in ("/api/accounts", "/api/accounts/{account_id}", "/auth/login", "/health"):
        assert f'data-path="{path}"' in dom, path

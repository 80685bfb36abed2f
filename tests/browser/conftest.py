"""The console in headless Chromium against a running node.

The browser is the system's Chromium (Debian package `chromium`, which `.ci/run` and
`make chromium` install), driven by Playwright with `executable_path`: Playwright's own browser
download is never used. Where Chromium or Playwright is missing the tests are skipped with the
reason; they never pass without a browser.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.node.conftest import start_node  # noqa: F401  (the fixture, shared)

ROOT = Path(__file__).resolve().parents[2]


def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which(
        "chromium-browser")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    path = chromium_path()
    if path is None:
        pytest.skip("chromium is not installed (Debian package chromium; .ci/run installs it)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (the test extra has it)")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=path,
            # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
            # Fake media UI: WebRTC needs no camera or permission prompt here.
            args=["--no-sandbox", "--use-fake-ui-for-media-stream",
                  "--autoplay-policy=no-user-gesture-required"],
        )
        try:
            yield chromium
        finally:
            await chromium.close()

"""Playwright on Debian's Chromium, and a way to put a person in a room."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pytest_playwright_asyncio.pytest_playwright import CreateContextCallback

from tests.browser.people import Enter, People
from tests.support import Server

CHROMIUM = "/usr/lib/chromium/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="session")
def browser_type_launch_args(pytestconfig: pytest.Config) -> dict[str, Any]:
    """Debian's Chromium: `playwright install` cannot download a browser here."""
    return {
        "executable_path": CHROMIUM,
        "args": CHROMIUM_ARGS,
        "headless": not pytestconfig.getoption("--headed"),
    }


@pytest.fixture(scope="session")
def base_url() -> str | None:
    """Replaces the plugin's fallback, a fixture method on a plugin object that pytest 9
    deprecates (a warning, which this project's filterwarnings turns into an error)."""
    return None


@pytest.fixture
async def people(new_context: CreateContextCallback, server: Server) -> AsyncIterator[People]:
    """Opens one browser context per person; checks their pages stayed clean."""
    crowd = People(new_context, server)
    yield crowd
    crowd.assert_clean()


@pytest.fixture
def enter(people: People) -> Enter:
    return people.enter

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from recorder.index import RecordIndex


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "recordings"
    path.mkdir()
    return path


@pytest.fixture
def index(root: Path) -> Iterator[RecordIndex]:
    with RecordIndex(root / "index.sqlite3") as opened:
        yield opened

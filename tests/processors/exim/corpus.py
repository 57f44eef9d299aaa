"""Where the shared Exim corpus is: ``TRACKDELIVERY_CORPUS`` or ``../shared/corpus`` beside the repository.

Under ``CI=true`` a missing corpus fails the test; elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def corpus_dir() -> Path:
    configured = os.environ.get("TRACKDELIVERY_CORPUS")
    path = Path(configured) if configured else REPO.parent / "shared" / "corpus"
    if not path.is_dir():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Exim corpus not found at {path}: CI must provide it (or set TRACKDELIVERY_CORPUS)")
        pytest.skip(f"Exim corpus not found at {path}; set TRACKDELIVERY_CORPUS to run this test")
    return path

from pathlib import Path

import pytest

from tests.producers.tail.tail_harness import Harness


@pytest.fixture
def harness_factory(tmp_path: Path):
    harnesses: list[Harness] = []

    def make(*patterns: str, **options: object) -> Harness:
        harness = Harness(tmp_path, list(patterns), **options)  # type: ignore[arg-type]
        harnesses.append(harness)
        return harness

    yield make
    for harness in harnesses:
        if harness.engine is not None:
            harness.engine.close()

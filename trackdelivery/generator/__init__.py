"""Deterministic fleet log generator: cPanel-style Exim main logs for many servers, with an answer key
(``truth.jsonl``) and a ``manifest.json``. Entry points: ``trackdelivery generate`` and ``FleetRun``."""

from trackdelivery.generator.runner import FleetRun, GenerateConfig

__all__ = ["FleetRun", "GenerateConfig"]

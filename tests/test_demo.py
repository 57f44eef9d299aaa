"""`make demo` as a newcomer runs it: in the background, until the page answers; the printed token
works on the API and the CLI; live data holds every event type; Ctrl-C leaves no process behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from trackdelivery.events import EventType

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGE_LINE = re.compile(r"page \(operator\):\s+(?P<url>http://\S+/)#token=(?P<token>\S+)")


def get(url: str, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def running(pids: list[int]) -> list[int]:
    """The pids that are still processes: not gone and not zombies (an exiting process has an empty command
    line for a moment, then stays a zombie until its new parent reaps it)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            alive.append(pid)
    return alive


def test_make_demo_serves_live_data_and_stops_cleanly(tmp_path: Path) -> None:
    dev_dir = tmp_path / "dev"
    out = tmp_path / "demo.out"
    env = {**os.environ, "TRACKDELIVERY_DEV_DIR": str(dev_dir)}
    started = time.monotonic()
    service_pids: list[int] = []
    with out.open("wb") as sink:
        demo = subprocess.Popen(["make", "demo"], cwd=REPO_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        match = None
        while match is None:
            assert demo.poll() is None, f"make demo exited {demo.returncode}:\n{out.read_text()[-3000:]}"
            assert time.monotonic() - started < 420, f"no page after 420 s:\n{out.read_text()[-3000:]}"
            match = PAGE_LINE.search(out.read_text(errors="replace"))
            time.sleep(1)
        url, token = match["url"], match["token"]
        state = json.loads((dev_dir / "state.json").read_text())
        service_pids = [node["pid"] for name in ("kafka", "redis") for node in state[name]["nodes"]]
        with urllib.request.urlopen(url, timeout=10) as page:
            assert b"<html" in page.read().lower()
        print(f"make demo: page up {time.monotonic() - started:.0f} s after the command")

        missing = {t.value for t in EventType}
        deadline = time.monotonic() + 480  # a loaded 2-core CI machine needs minutes to ship the whole history
        while missing and time.monotonic() < deadline:
            for event_type in sorted(missing):
                answer = get(f"{url}api/v1/deliveries?type={event_type}&limit=1", token)
                if answer["events"]:
                    missing.discard(event_type)
            time.sleep(2)
        assert not missing, f"no {sorted(missing)} events in the demo after 480 s"

        first = get(f"{url}api/v1/deliveries?limit=50", token)["events"]
        time.sleep(15)
        later = get(f"{url}api/v1/deliveries?limit=50", token)["events"]
        assert later[0]["event_id"] != first[0]["event_id"], "the demo's data is not live"
        assert "alerts" in get(f"{url}api/v1/alerts?state=all", token)

        cli = subprocess.run(
            [sys.executable, "-m", "trackdelivery", "search", "--type", "bounced", "--json"],
            env={**env, "TRACKDELIVERY_URL": url, "TRACKDELIVERY_TOKEN": token},
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout)["events"], cli.stdout[:500]
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        try:
            demo.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
            raise
    assert "stopped:" in out.read_text(errors="replace")
    deadline = time.monotonic() + 15
    while (processes_mentioning(str(dev_dir)) or running(service_pids)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_mentioning(str(dev_dir)) == []
    assert running(service_pids) == [], "Kafka or Redis still running"

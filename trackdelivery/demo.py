"""``make demo``: the whole pipeline on this machine, live.

Starts the local Kafka and Redis, writes a generated fleet of Exim logs that keeps growing (or uses a
real log given with ``--log``), runs one shipper per server, a stream-processor worker and the query
service and the alert worker, creates an operator and an account token, prints where to look, and stops every process it
started on Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import orjson

from trackdelivery.devenv.ports import free_port, port_open
from trackdelivery.devenv.services import DevServices, default_state_dir

COMMAND = [sys.executable, "-m", "trackdelivery"]
HISTORY_DAYS = 5


class Children:
    """The processes the demo started; all of them are stopped together."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [*COMMAND, *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
        )
        log.close()
        self.processes.append((name, process))
        return process

    def check(self) -> bool:
        """Raise when a child died; False otherwise, so it can sit in a wait condition."""
        for name, process in self.processes:
            if process.poll() is not None:
                raise click.ClickException(
                    f"{name} exited with {process.returncode}; see {self.log_dir / (name + '.log')}"
                )
        return False

    def stop(self) -> None:
        for _, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for _, process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run_json(args: Sequence[str], env: dict[str, str]) -> dict[str, object]:
    result = subprocess.run([*COMMAND, *args], capture_output=True, env=env, check=False, timeout=60)
    if result.returncode != 0:
        raise click.ClickException(f"trackdelivery {' '.join(args)} failed: {result.stderr.decode()[-500:]}")
    data: dict[str, object] = orjson.loads(result.stdout.strip().splitlines()[-1])
    return data


def first_cpanel_user(truth: Path) -> str | None:
    if not truth.exists():
        return None
    with truth.open("rb") as rows:
        for raw in rows:
            user = orjson.loads(raw).get("cpanel_user")
            if user:
                return str(user)
    return None


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise click.ClickException(f"timed out waiting for {what}")


@click.command()
@click.option("--log", "log_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Follow this real Exim main log instead of a generated fleet.")
@click.option("--server", default=socket.gethostname(), show_default=True, help="Server name for --log.")
@click.option("--servers", default=20, show_default=True, help="Generated fleet size.")
@click.option("--messages", default=3000, show_default=True, help="Messages in the generated history.")
@click.option("--rate", default=40, show_default=True, help="Lines per second of live traffic afterwards.")
@click.option("--port", default=8080, show_default=True, help="Port of the query service (0: any free).")
def main(log_path: Path | None, server: str, servers: int, messages: int, rate: int, port: int) -> None:
    """Run Kafka, Redis, shippers, a processor and the query service on this machine."""
    # `kill` stops the demo as cleanly as Ctrl-C; SIGINT too when a shell started it with SIGINT ignored (`&`)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    state_dir = default_state_dir()
    demo_dir = state_dir / "demo"
    (demo_dir / "logs").mkdir(parents=True, exist_ok=True)
    click.echo("starting Kafka and Redis …")
    services = DevServices(state_dir)
    kafka, redis_server = services.up(partitions=4)
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "REDIS_URL": redis_server.url}
    children = Children(demo_dir / "logs", env)
    try:
        port = port if port and not port_open("127.0.0.1", port) else free_port()
        shipped: list[tuple[str, Path]]
        if log_path is not None:
            shipped = [(server, log_path.resolve())]
            account_user = None
        else:
            fleet = demo_dir / "fleet"
            if fleet.exists():
                subprocess.run(["rm", "-rf", str(fleet)], check=True)
            # five days of history: a message expires after four days of deferrals (Exim's default retry
            # rules), so with less the page may show no `expired` event, depending on the hour it starts
            start = (datetime.now(UTC) - timedelta(days=HISTORY_DAYS)).replace(microsecond=0)
            click.echo(f"generating {servers} servers, {messages} messages, then {rate} lines/s live …")
            children.start("generate", [
                "generate", "--servers", str(servers), "--messages", str(messages), "--out", str(fleet),
                "--start", start.isoformat(), "--days", str(HISTORY_DAYS), "--follow", "--rate", str(rate),
                "--no-progress", "--incidents", "all",
            ])
            wait_until(lambda: (fleet / "manifest.json").exists() or children.check(), 600, "the generator")
            shipped = sorted((p.parent.name, p) for p in fleet.glob("*/exim_mainlog"))
            account_user = first_cpanel_user(fleet / "truth.jsonl")
        for name, path in shipped:
            children.start(f"ship-{name}", [
                "ship", "--server", name, "--path", str(path), "--start-position", "beginning",
                "--checkpoint-dir", str(demo_dir / "checkpoints" / name),
            ])
        children.start("process", [
            "process", "--metrics-port", str(free_port()), "--datadir", str(demo_dir / "processor"),
        ])
        children.start("alerts", [
            "alerts", "--metrics-port", str(free_port()), "--datadir", str(demo_dir / "alerts"),
        ])
        children.start("serve", ["serve", "--port", str(port)])
        wait_until(lambda: port_open("127.0.0.1", port) or children.check(), 120, "the query service")
        operator = run_json(["tokens", "create", "--operator", "--name", "demo operator", "--json"], env)
        account = None
        if account_user:
            account = run_json(["tokens", "create", "--user", account_user, "--name", "demo account", "--json"],
                               env)
        url = f"http://127.0.0.1:{port}/"
        click.echo("")
        click.secho("trackdelivery is running", bold=True)
        click.echo(f"  page (operator):   {url}#token={operator['token']}")
        if account is not None:
            click.echo(f"  page (account {account_user}): {url}#token={account['token']}")
        click.echo(f"  API docs:          {url}docs")
        click.echo(f"  Kafka {kafka.bootstrap}   Redis {redis_server.url}")
        click.echo(f"  logs of every process: {demo_dir / 'logs'}")
        click.echo("  from a shell:")
        click.echo(f"    export TRACKDELIVERY_URL={url} TRACKDELIVERY_TOKEN={operator['token']}")
        click.echo("    .venv/bin/trackdelivery search --type bounced --type expired")
        click.echo("    .venv/bin/trackdelivery search --domain gmail.com --max-results-by-type 20")
        click.echo("Ctrl-C stops everything.")
        while True:
            time.sleep(1)
            children.check()
    except KeyboardInterrupt:
        click.echo("\nstopping …")
    finally:
        children.stop()
        services.down()
        click.echo("stopped: generator, shippers, processor, alert worker, query service, Kafka, Redis")


if __name__ == "__main__":
    main()

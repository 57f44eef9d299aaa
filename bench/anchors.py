"""The programs the benches are measured against, fetched without installing them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def find_eximstats(cache: Path) -> list[str]:
    return find_exim_tool(cache, "eximstats")


def find_exigrep(cache: Path) -> list[str]:
    return find_exim_tool(cache, "exigrep")


def find_exim_tool(cache: Path, name: str) -> list[str]:
    """The command that runs one of Exim's Perl tools: from PATH, else unpacked from Debian's exim4-base
    package into ``cache`` (``apt-get download`` + ``dpkg-deb -x``: installing exim4-base would pull in an
    MTA)."""
    found = shutil.which(name)
    if found:
        return [found]
    unpacked = cache / "exim4-base" / "usr" / "sbin" / name
    if not unpacked.exists():
        download = cache / "exim4-base-deb"
        download.mkdir(parents=True, exist_ok=True)
        debs = sorted(download.glob("exim4-base_*.deb"))
        if not debs:
            print(f"{name} not on PATH: fetching Debian's exim4-base package (not installing it)", file=sys.stderr)
            subprocess.run(["apt-get", "download", "exim4-base"], cwd=download, check=True)
            debs = sorted(download.glob("exim4-base_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(cache / "exim4-base")], check=True)
    return ["perl", str(unpacked)]

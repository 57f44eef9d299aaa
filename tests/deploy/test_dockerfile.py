"""deploy/Dockerfile: pinned bases, non-root user, no remote ADD, pinned installs, real sources; and the
package data an image needs."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib

from tests.deploy._support import DEPLOY, PACKAGES, REPO_ROOT

DOCKERFILE = DEPLOY / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
    assert not pending, "dangling line continuation"
    return result


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, arguments in instructions():
        if keyword == "FROM":
            found.append([])
        assert found, "instruction before the first FROM"
        found[-1].append((keyword, arguments))
    return found


def test_base_images_are_pinned_python_311_slim() -> None:
    names: list[str] = []
    for stage in stages():
        words = stage[0][1].split()
        image = words[0]
        if image in names:
            continue  # FROM an earlier stage
        assert "@sha256:" in image or re.search(r":\d+(\.\d+)+", image), f"base image not pinned: {image}"
        assert not image.endswith(":latest")
        assert image.startswith("python:3.11") and "slim" in image, image
        if len(words) >= 3 and words[1].upper() == "AS":
            names.append(words[2])


def test_runs_as_a_numeric_non_root_user() -> None:
    users = [arguments for keyword, arguments in stages()[-1] if keyword == "USER"]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER {users[-1]}: Kubernetes' runAsNonRoot needs a numeric non-root id"


def test_no_remote_add() -> None:
    for keyword, arguments in instructions():
        if keyword == "ADD":
            assert not re.search(r"(https?|ftp|git)://|git@", arguments), f"ADD of a remote source: {arguments}"


def test_installs_the_pinned_dependencies() -> None:
    runs = " ".join(arguments for keyword, arguments in instructions() if keyword == "RUN")
    assert re.search(r"pip install [^&;]*-c constraints\.txt [^&;]*\.", runs), "the project must be installed with -c"


def test_entrypoint_is_the_trackdelivery_command() -> None:
    entrypoints = [arguments for keyword, arguments in stages()[-1] if keyword == "ENTRYPOINT"]
    assert entrypoints and json.loads(entrypoints[-1]) == ["trackdelivery"]


def test_copied_sources_exist() -> None:
    for keyword, arguments in instructions():
        if keyword != "COPY" or "--from=" in arguments:
            continue
        words = [word for word in arguments.split() if not word.startswith("--")]
        for source in words[:-1]:
            assert (REPO_ROOT / source).exists(), f"COPY {source}: no such path in the repository"
    copied = {word for keyword, arguments in instructions() if keyword == "COPY" for word in arguments.split()}
    for package in PACKAGES:
        assert package in copied, f"the image lacks the {package} package"


def test_build_context_ignores_local_state() -> None:
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for path in (".git", ".venv", ".dev", "**/__pycache__"):
        assert path in ignored


def test_package_data_ships_every_non_python_file() -> None:
    """A non-editable install (the image) must carry the page's static files and the typing marker."""
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    package_data: dict[str, list[str]] = config["tool"]["setuptools"]["package-data"]
    for package in PACKAGES:
        root = REPO_ROOT / package
        for path in root.rglob("*"):
            if path.is_dir() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            relative = path.relative_to(root).as_posix()
            patterns = package_data.get(package, [])
            assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), (
                f"{package}/{relative} would be missing from the installed package: add it to package-data"
            )

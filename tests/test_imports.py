"""The import rule (DEVELOPERS.md): pure modules never import Ray; the CLI imports neither Ray nor torch at start-up.

Each import runs in a fresh interpreter, so modules other tests imported do not hide a violation.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import REPO

PURE = [
    "raygenre.config",
    "raygenre.storage",
    "raygenre.workspace",
    "raygenre.redact",
    "raygenre.report",
    "raygenre.data.audio",
    "raygenre.data.decoder",
    "raygenre.data.mfcc",
    "raygenre.data.table",
    "raygenre.data.splits",
    "raygenre.data.gtzan",
    "raygenre.data.synth.recipes",
    "raygenre.data.synth.dsp",
    "raygenre.data.synth.compose",
    "raygenre.data.synth.dataset",
    "raygenre.data.synth.library",
    "raygenre.model.networks",
    "raygenre.model.artifact",
    "raygenre.label",
    "raygenre.label.scan",
    "raygenre.label.parts",
    "raygenre.label.predict",
    "raygenre.label.index",
    "raygenre.label.tagged",
    "raygenre.tag",
    "raygenre.tag.tags",
    "raygenre.tag.apply",
    "raygenre.tag.playlists",
]


def _loaded_after(module: str, watch: tuple[str, ...]) -> list[str]:
    """Which of ``watch`` are in ``sys.modules`` after a fresh interpreter imports ``module``."""
    code = (f"import sys, {module}; "
            f"print(','.join(m for m in {watch!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return [m for m in out.stdout.strip().split(",") if m]


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_never_import_ray(module: str) -> None:
    assert _loaded_after(module, ("ray",)) == []


def test_the_actor_watchdog_stays_light() -> None:
    """Its counter actor's worker imports this module: with torch behind it, each label run paid ~2 s more."""
    assert _loaded_after("raygenre.label.watchdog", ("torch", "ray.data", "raygenre.label.pipeline")) == []


def test_the_cli_imports_neither_ray_nor_torch() -> None:
    """`raygenre --help` stays fast: the CLI defers the library's imports to the command that runs."""
    assert _loaded_after("raygenre.cli", ("ray", "torch", "pyarrow")) == []


def test_only_the_cli_defers_imports_of_ray() -> None:
    """Ray modules import Ray at the top: no function-level ``import ray`` outside the CLI."""
    offenders = []
    for path in sorted((REPO / "raygenre").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel == "raygenre/cli.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.lstrip()
            optional = "optional package" in stripped  # optuna/hyperopt searchers: only when configured
            if line != stripped and not optional and re.match(r"(import|from) ray(\.|\s|$)", stripped):
                offenders.append(f"{rel}:{n}: {stripped}")
    assert not offenders, offenders

"""The recipes in the top-level ``configs/``: every file loads through ``--config``'s own loader and explains itself.

A recipe is ``configs/<command>-<what>.yaml``: the settings of one command (``--config`` takes one section's keys,
as ``raygenre/configs/<command>.yaml`` holds them), only the keys it changes, and a comment at the top saying when
to use it and the command that runs it. The packaged defaults stay in ``raygenre/configs/``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from raygenre.cli import app
from raygenre.config import SECTIONS, defaults, load_config, read_yaml

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "configs"
FILES = sorted(p for p in RECIPES.rglob("*") if p.is_file())


def section(path: Path) -> str:
    """The command a recipe is for: its name's first word (``train-tutorial.yaml`` -> ``train``)."""
    return path.name.split("-", 1)[0]


def header(path: Path) -> list[str]:
    """The comment lines at the top of a recipe, without their ``#``."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return lines


def unchanged_keys(recipe: Any, default: Any, where: str) -> list[str]:
    """Keys of ``recipe`` (nested mappings walked) whose value is already the packaged default's."""
    if isinstance(recipe, dict) and isinstance(default, dict):
        return [k for key, value in recipe.items() for k in unchanged_keys(value, default.get(key), f"{where}.{key}")]
    return [where] if recipe == default else []


def test_the_recipes_cover_the_documented_uses() -> None:
    names = {p.name for p in FILES}
    assert {"train-tutorial.yaml", "featurize-gtzan-filtered.yaml", "train-gtzan-filtered.yaml",
            "tune-gtzan-filtered.yaml", "tune-gpu-cluster.yaml", "label-large-library.yaml"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_recipe_loads_through_the_config_loader(path: Path) -> None:
    """What ``raygenre <command> --config configs/X.yaml`` does first: a recipe that stops loading fails here."""
    assert path.suffix == ".yaml", f"{path.name}: configs/ holds YAML recipes only"
    assert section(path) in SECTIONS, f"{path.name}: name it <command>-<what>.yaml, command one of {sorted(SECTIONS)}"
    load_config(SECTIONS[section(path)], path)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_recipe_holds_only_the_keys_it_changes(path: Path) -> None:
    data = read_yaml(path)
    assert data, f"{path.name}: a recipe with no settings"
    same = unchanged_keys(data, defaults(section(path)), section(path))
    assert not same, f"{path.name}: {same} repeat the packaged default; a recipe lists only what it changes"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_recipe_says_when_to_use_it_and_the_command_that_runs_it(path: Path) -> None:
    lines = header(path)
    assert lines and lines[0].startswith("Use it "), f"{path.name}: start with a comment '# Use it ...'"
    commands = [ln for ln in lines if f"--config configs/{path.name}" in ln]
    assert len(commands) == 1, f"{path.name}: the comment shows one command with --config configs/{path.name}"
    argv = shlex.split(commands[0].split(" -- ", 1)[-1])
    assert argv[:2] == ["raygenre", section(path)], f"{path.name}: the command runs `raygenre {section(path)}`"
    sub = typer.main.get_command(app).commands[argv[1]]  # type: ignore[attr-defined]
    known = {o for p in sub.params for o in (*p.opts, *p.secondary_opts)}
    unknown = [a for a in argv[2:] if a.startswith("-") and a not in known]
    assert not unknown, f"{path.name}: `raygenre {argv[1]}` has no option {unknown}"


def test_readme_quick_start_shows_a_recipe_that_exists() -> None:
    text = (REPO / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    used = re.findall(r"--config (configs/\S+\.yaml)", quick)
    assert used, "README's Quick start shows no --config configs/... recipe"
    assert all((REPO / u).is_file() for u in used), used


def test_the_filtered_split_recipe_points_at_the_split_lists() -> None:
    """Its lists_dir is relative to the repo root, where the commands run; the shared folder holds the lists."""
    cfg = load_config(SECTIONS["featurize"], RECIPES / "featurize-gtzan-filtered.yaml")
    assert cfg.split.method == "lists"
    folder = REPO / cfg.split.lists_dir
    if not folder.is_dir():
        pytest.skip(f"{folder} (the shared folder's GTZAN split lists) is not here")
    counts = {n: len((folder / n).read_text().split()) for n in
              ("train_filtered.txt", "valid_filtered.txt", "test_filtered.txt")}
    assert counts == {"train_filtered.txt": 443, "valid_filtered.txt": 197, "test_filtered.txt": 290}, counts

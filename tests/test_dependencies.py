"""Every third-party package the appliance imports is declared in pyproject.toml, so that a
clean install (the container image, CI's fresh venv) has it and not by luck of a transitive."""

from __future__ import annotations

import ast
import fnmatch
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {re.split(r"[<>=!~\[ ;]", spec)[0].lower().replace("_", "-")
            for spec in project["dependencies"]}


def _imported_top_levels() -> dict[str, str]:
    found: dict[str, str] = {}
    for path in sorted((REPO / "appliance").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "appliance":
                    found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_every_imported_package_is_declared() -> None:
    declared, distributions = _declared(), packages_distributions()
    undeclared = [f"{top} ({where})" for top, where in _imported_top_levels().items()
                  if not {d.lower().replace("_", "-") for d in distributions.get(top, [top])}
                  & declared]
    assert undeclared == []


def test_the_shipped_package_holds_no_test_harness() -> None:
    """The servers the tests start (mosquitto fixtures, an initdb cluster) live in testkit/,
    which the package build leaves out; nothing the appliance ships imports them."""
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert not any(fnmatch.fnmatch("testkit", pattern) for pattern in find["include"])
    for path in sorted((REPO / "appliance").rglob("*.py")):
        text = path.read_text()
        assert "initdb" not in text and "testkit" not in text and "import pytest" not in text, path

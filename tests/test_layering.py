"""Dependencies point one way (DESIGN.md §6), checked on the imports of every module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "modeltrail"


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules_under(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        (
            "core/events",
            ("modeltrail.core.projections", "modeltrail.producers", "modeltrail.consumers"),
        ),
        (
            "core",
            (
                "modeltrail.producers",
                "modeltrail.consumers",
                "modeltrail.registry",
                "modeltrail.cli",
            ),
        ),
        ("core", ("torch", "numpy")),
        ("producers", ("modeltrail.consumers", "modeltrail.cli")),
        ("consumers", ("modeltrail.producers", "torch")),
    ],
)
def test_dependencies_point_one_way(folder: str, forbidden: tuple[str, ...]) -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in modules_under(folder)
        for name in imports_of(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]
    assert offenders == []


# The demo trains a small CNN; the `demo` command imports it only when it runs.
TORCH_USERS = {"producers/torch.py", "demo.py"}


def test_only_the_torch_integration_and_the_demo_import_torch() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if str(path.relative_to(PACKAGE)) not in TORCH_USERS
        and any(n.split(".")[0] == "torch" for n in imports_of(path))
    ]
    assert offenders == []


def test_importing_the_package_loads_neither_torch_nor_sqlalchemy() -> None:
    code = (
        "import sys, modeltrail, modeltrail.cli; "
        "print(sorted(m for m in ('torch', 'sqlalchemy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"

"""The design card's layering (SPEC.md, Repository layout), checked on the source.

Dependencies point one way, ``config`` <- mirror core <- ``receiver``, ``sync`` <- command line,
and a package reaches another only through the names that package declares in ``__all__``:
never one of its modules by name. The fake HealthDock imports nothing of ours.
"""

from __future__ import annotations

import ast
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# What each package may import of the others.
ALLOWED = {
    "config": set(),
    "mirror": {"config"},
    "fhir_r4": {"config", "mirror"},
    "receiver": {"config", "mirror", "fhir_r4"},
    "sync": {"config", "mirror"},
    "publisher": {"config", "mirror"},
    "healthdock_mirror": {
        "config",
        "mirror",
        "receiver",
        "sync",
        "publisher",
        "fhir_r4",
        "fake_healthdock",
    },
    "fake_healthdock": set(),
}


def _imports(package: str, root: pathlib.Path = ROOT) -> list[tuple[str, int, str, list[str]]]:
    """(file, line, imported module, names) of every import of another of our packages,
    wherever it is written (inside functions too)."""
    found = []
    for path in sorted((root / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                module, names = node.module, [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    found.append((path.name, node.lineno, alias.name, []))
                continue
            else:
                continue
            found.append((path.name, node.lineno, module, names))
    return [
        (file, line, module, names)
        for file, line, module, names in found
        if module.split(".")[0] in ALLOWED and module.split(".")[0] != package
    ]


def _backward(package: str, root: pathlib.Path = ROOT) -> list[str]:
    return [
        f"{file}:{line} imports {module}"
        for file, line, module, _ in _imports(package, root)
        if module.split(".")[0] not in ALLOWED[package]
    ]


def _past_the_surface(package: str, root: pathlib.Path = ROOT) -> list[str]:
    offenders = []
    for file, line, module, names in _imports(package, root):
        if "." in module or not names:
            offenders.append(f"{file}:{line} imports the module {module}")
            continue
        surface = importlib.import_module(module).__all__
        offenders += [f"{file}:{line} imports {module}.{name}" for name in names
                      if name not in surface]  # fmt: skip
    return offenders


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_dependencies_point_one_way(package: str) -> None:
    assert _backward(package) == []


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_other_packages_are_reached_only_through_their_surface(package: str) -> None:
    assert _past_the_surface(package) == []


def test_the_checks_find_what_they_forbid(tmp_path: pathlib.Path) -> None:
    (tmp_path / "receiver").mkdir()
    (tmp_path / "receiver" / "bad.py").write_text(
        "import sync\n"
        "from mirror import leases, schema\n"
        "def read():\n"
        "    from mirror.schema import sync_runs\n"
    )
    assert _backward("receiver", tmp_path) == ["bad.py:1 imports sync"]
    assert _past_the_surface("receiver", tmp_path) == [
        "bad.py:1 imports the module sync",
        "bad.py:2 imports mirror.schema",
        "bad.py:4 imports the module mirror.schema",
    ]


def test_config_surface() -> None:
    import config

    assert sorted(config.__all__) == [
        "ApiAuth", "ConfigurationError", "DEFAULT_TIMEZONE", "LogOptions", "MirrorError",
        "OAUTH_CALLBACK_PATH", "Settings", "SettingsError", "configure_logging", "load_settings",
        "settle_after_startup",
    ]  # fmt: skip

"""The code's structure, as docs/development.md describes it: the layers (import-linter's contracts in
pyproject.toml, function-local imports included), the packages the wheel ships, and ruff's lint and format."""

from __future__ import annotations

import subprocess
import sys

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

from tests.conftest import REPO


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), cwd=REPO, capture_output=True, text=True, timeout=300)


def test_each_layer_imports_only_the_layers_below_it():
    pytest.importorskip("importlinter", reason="import-linter is in the dev extra (pip install -e '.[dev]')")
    result = _run(
        sys.executable,
        "-c",
        "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
        "--no-cache",
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_no_module_imports_itself_through_others():
    """No import cycle between cxr's modules, function-local imports included (grimp, import-linter's graph): the
    layers contract allows cycles inside a layer, this does not."""
    grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter (pip install -e '.[dev]')")
    graph = grimp.build_graph("cxr", include_external_packages=False)
    edges = {module: sorted(graph.find_modules_directly_imported_by(module)) for module in graph.modules}
    cycles, state = [], {}  # state: 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for imported in edges.get(module, []):
            if state.get(imported) == 1:
                cycles.append(" -> ".join(path[path.index(imported) :] + [module, imported]))
            elif imported not in state:
                visit(imported, path + [module])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_wheel_lists_every_package_and_ships_conf_as_cxr_conf():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {
        ".".join(init.parent.relative_to(REPO).parts)
        for top in ("cxr", "hydra_plugins")
        for init in (REPO / top).rglob("__init__.py")
    }
    assert packages - set(setuptools["packages"]) == set(), "add these packages to [tool.setuptools] packages"
    assert setuptools["package-dir"] == {"cxr.conf": "conf"} and (REPO / "conf" / "train.yaml").is_file()
    assert not (REPO / "cxr" / "conf").exists()


@pytest.mark.parametrize("command", [("check",), ("format", "--check")], ids=["lint", "format"])
def test_ruff(command):
    pytest.importorskip("ruff", reason="ruff is in the dev extra (pip install -e '.[dev]')")
    result = _run(sys.executable, "-m", "ruff", *command, ".")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]

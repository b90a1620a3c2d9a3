"""Packaging and module structure: one namespace, no import cycles."""

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> the package it is installed as (pyproject's package-dir).
PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
PACKAGES = {
    "relax_rl": "relax_rl",
    "agents": "relax_rl.agents",
    "envs": "relax_rl.envs",
    "configs": "relax_rl.configs",
}


def test_wheel_installs_only_the_relax_rl_namespace(tmp_path):
    src = tmp_path / "src"  # a copy: building writes build/ beside the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in PACKAGES:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [*PIP_WHEEL, "-w", str(tmp_path), str(src)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("relax_rl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"relax_rl"}
    assert "relax_rl/agents/relax.py" in names and "relax_rl/envs/factory.py" in names
    # the YAML hyperparameters ship with the package: an installed relax-rl reads them
    assert {f"relax_rl/configs/{a}.yaml" for a in ("a2c", "reinforce", "relax")} <= set(names)
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    code = (
        "from relax_rl.config import CONFIG_DIR as d; "
        "print(d, sorted(p.name for p in d.glob('*.yaml')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
    )
    folder, found = result.stdout.strip().split(" ", 1)
    assert Path(folder).is_relative_to(site), result.stderr
    shipped = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    assert found == str(shipped) and "rloo.yaml" in shipped


@pytest.mark.parametrize(
    ("code", "ok"),
    [
        ("import relax_rl.agents, relax_rl.envs", True),
        ("import agents", False),
        ("import envs", False),
    ],
)
def test_only_the_namespace_imports_from_another_folder(tmp_path, code, ok):
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True)
    assert (result.returncode == 0) == ok, result.stderr


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def _imports(tree: ast.Module, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """Modules of the project imported at module level (not under ``if TYPE_CHECKING``, not
    inside functions: those run later and cannot form a cycle at import time)."""
    found: set[str] = set()
    base = name if is_package else name.rpartition(".")[0]
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                pkg = base
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                mod = f"{pkg}.{mod}" if mod else pkg
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}
    return {m for m in found if m in modules and m != name}


def test_no_import_cycles():
    modules = _modules()
    graph = {
        name: _imports(ast.parse(path.read_text()), name, path.name == "__init__.py", set(modules))
        for name, path in modules.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def _setup_commands(tmp_path, path_dirs=(), **make_vars):
    """The commands ``make setup`` would run (make -n, forced), with ``path_dirs`` first on
    PATH and the given make variables."""
    import os
    import subprocess

    env = {**os.environ, "PATH": os.pathsep.join([*map(str, path_dirs), os.environ["PATH"]])}
    args = [
        "make",
        "-n",
        "-B",
        "-C",
        str(ROOT),
        "setup",
        *(f"{k}={v}" for k, v in make_vars.items()),
    ]
    return subprocess.run(args, env=env, capture_output=True, text=True, check=False)


def test_setup_installs_the_cpu_torch_without_a_gpu_and_cuda_with_one(tmp_path):
    cpu = _setup_commands(tmp_path).stdout  # (this machine has no nvidia-smi)
    assert "--index-url https://download.pytorch.org/whl/cpu" in cpu and "torch==2.13.0" in cpu
    assert "cannot be reached: torch from pip's own index" in cpu  # the fallback is there
    # the project through uv after torch (uv keeps the installed torch), pip if uv fails
    assert cpu.index("torch==2.13.0") < cpu.index(
        'uv pip install --quiet --python .venv/bin/python -e ".[dev]"'
    )
    assert (
        'uv could not install the project: pip does"; .venv/bin/pip install --quiet -e ".[dev]"'
        in cpu
    )
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (fake / "nvidia-smi").chmod(0o755)
    gpu = _setup_commands(tmp_path, [fake]).stdout
    assert "torch==2.13.0" in gpu and "download.pytorch.org" not in gpu
    forced = _setup_commands(tmp_path, [fake], TORCH="cpu").stdout
    assert "--index-url https://download.pytorch.org/whl/cpu" in forced
    assert "download.pytorch.org" not in _setup_commands(tmp_path, TORCH="cuda").stdout
    assert "give TORCH=cpu or TORCH=cuda" in _setup_commands(tmp_path, TORCH="rocm").stdout

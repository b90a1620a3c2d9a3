"""The README's Python examples run as written (in a scratch folder)."""

import re
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    if "wandb" in sys.modules:  # its settings keep the folder of the process's first run
        sys.modules["wandb"].teardown()
    exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})


COMMANDS = [
    line.split("#")[0].split()[1:]
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    for line in block.replace("\\\n", " ").splitlines()  # (continued lines joined)
    if line.startswith(".venv/bin/relax-rl ")
    and not re.search(r"[\[\]{}]|\.\.\.|\b[A-Z_]{3,}\b", line.split("#")[0])  # a synopsis
]


def test_the_readme_has_complete_commands():
    assert len(COMMANDS) >= 3


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c[:3]) for c in COMMANDS])
def test_readme_commands_parse(argv):
    """Every complete `relax-rl` command of the README is one the CLI takes (its flags exist);
    synopses with placeholders are left out."""
    from relax_rl.cli import build_parser

    build_parser().parse_args(argv)

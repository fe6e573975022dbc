"""Everything the README shows as Python is executed here."""

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
COMMANDS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def test_readme_has_the_two_setup_commands_and_ci_runs_the_test_one():
    assert len(COMMANDS) == 2
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    test_command = COMMANDS[1].strip().replace("OMP_NUM_THREADS=1 ", "")
    install, run = test_command.rsplit(" && ", 1)
    assert install.replace("pip install ", "pip install -q ") in ci and run in ci


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks may write run folders
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {})

"""README.md's commands are the ones CI and users run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = 'pip install -e ".[dev]" && python -m pytest'
    assert f"\n{command}\n" in readme
    assert re.search(rf"^{re.escape(command)}$", ci, re.MULTILINE)


def test_readme_quick_start_trains_the_default_model():
    readme = (ROOT / "README.md").read_text()
    assert "pip install -e . && python train.py model=conv latent_dim=16" in readme

"""The benchmark scripts run: the GPU check's dry run on the CPU prints its table."""

import subprocess
import sys

import pytest
from conftest import ROOT, _offline_env, write_random_idx

SECTIONS = ("step", "train", "eval", "data", "ddp", "exemplar")


@pytest.mark.slow
def test_the_device_check_dry_run_prints_every_row_of_its_table(tmp_path):
    # Random IDX files stand in for Fashion-MNIST: 1,600 training images, so that a row's
    # steps fill more than one call of Lightning's loop (16 steps a call), as it times.
    write_random_idx(tmp_path / "FashionMNIST" / "raw", n_train=1600)
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--dry-run",
         "--data-dir", str(tmp_path), "--exemplar-s", "20"],
        cwd=tmp_path, env=_offline_env({"PYTHON": sys.executable}),
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout[result.stdout.index("| section | measure | figure |") :]
    rows = [line.split(" | ") for line in table.splitlines()[2:]]
    assert [row[0].strip("| ") for row in rows] == [
        *["step"] * 4, *["train"] * 2, "eval", "data", "data", "ddp", "exemplar"
    ]  # fmt: skip
    figures = {row[1]: row[2].strip(" |") for row in rows}
    for measure, figure in figures.items():  # a number, not "failed ..."
        assert figure[0].isdigit(), (measure, figure)
    assert "2 epochs" in figures["experiment=exemplar/vae_gaussian, 20 s"]
    assert "Device: CPU (dry run)" in result.stdout

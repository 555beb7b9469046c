"""trainer.compile=true through the CLI: the same figures as eager, or one line and eager."""

import pytest
from conftest import tiny

from vaelab.runs import find_runs

# Anomaly detection off: it is a debugging mode that compiled graphs do not keep.
RUN = tiny("trainer.detect_anomaly=false", "callbacks.pictures.every_n_epochs=100")


def _metrics(result) -> dict[str, float]:
    (run,) = find_runs(result.run_dirs)
    return {k: v for k, v in run.metrics().items() if isinstance(v, float)}


@pytest.mark.slow
def test_a_compiled_run_has_the_figures_of_an_eager_run(train_cli):
    eager = _metrics(train_cli(*RUN))
    compiled_run = train_cli(*RUN, "trainer.compile=true")
    assert "runs eager" not in compiled_run.output
    compiled = _metrics(compiled_run)
    assert compiled.keys() == eager.keys() and "test/elbo" in eager
    for key, value in eager.items():
        assert compiled[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


@pytest.mark.slow
def test_compile_without_a_compiler_says_so_in_one_line_and_runs_eager(train_cli):
    result = train_cli(*RUN, "trainer.compile=true", env={"CXX": "/nonexistent/g++"})
    lines = [line for line in result.output.splitlines() if "trainer.compile=true" in line]
    assert len(lines) == 1 and "no C++ compiler (/nonexistent/g++)" in lines[0], lines
    assert "Traceback" not in result.output
    assert _metrics(result)["test/elbo"] < 0

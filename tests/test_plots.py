import math

import matplotlib
import numpy as np
import pytest
import torch
from figures import (
    drawn,
    inside_figure,
    legend_texts,
    overlapping,
    significant_digits,
    x_tick_labels,
)
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from PIL import Image
from torch.distributions import Normal

from vaelab import plots
from vaelab.plots import PAD_VALUE, PADDING
from vaelab.report import charts


def tile(grid: torch.Tensor, row: int, col: int, h: int, w: int) -> torch.Tensor:
    """The (3, h, w) pixel block of tile (row, col) in a make_grid grid."""
    top, left = PADDING + row * (h + PADDING), PADDING + col * (w + PADDING)
    return grid[:, top : top + h, left : left + w]


def test_reconstruction_grid_interleaves_input_and_reconstruction_rows():
    torch.manual_seed(0)
    x, x_rec = torch.rand(16, 1, 28, 28), torch.rand(16, 1, 28, 28)
    grid = plots.reconstruction_grid(x, x_rec, nrow=8)
    # 32 tiles in 4 rows of 8, each tile 28 px plus padding, plus one outer padding.
    assert grid.shape == (3, 4 * (28 + PADDING) + PADDING, 8 * (28 + PADDING) + PADDING)
    for i in range(16):
        block_row, col = divmod(i, 8)
        assert torch.equal(tile(grid, 2 * block_row, col, 28, 28), x[i].expand(3, -1, -1))
        assert torch.equal(tile(grid, 2 * block_row + 1, col, 28, 28), x_rec[i].expand(3, -1, -1))


def test_reconstruction_grid_fills_partial_row_with_blank_tiles():
    x = torch.zeros(5, 1, 4, 4)
    grid = plots.reconstruction_grid(x, torch.ones(5, 1, 4, 4), nrow=4)
    assert grid.shape == (3, 4 * (4 + PADDING) + PADDING, 4 * (4 + PADDING) + PADDING)
    assert torch.all(tile(grid, 3, 0, 4, 4) == 1)  # reconstruction of input 4 under it
    assert torch.all(tile(grid, 3, 1, 4, 4) == PAD_VALUE)


def test_reconstruction_grid_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ"):
        plots.reconstruction_grid(torch.rand(4, 1, 8, 8), torch.rand(3, 1, 8, 8))


def test_image_grid_clamps_and_tiles():
    images = torch.full((6, 1, 5, 5), 2.0)
    grid = plots.image_grid(images, nrow=3)
    assert grid.shape == (3, 2 * (5 + PADDING) + PADDING, 3 * (5 + PADDING) + PADDING)
    assert grid.max() == 1.0


def test_interpolation_latents_endpoints_midpoint_and_order():
    torch.manual_seed(0)
    z0, z1 = torch.randn(3, 4), torch.randn(3, 4)
    z = plots.interpolation_latents(z0, z1, steps=5)
    assert z.shape == (15, 4)
    rows = z.view(3, 5, 4)  # one pair per row of the grid with nrow=steps
    assert torch.equal(rows[:, 0], z0)
    assert torch.equal(rows[:, -1], z1)
    torch.testing.assert_close(rows[:, 2], (z0 + z1) / 2)


def test_traversal_latents_changes_only_the_chosen_dim():
    z_ref = torch.arange(6.0)
    values = torch.tensor([-2.0, 0.5, 3.0])
    dims = [4, 1]
    z = plots.traversal_latents(z_ref, dims, values)
    assert z.shape == (6, 6)
    for row, dim in enumerate(dims):
        block = z[row * 3 : (row + 1) * 3]
        assert torch.equal(block[:, dim], values)
        others = [d for d in range(6) if d != dim]
        assert torch.equal(block[:, others], z_ref[others].expand(3, -1))
    assert torch.equal(z_ref, torch.arange(6.0))  # input untouched


def test_most_informative_dims():
    kl = torch.tensor([0.01, 3.0, 0.0, 7.5, 1.2])
    assert plots.most_informative_dims(kl, 3) == [3, 1, 4]
    per_example = torch.stack([kl, kl + 1.0])  # (B, D) is averaged over B
    assert plots.most_informative_dims(per_example, 2) == [3, 1]
    assert plots.most_informative_dims(kl, 10) == [3, 1, 4, 0, 2]


def test_manifold_latents_grid_ordering():
    n, q = 7, 0.05
    z = plots.manifold_latents(n, quantile=q)
    assert z.shape == (n * n, 2)
    rows = z.view(n, n, 2)  # grid rows from the top, as image_grid(nrow=n) lays them out
    lo = Normal(0.0, 1.0).icdf(torch.tensor(q)).item()
    assert z[0, 0].item() == pytest.approx(lo, abs=1e-6)  # top-left: smallest z1 ...
    assert z[0, 1].item() == pytest.approx(-lo, abs=1e-6)  # ... and largest z2
    assert torch.all(rows[:, 1:, 0] > rows[:, :-1, 0])  # z1 increases left → right
    assert torch.all(rows[:-1, :, 1] > rows[1:, :, 1])  # z2 increases bottom → top
    assert torch.all(rows[:, :, 0] == rows[0, :, 0])  # columns share z1
    assert torch.all(rows[:, :, 1] == rows[:, :1, 1])  # rows share z2
    torch.testing.assert_close(rows[0, :, 0], -rows[0, :, 0].flip(0))  # symmetric about 0
    torch.testing.assert_close(z.mean(0), torch.zeros(2), atol=1e-6, rtol=0)


def test_project_2d_identity_and_padding():
    z = torch.randn(10, 2)
    assert torch.equal(plots.project_2d(z), z)
    z1 = torch.randn(10, 1)
    assert torch.equal(plots.project_2d(z1), torch.cat([z1, torch.zeros(10, 1)], dim=1))


def test_project_2d_recovers_a_plane_deterministically():
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(5, 2)).Q.T  # (2, 5) orthonormal rows
    coords = torch.randn(200, 2) * torch.tensor([3.0, 1.0])
    z = coords @ basis + torch.randn(5)  # a plane in R^5, off the origin
    scores = plots.project_2d(z)
    assert scores.shape == (200, 2)
    # The scores are an orthonormal-basis representation of the centred data: lossless.
    centred = z - z.mean(0)
    components = torch.linalg.lstsq(scores, centred).solution
    torch.testing.assert_close(scores @ components, centred, atol=1e-4, rtol=0)
    torch.testing.assert_close(components @ components.T, torch.eye(2), atol=1e-4, rtol=0)
    assert scores[:, 0].var() > scores[:, 1].var()  # PC1 carries the most variance
    assert torch.equal(plots.project_2d(z), scores)
    # The sign convention does not depend on the data's orientation along a component.
    torch.testing.assert_close(plots.project_2d(-z), -scores, atol=1e-4, rtol=0)


def scatter_points(fig: Figure) -> PathCollection:
    assert len(fig.axes) == 1
    (collection,) = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    return collection


def test_latent_scatter_points_and_label_colours():
    torch.manual_seed(0)
    labels = torch.arange(50) % 10
    fig = plots.latent_scatter(torch.randn(50, 2), labels, title="epoch 3")
    assert isinstance(fig, Figure)
    points = scatter_points(fig)
    assert points.get_offsets().shape == (50, 2)
    colours = points.to_rgba(points.get_array())[:, :3]
    assert len(np.unique(colours, axis=0)) == 10
    tab10 = matplotlib.colormaps["tab10"]
    for label in range(10):
        assert np.allclose(colours[labels.numpy() == label], tab10(label)[:3])
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("z1", "z2", "epoch 3")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(legend) == 10 and "0" in legend[0] and "9" in legend[-1]


def test_latent_scatter_projects_high_dimensional_codes():
    fig = plots.latent_scatter(torch.randn(30, 8), torch.randint(0, 10, (30,)))
    assert scatter_points(fig).get_offsets().shape == (30, 2)
    assert (fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()) == ("PC1", "PC2")


def test_save_png_writes_grid_and_figure(tmp_path):
    grid = plots.image_grid(torch.rand(4, 1, 28, 28), nrow=2)
    path = plots.save_png(grid, tmp_path / "a" / "grid.png")
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert (image.format, image.mode) == ("PNG", "RGB")
        assert image.size == (grid.shape[2], grid.shape[1])  # PIL sizes are (width, height)

    fig = plots.latent_scatter(torch.randn(20, 2), torch.arange(20) % 10)
    path = plots.save_png(fig, tmp_path / "b" / "scatter.png")
    width, height = (fig.get_size_inches() * 120).round().astype(int)
    with Image.open(path) as image:
        assert (image.format, image.size) == ("PNG", (width, height))


def test_metric_vs_param_one_errorbar_series_per_label_on_a_log_axis():
    series = {
        "beta=1": [(16, 95.0, 0.5), (2, 100.0, 1.0), (64, 93.0, math.nan)],
        "beta=4": [(2, 110.0, 0.2), (16, 104.0, 0.3)],
    }
    fig = charts.metric_vs_param(series, param="latent_dim", metric="test/nll_iwae", title="t")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.containers) == 2
    x, y = ax.containers[0].lines[0].get_data()
    assert list(x) == [2, 16, 64] and list(y) == [100.0, 95.0, 93.0]  # sorted by x
    # One error bar per finite std: the NaN std of latent_dim=64 draws none.
    (bars,) = ax.containers[0].lines[2]
    assert [tuple(seg[:, 1]) for seg in bars.get_segments() if len(seg)] == [
        (99.0, 101.0),
        (94.5, 95.5),
    ]
    assert ax.get_xscale() == "log"  # 2 to 64: positive and more than 10x
    assert list(ax.get_xticks()) == [2, 16, 64]
    assert legend_texts(fig) == ["beta=1", "beta=4"]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == (
        "latent_dim",
        "test/nll_iwae",
        "t",
    )


@pytest.mark.parametrize(
    ("xs", "scale"), [((1.0, 9.0), "linear"), ((0.0, 100.0), "linear"), ((0.5, 5.0), "log")]
)
def test_metric_vs_param_log_axis_only_for_positive_values_spanning_10x(xs, scale):
    fig = charts.metric_vs_param({"": [(x, 1.0, 0.1) for x in xs]}, param="beta", metric="m")
    assert fig.axes[0].get_xscale() == scale
    assert not fig.legends  # one unlabelled series


def test_metric_vs_param_non_numeric_values_are_categories():
    series = {"": [("mlp", 100.0, 1.0), ("conv", 90.0, 1.0)]}
    ax = charts.metric_vs_param(series, param="model.arch", metric="test/nll_iwae").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["mlp", "conv"]
    assert ax.get_xscale() == "linear"


def test_learning_curves_one_line_per_run_coloured_by_group():
    curves = {
        "a, seed=0": ([0, 1, 2], [-120.0, -110.0, -105.0]),
        "a, seed=1": ([0, 1, 2], [-121.0, -111.0, -104.0]),
        "b, seed=0": ([0], [-130.0]),
    }
    fig = charts.learning_curves(curves, metric="val/elbo", groups=["a", "a", "b"])
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == list(curves)
    assert list(lines[0].get_xdata()) == [0, 1, 2] and list(lines[2].get_ydata()) == [-130.0]
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()
    assert lines[0].get_linestyle() != lines[1].get_linestyle()
    assert lines[2].get_marker() == "."  # a one-epoch run is a visible point
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("epoch", "val/elbo")
    assert len(legend_texts(fig)) == 3
    default = charts.learning_curves(curves, metric="val/elbo").axes[0].get_lines()
    assert len({line.get_color() for line in default}) == 3  # without groups: one colour each
    with pytest.raises(ValueError, match="2 group names for 3 curves"):
        charts.learning_curves(curves, metric="val/elbo", groups=["a", "b"])


def test_long_legend_labels_fit_in_the_widened_figure():
    label = "lr=0.0001164, beta=3.93, latent_dim=18, model.arch=conv, model.channels=32"
    series = {f"{label}, n={i}": [(1.0, 100.0 + i, 1.0), (4.0, 99.0 + i, 1.0)] for i in range(10)}
    fig = drawn(charts.metric_vs_param(series, param="beta", metric="test/nll_iwae"))
    (legend,) = fig.legends
    assert inside_figure(fig, legend)
    # The figure is widened for the legend, so the axes are not squeezed to a strip.
    assert fig.axes[0].get_position().width * fig.get_figwidth() > 4  # inches


@pytest.mark.parametrize("n", [24, 7])
def test_many_numeric_values_get_round_ticks_whose_labels_do_not_overlap(n):
    lrs = [10 ** (-4 + 2 * i / (n - 1)) + 1.234567e-9 for i in range(n)]  # 17-digit floats
    fig = drawn(charts.metric_vs_param({"": [(x, 1.0, 0.1) for x in lrs]}, "lr", "m"))
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    labels = x_tick_labels(fig)
    assert not overlapping(labels)
    texts = [t.get_text() for t in labels if t.get_text()]
    assert texts and all(significant_digits(t) <= charts.SIGNIFICANT_DIGITS for t in texts), texts


def test_a_few_values_close_together_are_not_each_ticked():
    fig = drawn(charts.metric_vs_param({"": [(x, 1.0, 0.1) for x in (1.0, 1.1, 9.0)]}, "b", "m"))
    ax = fig.axes[0]
    assert list(ax.get_xticks()) != [1.0, 1.1, 9.0]
    assert not overlapping(ax.get_xticklabels())


def test_unjoined_points_when_series_differ_in_more_than_the_param():
    fig = charts.metric_vs_param({"": [(1, 2.0, 0.1), (2, 1.0, 0.1)]}, "b", "m", connect=False)
    (line,) = fig.axes[0].containers[0].lines[:1]
    assert line.get_linestyle() == "None" and line.get_marker() == "o"


def test_learning_curves_of_many_runs_name_their_groups_or_nothing():
    curves = {f"lr={i}, seed={s}": ([0, 1], [-100.0 - i, -99.0]) for i in range(6) for s in (0, 1)}
    fig = drawn(charts.learning_curves(curves, "val/elbo", groups=[k[:4] for k in curves]))
    assert legend_texts(fig) == [f"lr={i}" for i in range(6)]  # 12 runs: a line per group
    assert inside_figure(fig, fig.legends[0])
    assert fig.axes[0].get_title() == "12 runs, a colour per configuration"
    assert {line.get_linestyle() for line in fig.axes[0].get_lines()} == {"-"}

    curves = {f"trial {i}": ([0, 1, 2], [-100.0, -90.0 + i, -85.0]) for i in range(24)}
    fig = drawn(charts.learning_curves(curves, "val/elbo"))
    assert not fig.legends
    assert fig.axes[0].get_title() == "24 runs, too many to name"
    assert len(fig.axes[0].get_lines()) == 24


def test_latent_scatter_of_one_dimension_is_a_strip_per_label():
    torch.manual_seed(0)
    labels = torch.arange(300) % 3
    z = (labels.float() * 4 + torch.randn(300))[:, None]  # (N, 1)
    fig = plots.latent_scatter(z, labels, title="epoch 3")
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("z1", "label", "epoch 3")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2"]
    xy = scatter_points(fig).get_offsets()
    assert np.array_equal(xy[:, 0], z[:, 0].numpy())  # the codes themselves, along z1
    # Each point lies in its label's strip: jittered around the label, never at a made-up 0.
    assert np.all(np.abs(xy[:, 1] - labels.numpy()) <= 0.3)
    assert len(np.unique(xy[:, 1])) == 300
    for label in range(3):  # the strips show each label's spread of codes
        codes = xy[labels.numpy() == label, 0]
        assert codes.mean() == pytest.approx(4 * label, abs=0.3) and codes.std() > 0.8


@pytest.mark.slow
def test_a_run_with_one_latent_dimension_draws_a_strip_per_label(train_cli):
    result = train_cli("model=mlp", "latent_dim=1", "trainer=debug", "logger=none")
    (run_dir,) = result.run_dirs
    with Image.open(run_dir / "pictures" / "test" / "latent_scatter.png") as image:
        rgb = np.asarray(image.convert("RGB")).astype(int)
    # The coloured points, left of where a legend would be: spread over the heights of the
    # ten strips, where a made-up z2 = 0 put them all on one line a few pixels high.
    plot = rgb[:, : rgb.shape[1] * 3 // 4]
    coloured_rows = ((plot.max(-1) - plot.min(-1)) > 60).any(1)
    assert coloured_rows.sum() > rgb.shape[0] / 4


def test_a_picture_grid_shows_each_file_in_its_own_titled_panel_and_caps_them(tmp_path):
    from torchvision.utils import save_image

    paths = {}
    for i in range(charts.MAX_PICTURES + 2):
        paths[f"run {i}"] = tmp_path / f"{i}.png"
        save_image(torch.full((3, 8, 8), i / 30), paths[f"run {i}"])
    fig = charts.picture_grid(dict(list(paths.items())[:5]), "test samples")
    assert [ax.get_title() for ax in fig.axes] == [f"run {i}" for i in range(5)]
    pixels = fig.axes[3].get_images()[0].get_array()
    assert pixels.shape == (8, 8, 3) and abs(float(pixels[0, 0, 0]) - 3 / 30) < 1 / 255 + 1e-6
    capped = charts.picture_grid(paths, "test samples")
    assert len(capped.axes) == charts.MAX_PICTURES
    assert capped._suptitle.get_text() == f"test samples (the first {charts.MAX_PICTURES}; 2 more)"

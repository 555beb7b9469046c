"""The sets with ground-truth factors: data=shapes (generated, cached) and data=dsprites
(DeepMind's npz, on files made here), and runs on them with the disentanglement metrics."""

import json
import math
import re
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from conftest import compose_command

from vaelab import disentanglement
from vaelab.data import dsprites
from vaelab.data.dsprites import DSPRITES_FILE
from vaelab.data.shapes import _HALF_SIZE, _MARGIN, FACTORS, ShapesGrid, factor_grid, render
from vaelab.data.sources import load_dataset
from vaelab.errors import ConfigError, DataError

GRID = ShapesGrid(shapes=3, scales=2, orientations=4, positions=4, image_size=32)


def _one(grid: ShapesGrid, shape: int, scale: int, orientation: int, x: int, y: int):
    image = render(torch.tensor([[shape, scale, orientation, x, y]]), grid)[0, 0]
    return image.double() / 255


def test_the_grid_holds_every_combination_of_factor_values_once():
    factors = factor_grid(GRID)
    assert factors.shape == (3 * 2 * 4 * 4 * 4, 5) == (len(GRID), len(FACTORS))
    assert len({tuple(row) for row in factors.tolist()}) == len(GRID)
    assert [int(f.max()) + 1 for f in factors.T] == list(GRID.sizes)


def test_a_square_and_an_ellipse_cover_their_areas_at_their_positions_at_any_angle():
    grid = ShapesGrid(shapes=2, scales=2, orientations=8, positions=3, image_size=128)
    side = grid.image_size
    for orientation in range(8):
        for shape, area in ((0, 4.0), (1, math.pi / 2)):  # half-sizes²: (2h)², π·h·h/2
            for scale, factor in ((0, 0.5), (1, 1.0)):
                image = _one(grid, shape, scale, orientation, 0, 2)
                half = _HALF_SIZE * factor * side
                assert image.sum() == pytest.approx(area * half**2, rel=0.05)
                rows, cols = image.nonzero(as_tuple=True)
                # The centre in pixels: x from the left (position 0), y from the top (2).
                assert cols.double().mean() + 0.5 == pytest.approx(_MARGIN * side, abs=0.5)
                assert rows.double().mean() + 0.5 == pytest.approx((1 - _MARGIN) * side, abs=0.5)
    # Orientation is seen: a quarter turn of the ellipse puts its long axis across.
    flat, upright = _one(grid, 1, 1, 0, 1, 1), _one(grid, 1, 1, 2, 1, 1)
    assert (flat - upright.T).abs().sum() <= 2  # at the centre a quarter turn is a transpose
    assert (flat.sum(0) > 0).sum() > 1.8 * (flat.sum(1) > 0).sum()


def test_every_shape_stays_inside_the_image_and_the_pixels_are_0_or_255():
    grid = ShapesGrid(shapes=3, scales=2, orientations=7, positions=2, image_size=32)
    images = render(factor_grid(grid), grid)
    assert images.dtype == torch.uint8 and set(images.unique().tolist()) == {0, 255}
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., 0], images[..., -1]])
    assert border.sum() == 0 and (images.flatten(1).sum(1) > 0).all()
    # The three shapes differ at equal other factors.
    same_place = images.view(3, -1, 32, 32)
    assert not torch.equal(same_place[0], same_place[1])
    assert not torch.equal(same_place[1], same_place[2])


def test_the_set_is_made_once_then_read_from_its_cache_with_a_fixed_test_split(tmp_path):
    sizes = {"shapes": 3, "scales": 2, "orientations": 4, "positions": 4}
    first = load_dataset("shapes", tmp_path, False, False, image_size=32, grid=sizes)
    again = load_dataset("shapes", tmp_path, False, False, image_size=32, grid=sizes)
    assert first.source.startswith("generated:") and again.source.startswith("cache:")
    assert first.factor_names == FACTORS
    for a, b in zip(
        (first.train_images, first.train_labels, first.test_images, first.test_labels),
        (again.train_images, again.train_labels, again.test_images, again.test_labels),
        strict=True,
    ):
        assert torch.equal(a, b)
    assert first.train_images.shape[1:] == (1, 32, 32)
    assert len(first.test_images) == round(0.1 * len(GRID))
    everything = torch.cat([first.train_labels, first.test_labels])
    assert len({tuple(row) for row in everything.tolist()}) == len(GRID)  # disjoint, complete
    # The images are the renders of their factors; the first test images, which pictures
    # show, are of every shape.
    assert torch.equal(first.test_images, render(first.test_labels, GRID))
    assert set(first.test_labels[:10, 0].tolist()) == {0, 1, 2}

    (cache,) = (tmp_path / "Shapes").glob("shapes-*.pt")
    cache.write_bytes(cache.read_bytes()[:100])
    with pytest.raises(DataError, match=r"is not a readable shapes cache .*delete it"):
        load_dataset("shapes", tmp_path, False, False, image_size=32, grid=sizes)
    with pytest.raises(ConfigError, match=r"data.grid.colours is not a factor of data=shapes"):
        load_dataset("shapes", tmp_path, False, False, grid={"colours": 2})


def test_scores_leave_out_a_factor_that_does_not_vary_and_are_near_1_for_the_factors():
    factors = factor_grid(ShapesGrid(shapes=1, scales=3, orientations=4, positions=5))
    codes = factors.double() + 0.01 * torch.randn(
        len(factors), 5, generator=torch.Generator().manual_seed(0)
    )
    found = disentanglement.scores(codes, factors, num_train=600, num_test=300)
    assert set(found) == {
        "mig",
        "dci_disentanglement",
        "dci_completeness",
        "dci_informativeness",
        "sap",
        "factor_vae",
    }
    # SAP is a gap of accuracies: the second-best code still beats chance (1/3 to 1/5 here).
    assert all(value > 0.8 for name, value in found.items() if name != "sap"), found
    rotation = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(1)))[0]
    mixed = disentanglement.scores(codes @ rotation.double(), factors, num_train=600, num_test=300)
    assert mixed["mig"] < found["mig"] - 0.3 and mixed["sap"] < found["sap"] - 0.1, mixed
    assert disentanglement.scores(codes, factors[:, :1]) == {}  # shape: one value


@pytest.mark.slow
def test_a_run_on_shapes_reads_its_image_size_from_the_data_and_logs_disentanglement(train_cli):
    result = train_cli(
        "data=shapes",
        "data.image_size=32",
        "data.grid.scales=2",
        "data.grid.orientations=4",
        "data.grid.positions=4",
        "model=mlp",
        "latent_dim=4",
        "trainer=debug",
        "logger=csv",
        "batch_size=32",
        "n_importance=4",
        "disentanglement.num_train=20",
        "disentanglement.num_test=10",
    )
    (run_dir,) = result.run_dirs
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data_source"].startswith("generated:")
    names = ("mig", "dci_disentanglement", "dci_completeness", "dci_informativeness", "sap")
    for name in (*names, "factor_vae"):
        assert 0 <= metrics[f"test/{name}"] <= 1
        # The console's Final metrics show every score of data with factors (the value, in
        # the test column, as metrics.json has it); before, three were left out.
        shown = re.findall(rf"^{name} +(\S+)$", result.output, re.MULTILINE)
        assert shown == [f"{metrics[f'test/{name}']:.4g}"], name
    # 32 x 32 pixels: the bits per dimension count 1,024 of them.
    assert metrics["test/bpd_iwae"] == pytest.approx(
        metrics["test/nll_iwae"] / (1024 * np.log(2)), rel=1e-4
    )
    ckpt = torch.load(next((run_dir / "checkpoints").glob("*.ckpt")), weights_only=False)
    assert list(ckpt["hyper_parameters"]["image_shape"]) == [1, 32, 32]
    for picture in ("latent_scatter", "traversals_by_factor"):
        assert (run_dir / "pictures" / "test" / f"{picture}.png").is_file()

    # eval.py recomputes them from the checkpoint, with the run's data and knobs.

    from vaelab.tasks import evaluate

    again = evaluate.run(compose_command("eval", f"run_dir={run_dir}", "n_importance=4"))
    for name in (*names, "factor_vae", "nll_iwae"):
        assert again[f"test/{name}"] == metrics[f"test/{name}"], name


def write_dsprites(path, n_per_factor=(3, 2, 2, 2, 2)):
    """A small npz in the layout of DeepMind's file: imgs (N, 64, 64) uint8 0/1,
    latents_classes and latents_values (N, 6) (colour first, one value), metadata."""
    grid = ShapesGrid(*n_per_factor[:3], positions=2, image_size=64)
    factors = factor_grid(grid)
    classes = np.concatenate([np.zeros((len(factors), 1), np.int64), factors.numpy()], 1)
    images = (render(factors, grid)[:, 0] // 255).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        imgs=images,
        latents_classes=classes,
        latents_values=classes.astype(np.float64),
        metadata=np.array({"description": "a test file"}, dtype=object),
    )
    return images, classes


def test_dsprites_is_read_from_deepminds_npz_with_its_factors(tmp_path):
    images, classes = write_dsprites(tmp_path / "dsprites" / DSPRITES_FILE)
    splits = load_dataset("dsprites", tmp_path, download=False, allow_fallback=False)
    assert splits.source == f"npz:{tmp_path / 'dsprites' / DSPRITES_FILE}"
    assert splits.factor_names == FACTORS
    assert splits.train_images.shape[1:] == (1, 64, 64)
    assert len(splits.test_images) == round(0.1 * len(images))
    pixels = torch.cat([splits.train_images, splits.test_images])[:, 0]
    factors = torch.cat([splits.train_labels, splits.test_labels])
    order = [tuple(row) for row in factors.tolist()]
    expected = {tuple(row[1:]): image for row, image in zip(classes.tolist(), images, strict=True)}
    assert sorted(order) == sorted(expected)  # every image once, in one split or the other
    for row, image in zip(order, pixels, strict=True):
        assert torch.equal(image, torch.from_numpy(expected[row]) * 255)


def test_a_missing_or_damaged_dsprites_file_is_one_line_that_says_what_to_do(tmp_path):
    path = tmp_path / "dsprites" / DSPRITES_FILE
    with pytest.raises(DataError, match=r"dSprites not found: .* is missing; put DeepMind's"):
        load_dataset("dsprites", tmp_path, download=False, allow_fallback=False)
    write_dsprites(path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"is not a readable dSprites npz .*delete .* again"):
        load_dataset("dsprites", tmp_path, download=False, allow_fallback=False)
    np.savez(path, imgs=np.zeros((4, 64, 64), np.uint8), latents_classes=np.zeros((4, 5)))
    with pytest.raises(DataError, match=r"latents_classes of shape \(4, 5\), not"):
        load_dataset("dsprites", tmp_path, download=False, allow_fallback=False)


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_dsprites_is_downloaded_whole_or_not_at_all(tmp_path, monkeypatch):
    served = tmp_path / "served"
    images, _ = write_dsprites(served / DSPRITES_FILE)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "*")
    try:
        root = tmp_path / "data"
        monkeypatch.setattr(dsprites, "DSPRITES_URL", "http://127.0.0.1:9/nothing.npz")  # closed
        with pytest.raises(DataError, match=r"could not download http://127.0.0.1:9/"):
            load_dataset("dsprites", root, download=True, allow_fallback=False)
        assert list((root / "dsprites").iterdir()) == []  # nothing half-written
        url = f"http://127.0.0.1:{server.server_port}/{DSPRITES_FILE}"
        monkeypatch.setattr(dsprites, "DSPRITES_URL", url)
        splits = load_dataset("dsprites", root, download=True, allow_fallback=False)
        assert len(splits.train_images) + len(splits.test_images) == len(images)
        assert [p.name for p in (root / "dsprites").iterdir()] == [DSPRITES_FILE]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_a_run_on_dsprites_trains_tests_and_scores_its_factors(train_cli, tmp_path):
    write_dsprites(tmp_path / "data" / "dsprites" / DSPRITES_FILE, (3, 2, 2, 3, 3))
    result = train_cli(
        "data=dsprites",
        "model=conv",  # 64 x 64: two stride-2 convolutions to 16 x 16
        "model.hidden_dim=32",
        "latent_dim=3",
        "trainer=debug",
        "logger=none",
        "batch_size=16",
        "n_importance=0",
        "callbacks.pictures.n_images=4",
    )
    (run_dir,) = result.run_dirs
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data_source"].startswith("npz:")
    assert 0 <= metrics["test/mig"] <= 1 and 0 <= metrics["test/dci_informativeness"] <= 1
    assert (run_dir / "pictures" / "test" / "reconstructions.png").is_file()

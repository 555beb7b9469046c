"""data=folder: your own PNG and JPEG files, on folders of files written here."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, _offline_env
from PIL import Image

from vaelab.data import load_dataset
from vaelab.datamodule import VAEDataModule
from vaelab.errors import ConfigError, DataError
from vaelab.runs import Run

_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def _save(path, image, **options):
    """Write a (C, H, W) uint8 tensor with Pillow, in the format of the path's suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = image.permute(1, 2, 0).numpy()
    Image.fromarray(array[..., 0] if len(image) == 1 else array, _MODES[len(image)]).save(
        path, **options
    )


def _png(path, image):
    _save(path, image)


def _jpeg(path, image):
    _save(path, image, quality=100)


def _filled(channels, height, width, value):
    return torch.full((channels, height, width), value, dtype=torch.uint8)


@pytest.fixture
def classes(tmp_path):
    """cats/ (two RGB PNGs, one 40 x 80 whose middle is green), dogs/ (a grey JPEG, a grey
    PNG with alpha)."""
    folder = tmp_path / "pictures"
    wide = _filled(3, 40, 80, 0)
    wide[0, :, :20] = 255  # red left quarter, green middle, blue right quarter
    wide[1, :, 20:60] = 255
    wide[2, :, 60:] = 255
    _png(folder / "cats" / "wide.png", wide)
    _png(folder / "cats" / "red.png", torch.cat([_filled(1, 30, 30, 200), _filled(2, 30, 30, 0)]))
    _jpeg(folder / "dogs" / "grey.jpg", _filled(1, 16, 16, 100))
    _png(folder / "dogs" / "alpha.png", torch.cat([_filled(1, 20, 20, 50), _filled(1, 20, 20, 9)]))
    return folder


def test_class_subfolders_give_labels_and_any_colour_makes_every_image_rgb(classes, tmp_path):
    splits = load_dataset("folder", tmp_path / "data", False, False, image_size=16, path=classes)
    images = torch.cat([splits.train_images, splits.test_images])
    labels = torch.cat([splits.train_labels, splits.test_labels])
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.uint8 and splits.labelled
    assert sorted(labels.tolist()) == [0, 0, 1, 1]  # cats, dogs: the sorted subfolders
    by_colour = {
        tuple(image[:, 8, 8].tolist()): label for image, label in zip(images, labels, strict=True)
    }
    # The wide image: its shorter side to 16, then the middle 16 x 16, all green.
    assert by_colour[(0, 255, 0)] == 0 and by_colour[(200, 0, 0)] == 0
    grey = [c for c in by_colour if c[0] == c[1] == c[2]]
    assert len(grey) == 2 and all(by_colour[c] == 1 for c in grey)  # repeated into RGB
    assert {c[0] for c in grey} == {50, 100}  # the alpha channel dropped


def test_a_flat_grey_folder_is_unlabelled_grey_and_cached_until_it_changes(tmp_path):
    folder = tmp_path / "flat"
    for i in range(5):
        _png(folder / f"{i}.png", _filled(1, 10, 12, 40 * i))
    first = load_dataset("folder", tmp_path / "data", False, False, image_size=8, path=folder)
    assert first.source == f"folder:{folder}" and not first.labelled
    assert first.train_images.shape[1:] == (1, 8, 8) and len(first.test_images) == 1
    again = load_dataset("folder", tmp_path / "data", False, False, image_size=8, path=folder)
    assert again.source.startswith("cache:")
    assert torch.equal(torch.cat([first.train_images, first.test_images]),
                       torch.cat([again.train_images, again.test_images]))  # fmt: skip
    _png(folder / "5.png", _filled(1, 10, 12, 255))  # a new file: decoded again
    grown = load_dataset("folder", tmp_path / "data", False, False, image_size=8, path=folder)
    assert grown.source.startswith("folder:")
    assert len(grown.train_images) + len(grown.test_images) == 6
    _png(folder / "0.png", _filled(1, 10, 12, 7))  # a changed file too
    changed = load_dataset("folder", tmp_path / "data", False, False, image_size=8, path=folder)
    assert changed.source.startswith("folder:")
    os.utime(folder / "0.png", ns=(0, 0))  # touched, its contents the same: still cached
    touched = load_dataset("folder", tmp_path / "data", False, False, image_size=8, path=folder)
    assert touched.source.startswith("cache:")


def test_a_bad_folder_is_one_line_naming_the_path(tmp_path):
    def load(path, **kw):
        return load_dataset("folder", tmp_path / "data", False, False, path=path, **kw)

    with pytest.raises(DataError, match=r"data.path=.*nowhere does not exist"):
        load(tmp_path / "nowhere", image_size=8)
    (tmp_path / "a.txt").write_text("text")
    with pytest.raises(DataError, match=r"data.path=.*a.txt is a file, not a folder"):
        load(tmp_path / "a.txt", image_size=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no .png, .jpg, .jpeg images"):
        load(tmp_path / "empty", image_size=8)
    mixed = tmp_path / "mixed"
    _png(mixed / "loose.png", _filled(1, 8, 8, 0))
    _png(mixed / "class" / "nested.png", _filled(1, 8, 8, 0))
    with pytest.raises(DataError, match=r"mixes images in the folder itself \(loose.png\)"):
        load(mixed, image_size=8)
    broken = tmp_path / "broken"
    _png(broken / "good.png", _filled(1, 8, 8, 0))
    (broken / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"bad.png is not a readable image .*remove it"):
        load(broken, image_size=8)
    with pytest.raises(ConfigError, match=r"data=folder needs data.path"):
        load(None, image_size=8)


@pytest.mark.slow
def test_a_run_on_a_folder_of_colour_images_trains_and_draws(train_cli, classes):
    for i in range(12):  # more cats: a test split and a few batches
        image = torch.randint(0, 256, (3, 20, 24), generator=torch.Generator().manual_seed(i))
        _png(classes / "cats" / f"noise{i}.png", image.to(torch.uint8))
    result = train_cli(
        "data=folder",
        f"data.path={classes}",
        "data.image_size=16",
        "model=mlp",
        "latent_dim=2",
        "trainer=debug",
        "logger=none",
        "batch_size=4",
        "n_importance=4",
    )
    (run_dir,) = result.run_dirs
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data_source"] == f"folder:{classes}"
    # 3 x 16 x 16 sub-pixels: bits per dimension count them all.
    assert metrics["test/bpd_iwae"] * 768 == pytest.approx(metrics["test/nll_iwae"] / 0.6931, 1e-3)
    for name in ("reconstructions", "samples", "manifold", "latent_scatter"):
        assert (run_dir / "pictures" / "test" / f"{name}.png").is_file()


def test_the_conv_model_is_sized_by_the_images_and_refuses_a_side_it_cannot_give_back():
    from vaelab.models.architectures import ConvVAE

    for shape, stages in (((1, 28, 28), 2), ((3, 32, 32), 2), ((3, 64, 64), 3), ((1, 128, 96), 4)):
        vae = ConvVAE(shape, 4, "bernoulli", 0.1, hidden_dim=16)
        convs = [m for m in vae.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == stages and convs[0].in_channels == shape[0]
        assert vae.decode(torch.zeros(2, 4)).shape == (2, *shape)
        assert vae.encode(torch.zeros(2, *shape)).shape == (2, 4)
    # The two-stage network of 28 x 28 images keeps its weights' names (old checkpoints).
    names = set(ConvVAE((1, 28, 28), 4, "bernoulli", 0.1, hidden_dim=16).state_dict())
    assert {"encoder.body.0.weight", "encoder.body.2.weight", "encoder.body.5.weight"} <= names
    assert {"decoder.net.5.weight", "decoder.net.7.weight"} <= names
    with pytest.raises(ConfigError, match=r"model=conv halves 30 x 30 images 2 times, .* by 4"):
        ConvVAE((3, 30, 30), 4, "bernoulli", 0.1, hidden_dim=16)
    with pytest.raises(ConfigError, match=r"halves 60 x 60 images 3 times, so .* by 8: set"):
        ConvVAE((3, 60, 60), 4, "bernoulli", 0.1, hidden_dim=16)


def test_a_path_given_with_a_tilde_is_the_home_folders(tmp_path, monkeypatch):
    # The shell leaves the ~ of data.path=~/images alone: vaelab expands it.
    _png(tmp_path / "home" / "images" / "a.png", _filled(1, 8, 8, 10))
    _png(tmp_path / "home" / "images" / "b.png", _filled(1, 8, 8, 20))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    splits = load_dataset("folder", tmp_path / "data", False, False, image_size=8, path="~/images")
    assert splits.source == f"folder:{tmp_path / 'home' / 'images'}"


def _split_values(folder, data_dir):
    """{split: the set of the grey levels of its images} of a folder of flat 8 x 8 images,
    split by the datamodule as a run splits it (train, val and test)."""
    datamodule = VAEDataModule(
        "folder", str(data_dir), binarize="none", download=False, image_size=8, path=str(folder)
    )
    levels = {}
    for split in ("train", "val", "test"):
        images = torch.cat([x for x, _ in datamodule.model_batches(split)])
        levels[split] = set((images[:, 0, 0, 0] * 255).round().int().tolist())
    return levels


def test_adding_or_removing_a_file_moves_no_other_file_between_splits(tmp_path):
    folder = tmp_path / "flat"
    for level in range(200):  # each file known by its grey level
        _png(folder / f"{level:03d}.png", _filled(1, 8, 8, level))
    before = _split_values(folder, tmp_path / "data")
    assert all(before.values()) and sum(map(len, before.values())) == 200
    _png(folder / "new.png", _filled(1, 8, 8, 250))
    grown = _split_values(folder, tmp_path / "data")
    for split, levels in before.items():
        assert grown[split] - {250} == levels, split
    gone = {min(before["test"]), min(before["val"]), min(before["train"])}
    for level in gone:
        (folder / f"{level:03d}.png").unlink()
    shrunk = _split_values(folder, tmp_path / "data")
    for split, levels in grown.items():
        assert shrunk[split] == levels - gone, split


def test_a_validation_size_holds_out_that_many_files_of_a_folder(tmp_path):
    folder = tmp_path / "flat"
    for level in range(60):
        _png(folder / f"{level:03d}.png", _filled(1, 8, 8, level))
    datamodule = VAEDataModule(
        "folder", str(tmp_path / "data"), download=False, image_size=8, path=str(folder),
        val_size=7,
    )  # fmt: skip
    datamodule.setup()
    assert datamodule.hparams.n_val == 7
    assert datamodule.hparams.n_train + 7 + datamodule.hparams.n_test == 60


def test_a_file_rewritten_with_the_same_size_and_times_is_decoded_again(tmp_path):
    folder = tmp_path / "flat"
    for name, level in (("a.png", 10), ("b.png", 20)):
        _save(folder / name, _filled(1, 8, 8, level), compress_level=0)  # stored: size fixed
    first = load_dataset("folder", tmp_path / "data", False, False, image_size=8, path=folder)
    stat = (folder / "a.png").stat()
    _save(folder / "a.png", _filled(1, 8, 8, 99), compress_level=0)  # as `cp -p` would leave it
    os.utime(folder / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = (folder / "a.png").stat()
    assert (after.st_size, after.st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    again = load_dataset("folder", tmp_path / "data", False, False, image_size=8, path=folder)
    assert again.source.startswith("folder:")
    levels = {int(x.max()) for x in torch.cat([again.train_images, again.test_images])}
    assert levels == {99, 20}
    assert 10 in {int(x.max()) for x in torch.cat([first.train_images, first.test_images])}


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    folder = tmp_path / "deep"
    folder.mkdir()
    levels = np.repeat(np.array([0, 64 * 257, 128 * 257, 65535], dtype=np.uint16), 2)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.tile(levels, (8, 1))).save(folder / name)  # mode I;16
        assert Image.open(folder / name).mode == "I;16"
    splits = load_dataset("folder", tmp_path / "data", False, False, image_size=8, path=folder)
    for image in torch.cat([splits.train_images, splits.test_images]):
        assert image.shape == (1, 8, 8)
        assert image[0, 3].tolist() == [0, 0, 64, 64, 128, 128, 255, 255]


def test_a_jpeg_is_turned_as_its_exif_orientation_says(tmp_path):
    folder = tmp_path / "phone"
    folder.mkdir()
    stored = np.zeros((8, 16), dtype=np.uint8)  # 16 wide, 8 high: white top, black bottom
    stored[:4] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: shown turned 90 degrees clockwise (a phone held upright)
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(stored, "L").save(folder / name, quality=100, exif=exif)
    splits = load_dataset("folder", tmp_path / "data", False, False, image_size=8, path=folder)
    for image in torch.cat([splits.train_images, splits.test_images]):
        # Shown 8 wide and 16 high, white on the right; its middle 8 x 8 is cut out.
        assert (image[0, :, :3] < 32).all() and (image[0, :, 5:] > 223).all()


def test_hidden_files_and_folders_are_not_images(tmp_path):
    folder = tmp_path / "exported"
    for name in ("a.png", "b.png"):
        _png(folder / name, _filled(1, 8, 8, 30))
    for name in (".ipynb_checkpoints/a-checkpoint.png", ".hidden.png", ".trash/c/d.png"):
        _png(folder / name, _filled(1, 8, 8, 255))
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble, not a png")
    splits = load_dataset("folder", tmp_path / "data", False, False, image_size=8, path=folder)
    images = torch.cat([splits.train_images, splits.test_images])
    assert len(images) == 2 and (images == 30).all() and not splits.labelled


@pytest.mark.slow
def test_a_run_records_its_data_and_a_resume_on_changed_data_is_refused(train_cli, tmp_path):
    folder = tmp_path / "flat"
    for level in range(40):
        _png(folder / f"{level:03d}.png", _filled(1, 8, 8, 5 * level))
    tiny = ("data=folder", f"data.path={folder}", "data.image_size=8", "model=mlp",
            "latent_dim=2", "trainer=debug", "logger=none", "batch_size=8", "n_importance=0",
            "callbacks.pictures.every_n_epochs=100")  # fmt: skip
    (run_dir,) = train_cli(*tiny, "max_epochs=1").run_dirs
    recorded = Run(run_dir).data()
    datamodule = VAEDataModule(
        "folder", str(tmp_path / "data"), image_size=8, path=str(folder), download=False
    )
    assert recorded == datamodule.fingerprint()  # written by the run, as the data is now
    assert sum(recorded[s]["images"] for s in ("train", "val", "test")) == 40
    config, status = (run_dir / "config.yaml").read_text(), Run(run_dir).status()
    # A test image changed, and a file added: the splits they are in differ.
    splits = load_dataset("folder", tmp_path / "data", False, False, image_size=8, path=folder)
    tested = sorted({p.name for p in folder.iterdir()} - set(splits.train_names))[0]
    original = (folder / tested).read_bytes()
    _png(folder / tested, _filled(1, 8, 8, 201))
    _png(folder / "new.png", _filled(1, 8, 8, 202))
    refused = train_cli(*tiny, f"resume={run_dir}", "max_epochs=2", check=False)
    assert refused.returncode != 0
    lines = [line for line in refused.stderr.splitlines() if "vaelab: error:" in line]
    assert len(lines) == 1 and "Traceback" not in refused.output, refused.output[-3000:]
    assert "its data changed since it trained" in lines[0] and "restore the data" in lines[0]
    assert (
        "start a new run" in lines[0] and "test split (" in lines[0] and "images, was" in lines[0]
    )
    assert (run_dir / "config.yaml").read_text() == config  # the run is left as it was
    assert Run(run_dir).status() == status and Run(run_dir).state == "finished"
    # `vaelab eval` on the changed data evaluates, and says the test split is another one.
    evaluated = subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), f"run_dir={run_dir}", "n_importance=2",
         "wandb_mode=disabled"],
        cwd=tmp_path, env=_offline_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = evaluated.stdout + evaluated.stderr
    assert evaluated.returncode == 0, output[-3000:]
    warned = [line for line in output.splitlines() if "differs from the one" in line]
    assert len(warned) == 1 and f"{run_dir} was tested on" in warned[0], output[-3000:]
    # The data restored: a run of an earlier version (no data.json) resumes and records it.
    (folder / "new.png").unlink()
    (folder / tested).write_bytes(original)
    (run_dir / "data.json").unlink()
    resumed = train_cli(*tiny, f"resume={run_dir}", "max_epochs=2")
    assert "recorded no data.json (made by an earlier version)" in resumed.output
    assert Run(run_dir).data() == recorded and Run(run_dir).state == "finished"
    assert max(row["epoch"] for row in Run(run_dir).history()) == 1

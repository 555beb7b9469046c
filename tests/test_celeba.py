"""data=celeba: torchvision's layout of CelebA's aligned faces, on JPEG files written here."""

import json

import pytest
import torch
from PIL import Image

from vaelab.data.celeba import CELEBA_CROP
from vaelab.data.sources import load_dataset
from vaelab.errors import DataError


def write_celeba(root, n=10, partition=True):
    """`root/celeba/img_align_celeba/000001.jpg` ... of 178 x 218 (CelebA's aligned size):
    blue, with the centre 148 x 148 that the crop keeps red; and list_eval_partition.txt,
    the last two images the test split (2), one validation image (1)."""
    images = root / "celeba" / "img_align_celeba"
    images.mkdir(parents=True)
    for i in range(1, n + 1):
        pixels = torch.zeros(218, 178, 3, dtype=torch.uint8)
        pixels[..., 2] = 255
        top, left = (218 - CELEBA_CROP) // 2, (178 - CELEBA_CROP) // 2
        pixels[top + 2 : top + CELEBA_CROP - 2, left + 2 : left + CELEBA_CROP - 2] = torch.tensor(
            [255, 0, 0], dtype=torch.uint8
        )
        Image.fromarray(pixels.numpy()).save(images / f"{i:06d}.jpg", quality=95)
    if partition:
        split = ["0"] * (n - 3) + ["1", "2", "2"]
        lines = [f"{i:06d}.jpg {s}" for i, s in enumerate(split, 1)]
        (root / "celeba" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")


def test_the_standard_split_and_the_centre_crop_of_the_aligned_faces(tmp_path):
    write_celeba(tmp_path)
    splits = load_dataset("celeba", tmp_path, False, False, image_size=16)
    assert splits.source.startswith("jpg:") and not splits.labelled
    assert splits.train_images.shape == (8, 3, 16, 16)  # partitions 0 and 1
    assert splits.test_images.shape == (2, 3, 16, 16)
    # The centre 148 x 148 is kept, the blue border cut off: red all over (JPEG's rounding).
    red, green, blue = splits.test_images.float().mean((0, 2, 3)).tolist()
    assert red > 240 and green < 15 and blue < 15
    again = load_dataset("celeba", tmp_path, False, False, image_size=16)
    assert again.source.startswith("cache:")
    assert torch.equal(again.test_images, splits.test_images)


def test_without_the_partition_file_each_image_is_in_the_test_set_by_its_name(tmp_path):
    write_celeba(tmp_path / "small", n=40, partition=False)
    write_celeba(tmp_path / "large", n=80, partition=False)  # the same 40 and 40 more
    small = load_dataset("celeba", tmp_path / "small", False, False, image_size=8)
    large = load_dataset("celeba", tmp_path / "large", False, False, image_size=8)
    assert len(small.train_names) + len(small.test_images) == 40 and len(small.test_images)
    assert 3 <= len(large.test_images) <= 16  # about 10 %, by each name's hash
    kept = [name for name in large.train_names if name <= "000040.jpg"]
    assert kept == list(small.train_names)  # the 40 new images moved none of the first 40


def test_missing_or_foreign_celeba_files_are_one_line(tmp_path):
    with pytest.raises(DataError, match=r"CelebA not found: .*img_align_celeba is missing"):
        load_dataset("celeba", tmp_path, False, False)
    write_celeba(tmp_path, n=3)
    partition = tmp_path / "celeba" / "list_eval_partition.txt"
    partition.write_text("000001.jpg 0\n000002.jpg 7\n")
    with pytest.raises(DataError, match=r"line 2 is not '<image> <0, 1 or 2>'"):
        load_dataset("celeba", tmp_path, False, False, image_size=8)
    partition.write_text("000001.jpg 0\n000002.jpg 2\n")
    with pytest.raises(DataError, match=r"does not list 000003.jpg \(1 images unlisted\)"):
        load_dataset("celeba", tmp_path, False, False, image_size=8)


@pytest.mark.slow
def test_a_run_on_celeba_trains_a_conv_model(train_cli, tmp_path):
    write_celeba(tmp_path / "data", n=12)
    result = train_cli(
        "data=celeba", "data.image_size=32", "model=conv", "model.hidden_dim=32", "latent_dim=3",
        "trainer=debug", "logger=none", "batch_size=4", "n_importance=0",
    )  # fmt: skip
    (run_dir,) = result.run_dirs
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data_source"].startswith("jpg:") and metrics["test/elbo"] < 0
    assert (run_dir / "pictures" / "test" / "latent_scatter.png").is_file()

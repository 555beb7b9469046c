"""data=cifar10: CIFAR-10's python batches, on files written here in their real format."""

import hashlib
import json
import pickle
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from cifar_files import PER_BATCH, write_batches

from vaelab import load_run
from vaelab.data import cifar
from vaelab.data.sources import load_dataset
from vaelab.errors import DataError
from vaelab.runs import Run


def test_the_batches_are_read_as_images_of_three_planes(tmp_path):
    written = write_batches(tmp_path / "cifar-10-batches-py")
    splits = load_dataset("cifar10", tmp_path, download=False, allow_fallback=False)
    assert splits.source == f"batches:{tmp_path / 'cifar-10-batches-py'}"
    assert splits.train_images.shape == (5 * PER_BATCH, 3, 32, 32)
    assert splits.test_images.shape == (PER_BATCH, 3, 32, 32)
    data, labels = written["data_batch_2"]
    image = splits.train_images[PER_BATCH + 1]  # the second image of the second batch
    assert torch.equal(image[0].flatten(), torch.from_numpy(data[1, :1024]))  # red plane
    assert torch.equal(image[2].flatten(), torch.from_numpy(data[1, 2048:]))  # blue plane
    assert splits.train_labels[PER_BATCH : 2 * PER_BATCH].tolist() == labels
    assert splits.test_labels.tolist() == written["test_batch"][1]


def test_a_pickle_that_asks_for_other_objects_is_refused_not_run(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_batches(folder)
    ran = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(ran), "w"))  # what an unpickler would call

    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Payload()}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_3 is not a CIFAR-10 batch \(it asks for "):
        load_dataset("cifar10", tmp_path, download=False, allow_fallback=False)
    assert not ran.exists()


def test_missing_partial_or_damaged_batches_are_one_line(tmp_path):
    with pytest.raises(DataError, match=r"CIFAR-10 not found in .*: put the python batches"):
        load_dataset("cifar10", tmp_path, download=False, allow_fallback=False)
    folder = tmp_path / "cifar-10-batches-py"
    write_batches(folder)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError, match=r"holds only part of CIFAR-10 \(data_batch_4 missing\)"):
        load_dataset("cifar10", tmp_path, download=False, allow_fallback=False)
    write_batches(folder)
    (folder / "test_batch").write_bytes((folder / "test_batch").read_bytes()[:500])
    with pytest.raises(DataError, match=r"test_batch is not a CIFAR-10 batch .*delete"):
        load_dataset("cifar10", tmp_path, download=False, allow_fallback=False)


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_the_archive_is_downloaded_checked_and_moved_into_place_whole(tmp_path, monkeypatch):
    served = tmp_path / "served"
    written = write_batches(served / "cifar-10-batches-py")
    archive = served / cifar.ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(served / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "*")
    root = tmp_path / "data"
    try:
        monkeypatch.setattr(cifar, "URL", f"http://127.0.0.1:{server.server_port}/{cifar.ARCHIVE}")
        monkeypatch.setattr(cifar, "ARCHIVE_MD5", "0" * 32)  # not this archive's: refused
        with pytest.raises(DataError, match=r"could not download CIFAR-10 from http://127"):
            load_dataset("cifar10", root, download=True, allow_fallback=False)
        assert list(root.iterdir()) == []  # nothing of the refused archive is left
        monkeypatch.setattr(cifar, "ARCHIVE_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
        splits = load_dataset("cifar10", root, download=True, allow_fallback=False)
    finally:
        server.shutdown()
        server.server_close()
    assert splits.source == "download" and [p.name for p in root.iterdir()] == [cifar.FOLDER]
    assert splits.test_labels.tolist() == written["test_batch"][1]
    again = load_dataset("cifar10", root, download=True, allow_fallback=False)
    assert again.source.startswith("batches:")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("likelihood", "overrides"),
    [
        ("discretized_logistic", ()),  # what data=cifar10 brings
        # PixelCNN++'s mixture, its channels coupled: 3 (1 + 6 + 3) = 30 output channels
        ("logistic_mixture", ("likelihood=logistic_mixture", "likelihood.components=3")),
    ],
)
def test_a_run_on_cifar10_trains_a_conv_model_with_a_discrete_likelihood(
    train_cli, tmp_path, likelihood, overrides
):
    write_batches(tmp_path / "data" / "cifar-10-batches-py", per_batch=12)
    result = train_cli(
        "data=cifar10",  # brings data.binarize=none and likelihood=discretized_logistic
        *overrides,
        "model=conv",
        "model.hidden_dim=32",
        "latent_dim=4",
        "trainer=debug",
        "logger=none",
        "batch_size=8",
        "n_importance=4",
    )
    (run_dir,) = result.run_dirs
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data_source"].startswith("batches:")
    config = Run(run_dir).config()
    assert (config["likelihood"]["name"], config["data"]["binarize"]) == (likelihood, "none")
    # A discrete likelihood of 256 levels: masses at most 1, so bits per sub-pixel above 0
    # (a density of grey levels can give fewer than 0).
    assert metrics["test/bpd_iwae"] * 3072 * np.log(2) == pytest.approx(metrics["test/nll_iwae"])
    assert metrics["test/bpd_iwae"] > 0
    assert (run_dir / "pictures" / "test" / "samples.png").is_file()
    if likelihood == "logistic_mixture":  # its decoder gives the mixture's parameters
        vae = load_run(run_dir)
        assert vae.decoder(torch.zeros(1, 4)).shape == (1, 30, 32, 32)
        assert vae.data_shape == (3, 32, 32) and vae.sample(2).shape == (2, 3, 32, 32)

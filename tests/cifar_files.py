"""CIFAR-10's files as its python version has them, written by the tests that read them."""

import pickle

import numpy as np

from vaelab.data import cifar

PER_BATCH = 6


def write_batches(folder, per_batch=PER_BATCH):
    """The five training batches and the test batch as CIFAR's python version has them:
    pickled dicts with bytes keys, `data` (N, 3072) uint8 in red, green, blue planes, and
    `labels` a list of ints. Returns {file name: (data, labels)}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in (*cifar.TRAIN_FILES, cifar.TEST_FILE):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"{i}.png".encode() for i in range(per_batch)]}  # fmt: skip
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        written[name] = (data, labels)
    return written

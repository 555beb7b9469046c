"""Read back the records of a real W&B run file (run-*.wandb), as `wandb sync` would.

The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks, each
with a 7-byte header (crc32c, little-endian length, type) and a piece of a protobuf Record.
"""

import struct
from pathlib import Path

from wandb.proto.wandb_internal_pb2 import Record

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pieces, pos = [], [], HEADER
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + HEADER])
        if kind == 0:
            break
        pieces.append(data[pos + HEADER : pos + HEADER + length])
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = Record()
            record.ParseFromString(b"".join(pieces))
            records.append(record)
            pieces = []
    return records


def history(records: list[Record]) -> list[dict[str, str]]:
    """Each logged step as {key: JSON-encoded value}."""
    return [
        {item.key or "/".join(item.nested_key): item.value_json for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]


def config(records: list[Record]) -> dict[str, str]:
    """The run's config as {key: JSON-encoded value}; later updates win."""
    merged = {}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind in ("run", "config"):
            updates = r.run.config.update if kind == "run" else r.config.update
            merged.update({item.key: item.value_json for item in updates})
    return merged

"""Downloads that leave nothing under the real name until the file is whole."""

import shutil
import tempfile
from http.client import HTTPException
from pathlib import Path

from torchvision.datasets.utils import download_url

from vaelab.errors import DataError


def one_line_reason(err: BaseException) -> str:
    """An exception's message on one line, or its type's name when it has none."""
    return " ".join(str(err).split()) or type(err).__name__


def fetch(url: str, path: Path) -> None:
    """torchvision's download of `url` into a temporary folder beside `path`, renamed to
    `path` once complete: an interrupted download leaves nothing under the real name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(dir=path.parent, prefix=".download-"))
    try:
        download_url(url, str(tmp_root), path.name)
        (tmp_root / path.name).replace(path)
    except (OSError, RuntimeError, HTTPException) as err:
        raise DataError(
            f"could not download {url} ({one_line_reason(err)}); put the file at {path}, "
            "or run where the address can be reached"
        ) from None
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)

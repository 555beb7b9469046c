"""`data=folder`: a folder of your own PNG and JPEG images, decoded once and cached.

Images are found under `path` at any depth; hidden files and folders (a name that starts
with a dot: .DS_Store, ._x.png, .ipynb_checkpoints/) are not images of the set. If they all
lie in subfolders, the first subfolder of each names its class (as torchvision's
ImageFolder); if they all lie in `path` itself, there are no labels. Each is decoded by
Pillow as it is shown (its EXIF orientation applied; 16-bit grey scaled to 8 bits; grey, or
RGB when any image of the folder has colour; an alpha channel dropped), resized so that its
shorter side is `image_size` and centre-cropped to a square (torchvision's transforms). The
decoded uint8 tensor is cached in the data folder under a name made from the files' paths
and contents and `image_size`, so that a changed folder is read again and an unchanged one
is not decoded again.

Which split a file belongs to is a rule of the file itself (`file_draws`, a hash of its
path under `path`), so that adding or removing files moves no other file between splits.
"""

from pathlib import Path

import torch
from torch import Tensor

from vaelab.data.images import content_key, decode_cached
from vaelab.data.splits import DatasetSplits, files_split
from vaelab.errors import ConfigError, DataError

EXTENSIONS = (".png", ".jpg", ".jpeg")


def image_files(path: Path) -> list[Path]:
    """The image files under `path`, sorted, less hidden ones (a file or folder whose name
    starts with a dot: the Finder's and Jupyter's files); a one-line DataError for a path
    that is not a folder or holds none."""
    if not path.exists():
        raise DataError(f"data.path={path} does not exist: give the folder of your images")
    if not path.is_dir():
        raise DataError(f"data.path={path} is a file, not a folder: give the folder that holds it")
    files = sorted(
        p
        for p in path.rglob("*")
        if p.suffix.lower() in EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
        and p.is_file()
    )
    if not files:
        raise DataError(
            f"data.path={path} holds no {', '.join(EXTENSIONS)} images (searched every subfolder)"
        )
    return files


def classes_of(path: Path, files: list[Path]) -> tuple[list[str], Tensor | None]:
    """The class names and (N,) labels from the first subfolder of each file, or ([], None)
    when every file lies in `path` itself."""
    parts = [f.relative_to(path).parts for f in files]
    nested = [len(p) > 1 for p in parts]
    if not any(nested):
        return [], None
    if not all(nested):
        loose = files[nested.index(False)]
        raise DataError(
            f"data.path={path} mixes images in the folder itself ({loose.name}) with images in "
            "subfolders (the classes): move them into a subfolder, or all out of the subfolders"
        )
    names = sorted({p[0] for p in parts})
    index = {name: i for i, name in enumerate(names)}
    return names, torch.tensor([index[p[0]] for p in parts], dtype=torch.int64)


def load_folder(
    path: Path, image_size: int, cache_dir: Path
) -> tuple[Tensor, Tensor | None, list[str], str, list[str]]:
    """(images (N, C, S, S) uint8, labels (N,) or None, class names, source, the files'
    paths under `path`) of the folder."""
    path = path.expanduser()  # a ~ the shell left in data.path=~/images
    files = image_files(path)
    names, labels = classes_of(path, files)
    cache = cache_dir / "Folder" / f"folder-{content_key(path, files, image_size)}.pt"
    images, cached = decode_cached(files, path, image_size, cache)
    source = f"cache:{cache}" if cached else f"folder:{path}"
    return images, labels, names, source, [f.relative_to(path).as_posix() for f in files]


def load_image_folder(path: str | Path | None, image_size: int | None, root: Path) -> DatasetSplits:
    """data=folder: the images under `path`, labelled by class subfolder when there are any."""
    if path is None:
        raise ConfigError("data=folder needs data.path: the folder of your images")
    if image_size is None:
        raise ConfigError("data=folder needs data.image_size: the pixels a side to resize to")
    images, labels, _, source, names = load_folder(Path(path), image_size, root)
    labelled = labels is not None
    if labels is None:
        labels = torch.zeros(len(images), dtype=torch.int64)
    if len(images) < 2:
        raise DataError(
            f"data.path={path} holds one image: a test split and a training split need 2 or more"
        )
    return files_split(images, labels, names, source, labelled)

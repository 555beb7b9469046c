"""`data=shapes`: a dSprites-like set of images with known generative factors, made here.

Every combination of five factors is drawn once: shape (square, ellipse, heart), scale,
orientation, x and y position, white on black, at `image_size` pixels a side. The images are
a pure function of the grid, rendered by testing each pixel centre against the shape's
implicit equation (no anti-aliasing, so pixels are 0 or 255 as in dSprites), and cached in
the data folder after the first generation. Unlike dSprites (Matthey et al. 2017; 3 × 6 ×
40 × 32 × 32 = 737,280 images), the grid is small by default and each factor's number of
values is a knob, so that a test can make a set of a few hundred images.
"""

import dataclasses
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from vaelab.data.splits import DatasetSplits, held_out_splits
from vaelab.errors import ConfigError, DataError

SHAPES = ("square", "ellipse", "heart")
FACTORS = ("shape", "scale", "orientation", "x", "y")
# Geometry in units of the image side: the half-size of a shape at scale 1, the scales'
# range, and the margin that keeps a shape of any scale and orientation inside the image
# (a square's corner reaches sqrt(2) half-sizes from its centre).
_HALF_SIZE, _MIN_SCALE, _MARGIN = 0.13, 0.5, 0.2
_CHUNK = 512  # images rendered at once: (512, S, S) booleans


@dataclass(frozen=True)
class ShapesGrid:
    """How many values each factor takes, and the image side.

    Args:
        shapes: the first `shapes` of square, ellipse, heart.
        scales: scales evenly from 0.5 to 1 (one: 1).
        orientations: angles evenly over [0, 2π) (a square repeats every π/2, an ellipse
            every π: as in dSprites, some orientations look alike).
        positions: centres evenly over the image, on each axis.
        image_size: pixels a side.
    """

    shapes: int = 3
    scales: int = 6
    orientations: int = 10
    positions: int = 16
    image_size: int = 64

    @property
    def sizes(self) -> tuple[int, ...]:
        """The number of values of each factor, in `FACTORS` order."""
        return (self.shapes, self.scales, self.orientations, self.positions, self.positions)

    def __len__(self) -> int:
        return math.prod(self.sizes)

    def key(self) -> str:
        """A short name for this grid's cache file."""
        text = json.dumps(self.__dict__, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def factor_grid(grid: ShapesGrid) -> Tensor:
    """(N, 5) int64: every combination of factor values, the last factor varying fastest."""
    axes = [torch.arange(n) for n in grid.sizes]
    return torch.cartesian_prod(*axes).reshape(len(grid), len(axes))


def render(factors: Tensor, grid: ShapesGrid) -> Tensor:
    """(N, 1, S, S) uint8 0/255 images of the (N, 5) factor indices in `factors`."""
    size = grid.image_size
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    py, px = torch.meshgrid(centres, centres, indexing="ij")  # (S, S), row = y
    scales = torch.linspace(_MIN_SCALE, 1.0, grid.scales) if grid.scales > 1 else torch.ones(1)
    angles = torch.arange(grid.orientations) * (2 * math.pi / grid.orientations)
    places = torch.linspace(_MARGIN, 1 - _MARGIN, grid.positions)
    out = torch.empty(len(factors), 1, size, size, dtype=torch.uint8)
    for shape, inside in enumerate(_INSIDE[: grid.shapes]):
        (rows,) = (factors[:, 0] == shape).nonzero(as_tuple=True)
        for chunk in rows.split(_CHUNK):
            f = factors[chunk]
            half = (_HALF_SIZE * scales[f[:, 1]])[:, None, None]
            angle = angles[f[:, 2]][:, None, None]
            dx = px - places[f[:, 3]][:, None, None]
            dy = py - places[f[:, 4]][:, None, None]
            # The pixel in the shape's own frame: rotated back by the angle, in half-sizes.
            cos, sin = torch.cos(angle), torch.sin(angle)
            u = (cos * dx + sin * dy) / half
            v = (cos * dy - sin * dx) / half
            out[chunk, 0] = inside(u, v).to(torch.uint8) * 255
    return out


def _heart(u: Tensor, v: Tensor) -> Tensor:
    """The heart curve (x² + y² − 1)³ − x²y³ ≤ 0, point down (image rows grow downward),
    scaled to about the square's extent."""
    x, y = 1.15 * u, -1.15 * v + 0.12
    return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0


# Whether each pixel (u, v), in the shape's frame and half-sizes, is inside: in SHAPES order.
_INSIDE = (
    lambda u, v: torch.maximum(u.abs(), v.abs()) <= 1,  # square
    lambda u, v: u**2 + 4 * v**2 <= 1,  # ellipse, semi-axes 1 and 1/2
    _heart,
)


def load_shapes(root: Path, grid: ShapesGrid) -> tuple[Tensor, Tensor, str]:
    """(images, factors, source) of the whole grid, from `root/Shapes/` if generated
    before, else rendered and cached there.

    The cache is written to a temporary name and renamed, so a kill or a second process
    never leaves a partial file under the cache's name.
    """
    folder = root / "Shapes"
    cache = folder / f"shapes-{grid.key()}.pt"
    if cache.is_file():
        try:
            stored = torch.load(cache, weights_only=True)
            images, factors = stored["images"], stored["factors"]
        except Exception as err:  # torch.load raises many kinds for a damaged file
            raise DataError(
                f"{cache} is not a readable shapes cache ({type(err).__name__}); delete it "
                "and the next run generates it again"
            ) from None
        source = f"cache:{cache}"
    else:
        factors = factor_grid(grid)
        images = render(factors, grid)
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".shapes-", suffix=".partial")
        os.close(fd)
        try:
            torch.save({"images": images, "factors": factors, "grid": grid.__dict__}, tmp)
            Path(tmp).replace(cache)
        finally:
            Path(tmp).unlink(missing_ok=True)
        source = f"generated:{cache}"
    return images, factors, source


def load_generated_shapes(
    root: Path, image_size: int | None, grid: Mapping[str, int] | None
) -> DatasetSplits:
    """data=shapes: the generated ground-truth set (this module), its factors as labels."""
    fields = dict(grid or {})
    factors = {f.name for f in dataclasses.fields(ShapesGrid)} - {"image_size"}
    unknown = sorted(set(fields) - factors)
    if unknown:
        raise ConfigError(
            f"data.grid.{unknown[0]} is not a factor of data=shapes: give shapes, scales, "
            "orientations or positions"
        )
    if image_size is not None:
        fields["image_size"] = image_size
    images, factors, source = load_shapes(root, ShapesGrid(**fields))
    return held_out_splits(images, factors, source, FACTORS)

"""Pictures of a VAE: image grids, latent paths to decode, the latent-space scatter, labelled
rows of a grid (the comparison charts of `vaelab compare` are in `vaelab.report.charts`).

Pure functions: tensors or plain numbers in, grid tensors or matplotlib Figures out. Images
are float (N, C, H, W) in [0, 1]; grids are (3, H', W') as returned by
`torchvision.utils.make_grid`.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor
from torch.distributions import Normal
from torchvision.utils import make_grid, save_image

# Grey borders separate tiles on both black (MNIST) and white backgrounds.
PADDING = 2
PAD_VALUE = 0.5


def image_grid(images: Tensor, nrow: int = 8) -> Tensor:
    """Tile (N, C, H, W) images in [0, 1], `nrow` per row, into a (3, H', W') grid."""
    images = images.detach().float().cpu().clamp(0, 1)
    return make_grid(images, nrow=nrow, padding=PADDING, pad_value=PAD_VALUE)


def reconstruction_grid(x: Tensor, x_rec: Tensor, nrow: int = 8) -> Tensor:
    """(3, H', W') grid where each row of `nrow` inputs is followed by its reconstructions.

    Args:
        x: (N, C, H, W) inputs in [0, 1].
        x_rec: (N, C, H, W) reconstructions (e.g. the likelihood's mean) in [0, 1].
        nrow: images per row; a last partial row is filled with blank tiles.
    """
    if x.shape != x_rec.shape:
        raise ValueError(f"inputs {tuple(x.shape)} and reconstructions {tuple(x_rec.shape)} differ")
    rows = -(-x.shape[0] // nrow)
    blank = x.new_full((rows * nrow - x.shape[0], *x.shape[1:]), PAD_VALUE)
    pairs = [torch.cat([t.detach(), blank]).view(rows, nrow, *x.shape[1:]) for t in (x, x_rec)]
    return image_grid(torch.stack(pairs, dim=1).flatten(0, 2), nrow=nrow)


def interpolation_latents(z_start: Tensor, z_end: Tensor, steps: int) -> Tensor:
    """(P*steps, D) straight lines from each (P, D) `z_start` to `z_end`, endpoints included.

    Row-major: `image_grid(decode(z), nrow=steps)` shows one pair per row.
    """
    if steps < 2:
        raise ValueError(f"steps must be >= 2 to include both endpoints, got {steps}")
    t = torch.linspace(0, 1, steps, device=z_start.device, dtype=z_start.dtype)[None, :, None]
    # (1 - t) * a + t * b, unlike a + t * (b - a), hits both endpoints exactly.
    return ((1 - t) * z_start[:, None] + t * z_end[:, None]).flatten(0, 1)


def traversal_latents(z_ref: Tensor, dims: Sequence[int], values: Tensor) -> Tensor:
    """(len(dims)*V, D) copies of `z_ref` (D,); grid row i sets dim `dims[i]` to `values` (V,)."""
    z = z_ref.detach().repeat(len(dims), len(values), 1)
    for row, dim in enumerate(dims):
        z[row, :, dim] = values.to(z)
    return z.flatten(0, 1)


def most_informative_dims(kl_per_dim: Tensor, k: int) -> list[int]:
    """Indices of the `k` latent dims with the largest KL, most used first.

    Args:
        kl_per_dim: (D,) mean KL per dimension in nats, or (B, D), averaged over B here.
        k: how many dims; at most D are returned.
    """
    kl = kl_per_dim.detach().reshape(-1, kl_per_dim.shape[-1]).float().mean(0)
    return torch.sort(kl, descending=True, stable=True).indices[:k].tolist()


def manifold_latents(n: int, quantile: float = 0.05, prior_draws: Tensor | None = None) -> Tensor:
    """(n*n, 2) codes on the quantile grid of Kingma & Welling's 2-D manifold figure.

    Coordinates are the prior's marginal quantiles at `linspace(quantile, 1 - quantile, n)`:
    `Normal(0, 1).icdf` for N(0, I), or, for another prior, the empirical quantiles of
    `prior_draws` (N, 2). Row-major from the top: `image_grid(decode(z), nrow=n)` has z1
    increasing left to right and z2 increasing bottom to top.
    """
    if not 0 < quantile < 0.5:
        raise ValueError(f"quantile must be in (0, 0.5), got {quantile}")
    p = torch.linspace(quantile, 1 - quantile, n, dtype=torch.float64)
    if prior_draws is None:
        z1 = z2 = Normal(0.0, 1.0).icdf(p).float()
    else:
        z1, z2 = torch.quantile(prior_draws.detach().double().cpu(), p, dim=0).float().T
    return torch.stack([z1.repeat(n), z2.flip(0).repeat_interleave(n)], dim=1)


def project_2d(z: Tensor) -> Tensor:
    """(N, 2) view of (N, D) codes: z itself for D == 2 (zero-padded for D == 1), else PCA.

    PCA scores use the top two right singular vectors of the centred data, each signed so
    that its largest-magnitude loading is positive, so repeated calls agree.
    """
    z = z.detach().float().cpu()
    if z.shape[1] <= 2:
        return F.pad(z, (0, 2 - z.shape[1]))
    centred = z - z.mean(0)
    components = torch.linalg.svd(centred, full_matrices=False).Vh[:2]
    peak = components.abs().argmax(1, keepdim=True)
    components = components * components.gather(1, peak).sign()
    scores = centred @ components.T
    return F.pad(scores, (0, 2 - scores.shape[1]))  # N == 1 has a single component


def latent_scatter(
    z: Tensor, labels: Tensor | None, title: str = "", name: str = "label"
) -> Figure:
    """Scatter of (N, D) codes (via `project_2d`) coloured by (N,) labels 0..9 (digits,
    or a factor's values), `name` the legend's title; in one colour without labels (None).

    With D == 1 there is no second coordinate to draw: each label gets a strip of its
    codes along z1 instead, the points jittered within the strip so that they overlap less.
    """
    fig = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    unlabelled = labels is None
    colours = np.zeros(len(z), np.int64) if unlabelled else labels.detach().cpu().numpy()
    style = {"c": colours, "cmap": "tab10", "vmin": -0.5, "vmax": 9.5, "s": 4, "alpha": 0.8}
    if z.shape[1] == 1:
        # A fixed generator: the same codes give the same picture at every epoch.
        jitter = torch.rand(len(colours), generator=torch.Generator().manual_seed(0)) - 0.5
        x = z[:, 0].detach().float().cpu().numpy()
        ax.scatter(x, colours + 0.6 * jitter.numpy(), linewidths=0, **style)
        shown = sorted(set(colours.tolist()))
        ax.set_yticks(*(([], []) if unlabelled else (shown, [str(label) for label in shown])))
        ax.set_xlabel("z1")
        ax.set_ylabel("" if unlabelled else name)
        ax.set_title(title)
        return fig
    xy = project_2d(z).numpy()
    points = ax.scatter(xy[:, 0], xy[:, 1], linewidths=0, **style)
    if not unlabelled:
        handles, names = points.legend_elements(prop="colors", alpha=1.0)
        ax.legend(handles, names, title=name, loc="center left", bbox_to_anchor=(1.0, 0.5))
    prefix = "z" if z.shape[1] <= 2 else "PC"
    ax.set_xlabel(f"{prefix}1")
    ax.set_ylabel(f"{prefix}2")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(title)
    return fig


def labelled_rows(grid: Tensor, labels: Sequence[str], title: str = "") -> Figure:
    """A (3, H, W) grid of `len(labels)` rows as a Figure, each row labelled on its left."""
    rows = len(labels)
    height, width = grid.shape[1:]
    side = 6 / max(height, width)  # inches per pixel: the longer side 6 inches
    fig = Figure(figsize=(1.8 + width * side, 0.5 + height * side), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    row = (height - PADDING) / rows
    ax.set_yticks([PADDING / 2 + row * (i + 0.5) for i in range(rows)], labels)
    ax.set_xticks([])
    ax.tick_params(length=0)
    ax.set_title(title, fontsize="medium")
    return fig


def save_png(image: Tensor | Figure, path: str | Path) -> Path:
    """Write a (3, H, W) grid or a Figure (at 120 dpi) to `path`, creating parent dirs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, Figure):
        image.savefig(path, dpi=120)
    else:
        save_image(image, path)
    return path

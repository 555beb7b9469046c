"""Naive vs importance-sampled estimates of log p(x) as the number of samples K grows.

    python experiments/estimators/compare.py outputs/runs/<run> --images 100 --repeats 3

Writes results.csv, results.md and estimators.png next to this file (or --out).
"""

import argparse
import csv
from pathlib import Path

import torch
from matplotlib.figure import Figure

from vaelab.api import run_datamodule
from vaelab.estimators import iw_log_likelihood, naive_log_likelihood
from vaelab.lit_module import LitVAE
from vaelab.runs import find_checkpoint


def test_images(run_dir: Path, n: int, data_dir: str | None) -> torch.Tensor:
    datamodule = run_datamodule(run_dir, data_dir=data_dir)
    datamodule.prepare_data()
    datamodule.setup("test")
    return datamodule.test_images(n)[0]


def estimate(vae, x: torch.Tensor, ks: list[int], repeats: int) -> list[dict]:
    rows = []
    for k in ks:
        for name, estimator in (
            ("importance", lambda k: iw_log_likelihood(vae, x, k)[0]),
            ("naive", lambda k: naive_log_likelihood(vae, x, k)),
        ):
            values = torch.stack([estimator(k).mean() for _ in range(repeats)])
            rows.append(
                {
                    "K": k,
                    "estimator": name,
                    "log_px": values.mean().item(),
                    "std": values.std().item() if repeats > 1 else 0.0,
                }
            )
            print(rows[-1], flush=True)
    return rows


def elbo(vae, x: torch.Tensor, samples: int = 100) -> float:
    with torch.no_grad():
        rec, kl = vae.elbo_terms(x, samples)
    return (rec - kl).mean().item()


def plot(rows: list[dict], elbo_value: float, title: str) -> Figure:
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for name, style in (("importance", "o-"), ("naive", "s--")):
        sel = [r for r in rows if r["estimator"] == name]
        ax.errorbar(
            [r["K"] for r in sel],
            [r["log_px"] for r in sel],
            yerr=[r["std"] for r in sel],
            fmt=style,
            capsize=3,
            label=f"{name} sampling",
        )
    ax.axhline(elbo_value, color="grey", ls=":", label="ELBO")
    ax.set_xscale("log")
    ax.set_xlabel("K, samples per image")
    ax.set_ylabel("estimated log p(x) (nats / image)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 10, 100, 1000, 5000])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model = LitVAE.load_from_checkpoint(find_checkpoint(args.run_dir), map_location="cpu")
    vae = model.vae.eval()
    x = test_images(args.run_dir, args.images, args.data_dir)
    rows = estimate(vae, x, args.ks, args.repeats)
    elbo_value = elbo(vae, x)

    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    hp = model.hparams
    title = f"{type(model.vae).__name__}, latent_dim={hp.latent_dim}, {len(x)} test images"
    lines = [
        f"{title}; ELBO = {elbo_value:.2f} nats",
        "",
        "| K | importance sampling | naive (prior) sampling |",
        "| ---: | ---: | ---: |",
    ]
    for k in args.ks:
        iw, naive = (
            next(r for r in rows if r["K"] == k and r["estimator"] == e)
            for e in ("importance", "naive")
        )
        lines.append(
            f"| {k} | {iw['log_px']:.2f} ± {iw['std']:.2f} "
            f"| {naive['log_px']:.2f} ± {naive['std']:.2f} |"
        )
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    plot(rows, elbo_value, title).savefig(args.out / "estimators.png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

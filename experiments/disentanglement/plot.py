"""The figure of experiments/disentanglement/: disentanglement and test nll against beta.

    python experiments/disentanglement/plot.py outputs/multiruns/<time> experiments/disentanglement

Reads the sweep with vaelab.load_runs (mean and std over the seeds of each objective and
beta) and draws MIG, DCI disentanglement and the FactorVAE score beside test nll_iwae.
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import vaelab

PANELS = {
    "test/mig": "MIG",
    "test/dci_disentanglement": "DCI disentanglement",
    "test/factor_vae": "FactorVAE score",
    "test/nll_iwae": "test nll_iwae (nats, K = 100)",
}
NAMES = {"ElboObjective": "β-VAE", "BetaTCObjective": "β-TCVAE"}


def main(sweep: str, out: str) -> None:
    runs = vaelab.load_runs(sweep)
    table = runs.summary(by=["objective._target_", "beta"])
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.4))
    for ax, (metric, title) in zip(axes, PANELS.items(), strict=True):
        for target, rows in table.groupby(level=0):
            rows = rows.droplevel(0).sort_index()
            name = NAMES[target.rsplit(".", 1)[-1]]
            mean, std = rows[(f"metrics.{metric}", "mean")], rows[(f"metrics.{metric}", "std")]
            ax.errorbar(rows.index, mean, yerr=std, marker="o", capsize=3, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("β")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("data=shapes at 32 px, 12 epochs, mean ± std over 2 seeds")
    fig.tight_layout()
    path = Path(out) / "disentanglement_vs_beta.png"
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")
    columns = [(f"metrics.{m}", s) for m in PANELS for s in ("mean", "std")]
    print(table[columns].round(4).to_string())


if __name__ == "__main__":
    main(*sys.argv[1:3])

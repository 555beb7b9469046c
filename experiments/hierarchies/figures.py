"""The hierarchies study's table and plot from its run directories (run.sh's LOG_DIR/runs).

    python experiments/hierarchies/figures.py /work/study-runs/hierarchies/runs

Prints the Markdown table of README.md and writes nll_vs_depth.png beside this file: test
nll (K = 100) of model=topdown against its number of layers, model=hvae as a line, and the
Exemplar VAE table's figures (Norouzi et al. 2020, 2,000 epochs) for scale.
"""

import re
import statistics
import sys
from pathlib import Path

from matplotlib.figure import Figure

from vaelab.runs import Run

HERE = Path(__file__).parent
# Norouzi et al. (2020), Table 2, dynamically binarized Fashion-MNIST, K = 5,000, nats.
PAPER = {"VAE, Gaussian prior": 228.70, "HVAE, Gaussian prior": 227.37}
# experiments/exemplar_fmnist (vaelab, 30 epochs of 500 steps, K = 5,000, 2,048 images).
OURS_30_EPOCHS = {"VAE, Gaussian prior": 233.41, "HVAE, Gaussian prior": 231.65}
KEYS = ("test/nll_iwae", "test/elbo", "test/kl", "test/active_units", "val/elbo")


def main(root: Path) -> None:
    rows = {}
    for run_dir in sorted(p for p in root.iterdir() if (p / "metrics.json").is_file()):
        run = Run(run_dir)
        metrics, config = run.metrics(), run.config()
        depth = config["model"].get("depth") or 2  # hvae: two layers
        layers = [k for k in metrics if k.startswith("test/kl_z")]
        kls = " / ".join(f"{metrics[k]:.1f}" for k in sorted(layers, key=lambda k: int(k[9:])))
        units = [k for k in metrics if k.startswith("test/active_units_z")]
        active = " / ".join(f"{metrics[k]:.0f}" for k in sorted(units, key=lambda k: int(k[19:])))
        history = run.history()
        rows[run_dir.name] = (depth, metrics, kls, active, history)

    print(
        "| run | layers | test nll (K = 100) | test ELBO | test KL | KL per layer, z1 first "
        "| active units (per layer) | best val ELBO | steps |"
    )
    print("| --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: |")
    for name, (depth, m, kls, active, history) in rows.items():
        steps = history[-1]["step"] if history else 0
        print(
            f"| {name} | {depth} | {m['test/nll_iwae']:.2f} | {m['test/elbo']:.2f} | "
            f"{m['test/kl']:.2f} | {kls or '—'} | {m['test/active_units']:.0f} ({active}) | "
            f"{m['val/elbo']:.2f} | {steps} |"
        )

    # Over seeds: run names are <model>_seed<n> (seed 0's first runs have no suffix).
    seeds: dict[str, list[float]] = {}
    for name, (_, m, *_) in rows.items():
        seeds.setdefault(re.sub(r"_seed\d+$", "", name), []).append(m["test/nll_iwae"])
    print("\n| model | layers | test nll per seed | mean |")
    print("| --- | ---: | --- | ---: |")
    depths = {re.sub(r"_seed\d+$", "", n): d for n, (d, *_) in rows.items()}
    for name, values in seeds.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {name} | {depths[name]} | {shown} | {statistics.mean(values):.2f} |")

    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.add_subplot()
    topdown = sorted(
        (depths[n], statistics.mean(v)) for n, v in seeds.items() if n.startswith("topdown")
    )
    ax.plot(*zip(*topdown, strict=True), "o-", label="model=topdown, mean over seeds")
    for name, values in seeds.items():
        if name.startswith("topdown"):
            ax.plot([depths[name]] * len(values), values, "x", color="C0")
        else:
            ax.axhline(statistics.mean(values), color="C1", ls="--", label="model=hvae, mean")
    for i, (name, value) in enumerate(PAPER.items()):
        ax.axhline(value, color=f"C{2 + i}", ls=":", label=f"{name}, paper (2,000 epochs)")
    for i, (name, value) in enumerate(OURS_30_EPOCHS.items()):
        ax.axhline(value, color=f"C{2 + i}", ls="-.", label=f"{name}, vaelab 30 epochs")
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 4, 8], ["1", "2", "4", "8"])
    ax.set_xlabel("stochastic layers (total latent size 40)")
    ax.set_ylabel("test nll, nats (lower is better)")
    ax.set_title("Fashion-MNIST, 800 steps of 100 images each")
    ax.legend(fontsize="small")
    fig.savefig(HERE / "nll_vs_depth.png", dpi=120)
    print(f"wrote {HERE / 'nll_vs_depth.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""Train a VAE: `python train.py model=conv latent_dim=16`, the same as `vaelab train ...`.

See README.md and conf/train.yaml.
"""

from vaelab.cli import train

if __name__ == "__main__":
    train()

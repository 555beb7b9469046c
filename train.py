"""Train a VAE: `python train.py model=conv latent_dim=16`. See README.md and conf/train.yaml."""

from vaelab.train import main

if __name__ == "__main__":
    main()

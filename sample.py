"""Draw samples of a trained run: `python sample.py run_dir=outputs/runs/<run> n=64 seed=0`.

The same as `vaelab sample ...`; see conf/sample.yaml.
"""

from vaelab.cli import sample

if __name__ == "__main__":
    sample()

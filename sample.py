"""Draw samples of a trained run: `python sample.py run_dir=outputs/runs/<run> n=64 seed=0`.

See conf/sample.yaml.
"""

from vaelab.sample import main

if __name__ == "__main__":
    main()

"""Test a trained run again: `python eval.py run_dir=outputs/runs/<run> n_importance=5000`.

See README.md and conf/eval.yaml.
"""

from vaelab.evaluate import main

if __name__ == "__main__":
    main()

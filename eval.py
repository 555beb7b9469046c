"""Test a trained run again: `python eval.py run_dir=outputs/runs/<run> n_importance=5000`.

The same as `vaelab eval ...`; see README.md and conf/eval.yaml.
"""

from vaelab.cli import evaluate

if __name__ == "__main__":
    evaluate()

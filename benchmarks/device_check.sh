#!/usr/bin/env bash
# The GPU check of benchmarks/device_check.py, offline, in about 8 minutes: prints one table.
#
#   bash benchmarks/device_check.sh             # on a machine with GPUs
#   bash benchmarks/device_check.sh --dry-run   # on a CPU, a few batches: that it runs
#
# What a bare GPU machine lacks travels with the repository, prepared on a machine online:
#   .whl/   wheels of hydra-core, omegaconf and antlr4-python3-runtime (W&B and mlxtend are
#           not needed: logger=none, and Fashion-MNIST is read from its IDX files), e.g.
#             python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#               -d .whl hydra-core==1.3.2 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3
#           (antlr4-python3-runtime 4.9.3 has no wheel: build one with `pip wheel`);
#   data/FashionMNIST/raw/   the four IDX files (e.g. from Debian's dataset-fashion-mnist),
#           or .devdata/ holding them gzipped, unpacked here.
# Keep both out of git (e.g. in .git/info/exclude) and copy them with the working tree.
set -euo pipefail
python="${PYTHON:-python3}"  # the Python that has torch and lightning
cd "$(dirname "$0")/.."

if compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/vaelab-site .whl/*.whl
    export PYTHONPATH="/tmp/vaelab-site${PYTHONPATH:+:$PYTHONPATH}"
fi
if compgen -G ".devdata/*.gz" >/dev/null; then
    mkdir -p data/FashionMNIST/raw
    for f in .devdata/*.gz; do
        target="data/FashionMNIST/raw/$(basename "$f" .gz)"
        [ -f "$target" ] || gunzip -c "$f" >"$target"
    done
fi
export WANDB_MODE=offline PYTHONUNBUFFERED=1
exec timeout 480 "$python" benchmarks/device_check.py "$@"

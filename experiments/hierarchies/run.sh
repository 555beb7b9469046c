#!/usr/bin/env bash
# The hierarchies study (experiments/hierarchies/README.md): 1, 2, 4 and 8 stochastic layers
# of model=topdown with the same total latent size (40) and training budget (4 epochs of
# 200 steps of 100 images), beside model=hvae (z1 and z2 of 20), on dynamically binarized
# Fashion-MNIST; SEED=0 and SEED=1 (two calls). Two lanes of one thread each at low priority (the machine is shared): the
# 8-layer run alone in one, the others one after another in the other.
set -euo pipefail
cd "$(dirname "$0")/../.."
LOG_DIR=${LOG_DIR:-/work/study-runs/hierarchies}
DATA_DIR=${DATA_DIR:-/work/study-runs/data}
SEED=${SEED:-0}
COMMON=(
  data=fashion_mnist data.val_size=10000 "paths.data_dir=$DATA_DIR" "paths.log_dir=$LOG_DIR"
  likelihood=bernoulli batch_size=100 lr=5.0e-4 optimizer=adam_normgrad
  model.hidden_dim=300 model.activation=gated
  max_epochs=4 trainer.limit_train_batches=200 kl_warmup_epochs=1 "seed=$SEED"
  trainer.limit_val_batches=4 trainer.limit_test_batches=4 n_importance=100
  trainer.max_time=00:00:25:00
  logger=csv callbacks.pictures.every_n_epochs=100 group=hierarchies
)
run() {  # name, overrides...
  local name=${1}_seed$SEED; shift
  OMP_NUM_THREADS=1 nice -n 10 "${PYTHON:-python}" train.py "${COMMON[@]}" "run_name=$name" \
    "hydra.run.dir=$LOG_DIR/runs/$name" "$@" \
    > "$LOG_DIR/$name.out" 2>&1
}
mkdir -p "$LOG_DIR"
run topdown_L8 model=topdown model.depth=8 latent_dim=5 &
{
  run topdown_L1 model=topdown model.depth=1 latent_dim=40
  run topdown_L2 model=topdown model.depth=2 latent_dim=20
  run hvae model=hvae latent_dim=20 model.top_dim=20
  run topdown_L4 model=topdown model.depth=4 latent_dim=10
} &
wait

#!/usr/bin/env bash
# Entrypoint of every sweep job; the runtime env names the space and the output folder:
#   ray job submit --address http://HEAD:8265 --runtime-env jobs/runtime_env_toy.yaml -- bash jobs/sweep.sh
# Extra arguments go to `raybilevel tune`, e.g. --trials 4, --set train.steps=50, or --resume to continue
# an interrupted sweep (submit the same job again with it). Inside a job RAY_ADDRESS is set, so the sweep
# runs on the job's cluster.
set -euo pipefail
exec python -m raybilevel tune --space "${SWEEP_SPACE:?set SWEEP_SPACE in the runtime env}" \
    --output "${SWEEP_OUTPUT:?set SWEEP_OUTPUT in the runtime env: a folder every node sees}" "$@"

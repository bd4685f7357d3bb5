#!/usr/bin/env bash
# One command: set up .venv, then run the main job - an RL (HAQ) search of the embedded
# default model on the BISMO edge accelerator model under 0.6x uniform-8 latency (300 episodes,
# the default: the 8x8 model needs fewer than HAQ's 600), printing the chosen policy and its
# run directory. Extra arguments go to
# `haq search` (e.g. bash scripts/run.sh --out runs/again --seed 1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/haq search "$@"

#!/bin/bash
# A Gantry study over a Slurm job array: each array task runs one shard
# (`gantry study --shard env` reads SLURM_ARRAY_TASK_ID, _MIN and _COUNT,
# which Slurm sets), writing shard-I-of-N.json into $SHARD_DIR; once all
# tasks are done, `gantry merge` puts them together into the same bytes a
# single `gantry study` writes (docs/LANGUAGE.md, "Sharded studies").
#
#   jobid=$(sbatch --parsable examples/launch/slurm.sh)
#   sbatch --dependency=afterok:$jobid \
#     --wrap 'gantry merge shards/shard-*.json --format json > study.json'
#
# Run from the repository (or any folder holding the study's files) on a
# shared filesystem, so every task and the merge see the same paths.
# The array size is the shard count: change `--array` alone to change it.
#
#SBATCH --job-name=gantry-study
#SBATCH --array=0-3
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=16
#SBATCH --time=01:00:00
#SBATCH --output=gantry-shard-%A_%a.log
set -euo pipefail

GANTRY=${GANTRY:-gantry}
STUDY_FILE=${STUDY_FILE:-examples/fleet_study.gantry}
SHARD_DIR=${SHARD_DIR:-shards}
# Extra flags for every shard, e.g. GANTRY_FLAGS=--sensitivity.
read -r -a flags <<< "${GANTRY_FLAGS:-}"

exec "$GANTRY" study "$STUDY_FILE" --shard env \
    --jobs "${SLURM_CPUS_PER_TASK:-0}" --out "$SHARD_DIR" "${flags[@]}"

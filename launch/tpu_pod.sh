#!/usr/bin/env bash
# Runs diffgen.main on every worker of an existing Cloud TPU VM pod slice, as one job:
#
#   launch/tpu_pod.sh --tpu=NAME --zone=ZONE [--project=PROJECT] [--repo_dir=DIR] [--dry-run] \
#       -- --config=FILE[:arg] --workdir=gs://BUCKET/PATH [--mode=MODE] [--config.k=v ...]
#
# It creates nothing: the pod must exist, and every worker must hold this repository at
# --repo_dir (default ~/diffgen) installed (pip install -e .) for $PYTHON (default python3).
# It runs, through `gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all`, the
# command `cd REPO_DIR && DIFFGEN_DISTRIBUTED=auto launch/local.sh ARGS` on all workers at
# once: diffgen.parallel.initialize() then starts jax.distributed, which reads the pod's
# topology from the TPU metadata, and the workers train one data-parallel model over all
# chips, each holding its own part of the training set. The workdir must be on GCS
# (gs://...), which every worker reads and writes; a relaunch of the same command resumes
# from its latest checkpoint. --dry-run prints the gcloud command instead of running it.
set -euo pipefail

tpu="" zone="" project="" repo_dir="~/diffgen" dry_run=0
while (( $# )); do
  case "$1" in
    --tpu=*) tpu="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --repo_dir=*) repo_dir="${1#*=}" ;;
    --dry-run) dry_run=1 ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: error: unknown option $1 (diffgen's arguments go after --)" >&2
       exit 2 ;;
  esac
  shift
done
if [[ -z "$tpu" || -z "$zone" ]]; then
  echo "tpu_pod.sh: error: --tpu=NAME and --zone=ZONE are required" >&2
  exit 2
fi
workdir=""
for arg in "$@"; do
  [[ "$arg" == --workdir=* ]] && workdir="${arg#*=}"
done
if [[ "$workdir" != gs://* ]]; then
  echo "tpu_pod.sh: error: --workdir must be on GCS (gs://...), which all workers share;" \
       "got '${workdir}'" >&2
  exit 2
fi

# The remote command: each of diffgen's arguments quoted for the workers' shell.
remote="cd ${repo_dir} && DIFFGEN_DISTRIBUTED=auto ${PYTHON:+PYTHON=$(printf '%q' "$PYTHON") }launch/local.sh"
for arg in "$@"; do
  remote+=" $(printf '%q' "$arg")"
done
command=(gcloud compute tpus tpu-vm ssh "$tpu" "--zone=$zone" --worker=all
         "--command=$remote")
[[ -n "$project" ]] && command+=("--project=$project")
if (( dry_run )); then
  printf '%q ' "${command[@]}"
  echo
  exit 0
fi
exec "${command[@]}"

#!/usr/bin/env bash
# Runs diffgen.main on this machine (CPU or GPUs), from the repository root:
#
#   launch/local.sh [--cpu_devices=N] [--dry-run] --config=FILE[:arg] --workdir=DIR \
#       [--mode=MODE] [--config.section.key=value ...]
#
# Every GPU JAX sees is used (one data-parallel mesh over all of them); restrict them with
# CUDA_VISIBLE_DEVICES. --cpu_devices=N simulates N CPU devices (XLA's host-platform device
# count) to try the sharded code paths without an accelerator. --dry-run prints the
# environment and command instead of running it. $PYTHON picks the interpreter (default
# python3). The remaining arguments go to diffgen.main unchanged.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dry_run=0
args=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    --cpu_devices=*)
      export JAX_PLATFORMS=cpu
      export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=${arg#*=}" ;;
    *) args+=("$arg") ;;
  esac
done

# TensorFlow only reads the data (on the CPU): keep its start-up logs and oneDNN notice quiet.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
export TF_ENABLE_ONEDNN_OPTS="${TF_ENABLE_ONEDNN_OPTS:-0}"
# Progress lines as they happen, also when the output goes to a log file.
export PYTHONUNBUFFERED=1

command=("${PYTHON:-python3}" -m diffgen.main "${args[@]}")
if (( dry_run )); then
  echo "JAX_PLATFORMS=${JAX_PLATFORMS:-} XLA_FLAGS=${XLA_FLAGS:-}"
  printf '%q ' "${command[@]}"
  echo
  exit 0
fi
cd "$repo"
exec "${command[@]}"

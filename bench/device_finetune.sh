#!/usr/bin/env bash
# Trains runs prepared by `bench/finetune_torch.py prepare` (and the `dump_split` example)
# on a GPU machine that has PyTorch, NumPy and Pillow but no Rust: the `device` tool's.
#
#   bash bench/device_finetune.sh CARRY
#
# CARRY (a folder git ignores, named in the device call's `carry`) holds
#   cifar10/        ../shared/data/cifar10 (the JPEG archive, manifest.tsv, to_bins.py,
#                   BINS.sha256, batches.meta.txt: 22 MB); the binary batches are rebuilt
#                   there and checked against BINS.sha256, so the images are the ones the
#                   Rust side trains on
#   frozen.safetensors   the import (STUDY/runs/lite0-frozen-SIZE/model.safetensors, 18.6 MB)
#   runs/NAME/      config.json and split/ of each run
# and writes into $OUT, per run, NAME.safetensors (its weights, 13.5 MB: at most four runs
# per call fit the 64 MiB that comes back), and one logs.tar of every run's log.jsonl and
# state.json. `python3 bench/finetune_torch.py unpack OUT STUDY/runs` puts them in place.
set -euo pipefail
carry=${1:?usage: device_finetune.sh CARRY}
out=${OUT:-$carry/out}
export PYTHONUNBUFFERED=1
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 "$carry/cifar10/to_bins.py" /tmp/cifar10-bins
for run in "$carry"/runs/*/; do
    name=$(basename "$run")
    echo "==> $name"
    python3 bench/finetune_torch.py train "$run" --bins /tmp/cifar10-bins \
        --pretrained-weights "$carry/frozen.safetensors" 2>&1 | tee -a "$out/train.log"
    cp "$run/model.safetensors" "$out/$name.safetensors"
    tar rf "$out/logs.tar" -C "$carry/runs" "$name/log.jsonl" "$name/state.json"
done

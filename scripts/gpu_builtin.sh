#!/usr/bin/env bash
# Train the built-in model (autoencoder, then UNet) on one CUDA GPU in one call of about 9 minutes,
# on a machine with PyTorch but no network, and leave the results in $OUT (files <= 15 MB each).
#
# Here, first:  noisecraft data emoji --out data/emoji64-nst --no-skin-tones
#               python scripts/device_kit.py pack data/emoji64-nst .device-kit
# Then on the GPU machine (carry data/emoji64-nst and .device-kit):  bash scripts/gpu_builtin.sh
# Back here:    cat OUT/unet.part-* > runs/emoji-unet-gpu.safetensors   (then eval, ship_builtin.py)
#
# VAE_SECONDS / UNET_SECONDS set each run's training time; a 60-step calibration run measures
# images/s first, and train.steps is chosen to fill the time (the cosine schedule then ends on time).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-out/gpu}"
VAE_SECONDS="${VAE_SECONDS:-150}"
UNET_SECONDS="${UNET_SECONDS:-300}"
DEVICE="${DEVICE:-auto}"
PY="${PYTHON:-python3}"
CALIBRATE_STEPS="${CALIBRATE_STEPS:-60}"   # smaller values only to test this script on a CPU
MIN_STEPS="${MIN_STEPS:-100}"
mkdir -p "$OUT"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/gpu_builtin.log"; }

[ -f data/emoji64-nst/metadata.jsonl ] || { echo "no data/emoji64-nst: carry it (see the top of this script)"; exit 2; }
"$PY" scripts/device_kit.py unpack .device-kit /tmp/noisecraft-minilm
export NOISECRAFT_MINILM_DIR=/tmp/noisecraft-minilm
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee -a "$OUT/gpu_builtin.log"

# train CONFIG SECONDS: a short calibration run, then one run sized to SECONDS. A patch GAN (VAE)
# is on during calibration (so the rate is not overestimated) and joins halfway through the real run.
train() {
    local config=$1 seconds=$2 name batch rate steps gan=()
    name=$(basename "$config" .toml)
    batch=$("$PY" -c "import tomllib,sys; print(tomllib.load(open(sys.argv[1],'rb'))['train']['batch_size'])" "$config")
    "$PY" -m noisecraft.cli train "$config" --device "$DEVICE" --no-progress --no-resume --out "runs/$name-calibrate" \
        --steps "$CALIBRATE_STEPS" --set train.sample_every=0 --set train.checkpoint_every=100000 --set train.warmup_steps=10 \
        --set train.gan_start=0 >> "$OUT/gpu_builtin.log" 2>&1
    rate=$("$PY" -c "import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])['images_per_s'])" "runs/$name-calibrate/train_log.jsonl")
    steps=$("$PY" -c "import sys; print(max(int(sys.argv[4]), int(float(sys.argv[1]) * int(sys.argv[2]) / int(sys.argv[3]))))" "$rate" "$seconds" "$batch" "$MIN_STEPS")
    grep -q "^gan_weight" "$config" && gan=(--set "train.gan_start=$((steps / 2))")
    log "$name: $rate images/s in calibration -> $steps steps of $batch for ${seconds}s"
    rm -rf "runs/$name" && mkdir -p "runs/$name" && cp -r "runs/$name-calibrate/cache" "runs/$name/" 2>/dev/null || true  # latents and text states once
    "$PY" -m noisecraft.cli train "$config" --device "$DEVICE" --no-progress --no-resume --out "runs/$name" --steps "$steps" "${gan[@]}" >> "$OUT/gpu_builtin.log" 2>&1
    log "$name: done; last log line: $(tail -1 "runs/$name/train_log.jsonl")"
}

train configs/emoji-vae-gpu.toml "$VAE_SECONDS"
train configs/emoji-unet-gpu.toml "$UNET_SECONDS"

"$PY" - "$OUT" <<'PY'
import sys, torch
from pathlib import Path
from noisecraft.checkpoints import load_model_file, save_model_file
out = Path(sys.argv[1])
config, parts, _ = load_model_file("runs/emoji-unet-gpu/model.safetensors")
file = save_model_file(out / "unet-fp16.safetensors", config, parts, dtype=torch.float16)
print(file, file.stat().st_size)
PY
split -b 15000000 -d "$OUT/unet-fp16.safetensors" "$OUT/unet.part-" && rm "$OUT/unet-fp16.safetensors"
cp runs/emoji-vae-gpu/train_log.jsonl "$OUT/vae_train_log.jsonl"
cp runs/emoji-unet-gpu/train_log.jsonl "$OUT/unet_train_log.jsonl"
log "results in $OUT: $(ls "$OUT" | tr '\n' ' ')"

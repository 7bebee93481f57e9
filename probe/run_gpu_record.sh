#!/usr/bin/env bash
# One prepared `memfit probe` session for a lent GPU machine: the question CNN, ResNet-50 and VGG-16 at
# a few batch sizes (including ones that cannot fit on any single GPU of today) and --max-batch, each as
# text and JSON, with nvidia-smi and the driver/CUDA versions. Everything goes under $OUT (default
# ./probe-records). Run from the repository root:   OUT=/some/dir bash probe/run_gpu_record.sh
# Uses $MEMFIT (default build/memfit); builds it first if it is missing. Every probe has a time limit
# and frees all it allocated; the whole script takes well under two minutes on an H100.
set -u
OUT=${OUT:-./probe-records}
MEMFIT=${MEMFIT:-build/memfit}
mkdir -p "$OUT"
log() { echo "$*" | tee -a "$OUT/summary.txt"; }

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(hostname)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown) $(git status --porcelain 2>/dev/null | wc -l) changed files"
  echo "--- nvidia-smi"; nvidia-smi 2>&1
  echo "--- nvidia-smi --query-gpu"
  nvidia-smi --query-gpu=name,pci.bus_id,memory.total,memory.used,memory.free,driver_version,compute_cap \
    --format=csv 2>&1
  echo "--- /proc/driver/nvidia/version"; cat /proc/driver/nvidia/version 2>&1
  echo "--- nvcc --version"; (nvcc --version || /usr/local/cuda/bin/nvcc --version) 2>&1
} > "$OUT/environment.txt"

if [ ! -x "$MEMFIT" ]; then
  log "building $MEMFIT"
  { cmake -S . -B build -DMEMFIT_BENCH=OFF && make -C build -j"$(nproc)" memfit; } > "$OUT/build.log" 2>&1 \
    || { log "build failed: see build.log"; exit 3; }
fi

# name  memfit-arguments
runs=(
  "question_cnn-b64            question_cnn --batch 64"
  "question_cnn-b4096          question_cnn --batch 4096"
  "question_cnn-maxbatch       question_cnn --max-batch"
  "resnet50-b32                resnet50 --batch 32"
  "resnet50-b128               resnet50 --batch 128"
  "resnet50-b256-adam          resnet50 --batch 256 --optimizer adam"
  "resnet50-b1024              resnet50 --batch 1024"
  "resnet50-b4096-nofit        resnet50 --batch 4096"
  "resnet50-maxbatch           resnet50 --max-batch"
  "vgg16-b32                   vgg16 --batch 32"
  "vgg16-b128                  vgg16 --batch 128"
  "vgg16-b4096-nofit           vgg16 --batch 4096"
  "vgg16-maxbatch              vgg16 --max-batch"
)
log "memfit probe records in $OUT ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))"
for r in "${runs[@]}"; do
  read -r name args <<< "$r"
  # shellcheck disable=SC2086  # args are words on purpose
  timeout 150 "$MEMFIT" probe $args --time-limit 60 > "$OUT/$name.txt" 2> "$OUT/$name.stderr.txt"
  rc_text=$?
  # shellcheck disable=SC2086
  timeout 150 "$MEMFIT" probe $args --time-limit 60 --json > "$OUT/$name.json" 2>> "$OUT/$name.stderr.txt"
  rc_json=$?
  log "$(printf '%-26s exit %s (json exit %s): memfit probe %s' "$name" "$rc_text" "$rc_json" "$args")"
done
nvidia-smi --query-gpu=memory.used,memory.free --format=csv > "$OUT/after.txt" 2>&1
log "done; memory after (should match before): $(tail -1 "$OUT/after.txt")"

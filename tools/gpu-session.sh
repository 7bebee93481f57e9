#!/usr/bin/env bash
# The one prepared script for a lent GPU machine (about 11 minutes): PyTorch reference runs of every
# model (tools/gpu_reference.py: max_memory_allocated/reserved for iteration 1 and a steady-state
# iteration, NVML process memory, CUDA context, largest batch under 8 and 16 GiB caps) and the memfit
# probe (probe/run_gpu_record.sh), and per-convolution cuDNN workspaces (tools/gpu_cudnn_workspace.py).
# Everything goes under $OUT. Run from the repository root:
#   OUT=/some/dir bash tools/gpu-session.sh
# Afterwards, on the development machine:
#   cp $OUT/gpu_reference_models.json tests/reference/gpu/   (and the fixtures, gpu_transformers and
#   gpu_transformer_variants files)
#   cp -r $OUT/probe tests/reference/probe-records/<gpu>-<date>
#   /usr/bin/python3 tools/accuracy_report.py; build the tests; commit.
# The model JSON comes from tests/reference/models-json (no memfit binary needed for the PyTorch part);
# the probe uses build/memfit (carry it, or it is built here if cmake and the libraries exist).
set -u
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
start=$(date +%s)
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  nvidia-smi 2>&1
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())" 2>&1
} > "$OUT/environment.txt"

# PyTorch reference: models first (the budget skips what does not fit in time, and says so)
timeout 400 python3 tools/gpu_reference.py tests/reference/models-json/*.json --budget-s 360 \
  -o "$OUT/gpu_reference_models.json" > "$OUT/gpu_reference_models.log" 2>&1
echo "gpu_reference models: exit $? after $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
timeout 70 python3 tools/gpu_reference.py tests/reference/fixtures/*.json --budget-s 55 --no-maxbatch \
  -o "$OUT/gpu_reference_fixtures.json" > "$OUT/gpu_reference_fixtures.log" 2>&1
echo "gpu_reference fixtures: exit $? after $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"

# Transformer fixtures (tools/transformer_fixtures.py: GPT-2, Llama GQA, BERT, eager attention, batch 2):
# max_memory_allocated per iteration, SGD / Adam foreach / Adam for-loop; seconds, taken from the
# fixtures' budget above so the session's total stays the same.
timeout 30 python3 tools/transformer_fixtures.py cuda --batch 2 \
  -o "$OUT/gpu_transformers.json" > "$OUT/gpu_transformers.log" 2>&1
echo "transformer fixtures: exit $? after $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
# The same with checkpointing (every decoder layer, reentrant / non-reentrant) and LoRA (VARIANTS in the
# script: llama_tiny / gpt2_tiny, 8 variants x 3 optimizers x 3 iterations of a tiny model; a few seconds
# after CUDA starts, at most 30 s added to the session)
timeout 30 python3 tools/transformer_fixtures.py cuda-variants --batch 2 \
  -o "$OUT/gpu_transformer_variants.json" > "$OUT/gpu_transformer_variants.log" 2>&1
echo "transformer variants: exit $? after $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"

# cuDNN convolution workspaces per conv call (docs/cudnn-workspace.md): heuristics, capped, benchmark
timeout 100 python3 tools/gpu_cudnn_workspace.py --out "$OUT/cudnn_workspace.json" > "$OUT/cudnn_workspace.log" 2>&1
echo "cudnn workspaces: exit $? after $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"

# The probe: replays memfit's plan with cudaMalloc (needs the memfit binary with its CUDA backend)
OUT="$OUT/probe" timeout 150 bash probe/run_gpu_record.sh > "$OUT/probe.log" 2>&1
echo "probe: exit $? after $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"

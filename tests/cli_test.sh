#!/usr/bin/env bash
# CLI contract: exit status 0 fits / 1 does not fit / 2 bad input; JSON keys; errors name file:line.
set -u
BIN=$1
SRC=$2
# a directory of its own: parallel runs (CI, helpers' worktrees) must not overwrite each other's files
T=$(mktemp -d "${TMPDIR:-/tmp}/memfit_cli.XXXXXX")
trap 'rm -rf "$T"' EXIT
fail=0
pass=0
check() {  # name, expected exit, command...
  local name=$1 want=$2
  shift 2
  "$@" >$T/memfit_cli_out 2>$T/memfit_cli_err
  local rc=$?
  if [ "$rc" -ne "$want" ]; then
    echo "FAIL $name: exit $rc, expected $want"; cat $T/memfit_cli_err; fail=$((fail + 1))
  else
    pass=$((pass + 1))
  fi
}
check "estimate default model" 0 "$BIN" estimate
grep -q "4,632,902" $T/memfit_cli_out || { echo "FAIL: parameter count not shown"; fail=$((fail + 1)); }
check "fits on a 24GiB GPU" 0 "$BIN" estimate "$SRC/models/question_cnn.memfit" --gpu 24GiB
check "does not fit on 1GiB at batch 4096" 1 "$BIN" estimate --gpu 1GiB --batch 4096
grep -q "DOES NOT FIT" $T/memfit_cli_out || { echo "FAIL: no verdict"; fail=$((fail + 1)); }
check "json" 0 "$BIN" estimate --json --gpu "RTX 3090"
for key in '"layers"' '"output_shape"' '"saved_bytes"' '"totals"' '"saved_activation_bytes"' '"peak"' \
           '"allocated_bytes"' '"reserved_bytes"' '"device_bytes"' '"breakdown"' '"gpu"' '"memory_bytes"' \
           '"fits": true' '"headroom_bytes"'; do
  grep -q "$key" $T/memfit_cli_out || { echo "FAIL: JSON lacks $key"; fail=$((fail + 1)); }
done
check "max-batch json" 0 "$BIN" max-batch --gpu 8GiB --json
grep -q '"max_batch"' $T/memfit_cli_out || { echo "FAIL: no max_batch"; fail=$((fail + 1)); }
check "explain" 0 "$BIN" estimate --explain
grep -q "64 x 32 x 50 x 50 x 4 B = 20,480,000 B" $T/memfit_cli_out || { echo "FAIL: explain lacks conv1 arithmetic"; fail=$((fail + 1)); }
check "gpus" 0 "$BIN" gpus
check "checkpoint json" 0 "$BIN" estimate resnet18 --batch 8 --checkpoint 'layer*' --json
grep -q '"recompute_flops"' $T/memfit_cli_out || { echo "FAIL: no checkpoint object"; fail=$((fail + 1)); }
check "checkpoint names no region" 2 "$BIN" estimate resnet18 --checkpoint nothing
grep -q "matches no region" $T/memfit_cli_err || { echo "FAIL: checkpoint error unclear"; fail=$((fail + 1)); }
check "checkpoint impl unknown" 2 "$BIN" estimate resnet18 --checkpoint 'layer*' --checkpoint-impl maybe
check "max-seq" 0 "$BIN" max-seq "$SRC/tests/fixtures/seq_attention.json" --gpu 2GiB --batch 4 --json
grep -q '"max_seq"' $T/memfit_cli_out || { echo "FAIL: no max_seq"; fail=$((fail + 1)); }
check "max-seq without \$seq" 2 "$BIN" max-seq resnet18 --gpu 8GiB
check "max-seq without gpu" 2 "$BIN" max-seq "$SRC/tests/fixtures/seq_attention.json"
check "bad usage" 2 "$BIN" estimate --batch
check "bad batch" 2 "$BIN" estimate --batch zero
check "unknown gpu" 2 "$BIN" estimate --gpu potato
check "missing file" 2 "$BIN" estimate /nonexistent/model.memfit
printf 'input 8x8x3 layout=hwc\nconv 4 3x3\nfrobnicate\n' > $T/memfit_bad.memfit
check "bad model" 2 "$BIN" estimate $T/memfit_bad.memfit
grep -q "$T/memfit_bad.memfit:3:1: layer 'frobnicate1': unknown layer kind" $T/memfit_cli_err || { echo "FAIL: error position"; cat $T/memfit_cli_err; fail=$((fail + 1)); }
head -c 4096 /dev/urandom > $T/memfit_garbage.bin
check "binary garbage" 2 "$BIN" estimate $T/memfit_garbage.bin
# F9: a name that is not UTF-8 was an "internal error" (nlohmann type_error 316) when printed as JSON
printf 'input 16\n\xff\xfe: relu\n' > $T/memfit_utf8.memfit
check "ill-formed UTF-8" 2 "$BIN" model $T/memfit_utf8.memfit --json
grep -q "$T/memfit_utf8.memfit:2:1: the file is not UTF-8 here (byte 0xFF)" $T/memfit_cli_err || { echo "FAIL: UTF-8 error"; cat $T/memfit_cli_err; fail=$((fail + 1)); }
grep -q "internal error" $T/memfit_cli_err && { echo "FAIL: UTF-8 error is internal"; fail=$((fail + 1)); }
# a UTF-8 byte-order mark (as some Windows editors write) is skipped, in both forms
printf '\xef\xbb\xbfinput 16\nfc 4\n' > $T/memfit_bom.memfit
check "BOM text" 0 "$BIN" model $T/memfit_bom.memfit --json
printf '\xef\xbb\xbf{"layers": [{"name": "input", "kind": "input", "shape": [16]}, {"name": "f", "kind": "fc", "out_features": 4}]}' > $T/memfit_bom.json
check "BOM JSON" 0 "$BIN" estimate $T/memfit_bom.json
check "stdin" 0 bash -c "cat '$SRC/models/question_cnn.memfit' | '$BIN' estimate -"
# F6: standard input is read at most 16 MiB + 1 bytes (it was read until memory ran out).
check "stdin /dev/zero" 2 bash -c "'$BIN' estimate - < /dev/zero"
grep -q "larger than 16 MiB" $T/memfit_cli_err || { echo "FAIL: stdin /dev/zero message"; cat $T/memfit_cli_err; fail=$((fail + 1)); }
# F5: 2,000 rows with a 4,000-byte layer name: the table used to pad every row to the name (~8.2 MB of
# text); names are cut to 40 bytes, so a row is ~130 bytes and the whole output well under 1 MB.
{ echo "input 8"; echo "block b"; printf '  %s: relu\n' "$(head -c 4000 /dev/zero | tr '\0' n)"; echo "end"
  echo "r: repeat 2000 b"; echo "fc 2"; } > $T/memfit_long_names.memfit
# Fine-tuning flags (docs/fine-tuning.md): LoRA on the reference MLP, QLoRA + a paged 8-bit optimizer, errors
check "lora" 0 "$BIN" estimate "$SRC/tests/reference/fixtures/lora_mlp.memfit" --lora r=8,alpha=16,targets=fc1,fc2 --dtype bf16-true --json
grep -q '"lora": {' $T/memfit_cli_out || { echo "FAIL: settings.lora missing"; fail=$((fail + 1)); }
check "qlora paged" 0 "$BIN" estimate "$SRC/tests/reference/fixtures/lora_stack.memfit" --qlora --dtype bf16 --optimizer paged_adamw8bit --gpu 24GiB
grep -q "linear4bit" $T/memfit_cli_out || { echo "FAIL: no linear4bit layer"; fail=$((fail + 1)); }
check "lora no target" 2 "$BIN" estimate "$SRC/tests/reference/fixtures/lora_mlp.memfit" --lora targets=q_proj
grep -q "no layer matches the LoRA targets" $T/memfit_cli_err || { echo "FAIL: LoRA target message"; cat $T/memfit_cli_err; fail=$((fail + 1)); }
check "bad lora spec" 2 "$BIN" estimate --lora r=0
check "help lists fine-tuning flags" 0 bash -c "'$BIN' estimate --help | grep -q -- '--qlora' && '$BIN' estimate --help | grep -q -- '--lora-dtype' && '$BIN' estimate --help | grep -q -- '--grad-scaler'"
check "long layer names" 0 "$BIN" estimate $T/memfit_long_names.memfit
size=$(wc -c < $T/memfit_cli_out)
[ "$size" -lt 1000000 ] || { echo "FAIL: text output of long names is $size bytes"; fail=$((fail + 1)); }
grep -q "nnnnn\.\.\." $T/memfit_cli_out || { echo "FAIL: long names not ellipsized"; fail=$((fail + 1)); }
# Hugging Face config.json (docs/hf-config.md): settings checked, errors name the field and the file.
check "hf: --seq beyond max_position_embeddings" 2 "$BIN" estimate llama-3.1-8b --seq 200000
grep -q "models/hf/llama-3.1-8b.json:13:.*--seq 200000 is longer than the model's max_position_embeddings (131072)" $T/memfit_cli_err ||
  { echo "FAIL: hf --seq error"; cat $T/memfit_cli_err; fail=$((fail + 1)); }
check "hf: --seq on a memfit model" 2 "$BIN" estimate resnet18 --seq 128
grep -q "\-\-seq applies to a Hugging Face config.json" $T/memfit_cli_err || { echo "FAIL: --seq on memfit model"; cat $T/memfit_cli_err; fail=$((fail + 1)); }
check "hf: bad --attention" 2 "$BIN" estimate gpt2 --attention flash
printf '{\n  "model_type": "t5"\n}\n' > $T/memfit_t5.json
check "hf: unknown model_type" 2 "$BIN" estimate $T/memfit_t5.json
grep -q "$T/memfit_t5.json:2:.*supported model types: llama, mistral, qwen2, gpt2, bert, vit" $T/memfit_cli_err ||
  { echo "FAIL: unknown model_type message"; cat $T/memfit_cli_err; fail=$((fail + 1)); }
# Once the transformer kinds are registered, every shipped config estimates.
if "$BIN" ops | grep -q "^rms_norm "; then
  for f in "$SRC"/models/hf/*.json; do
    name=$(basename "$f" .json)
    seq_flag="--seq 512"
    if [ "$name" = vit-base-patch16-224 ]; then
      "$BIN" ops | grep -q "^parameter " || continue  # ViT's cls_token / position_embeddings need the parameter kind
      seq_flag=""
    fi
    [ "$name" = bert-base-uncased ] && seq_flag="--seq 128"
    check "hf: estimate $name" 0 "$BIN" estimate "$f" $seq_flag --batch 1
  done
fi
# The flat JSON of every model, committed for the PyTorch tools, is what memfit prints now.
for f in "$SRC"/models/*.memfit; do
  name=$(basename "$f" .memfit)
  if "$BIN" model "$f" --json | cmp -s - "$SRC/tests/reference/models-json/$name.json"; then
    pass=$((pass + 1))
  else
    echo "FAIL: tests/reference/models-json/$name.json is stale: run tools/export-models-json.sh"; fail=$((fail + 1))
  fi
done
echo "cli: $pass passed, $fail failed"
[ "$fail" -eq 0 ]

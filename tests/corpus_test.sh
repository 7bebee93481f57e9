#!/usr/bin/env bash
# Replays tests/corpus/*.case through the native CLI: the exit status and a message fragment
# (tests/corpus/README.md). Usage: corpus_test.sh MEMFIT_BINARY SOURCE_DIR
set -u
BIN=$1
SRC=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0 skipped=0 pending=0
for f in "$SRC"/tests/corpus/*.case; do
  name=$(basename "$f" .case)
  cli=$(sed -n 's/^cli: //p' "$f" | head -1)
  if [ -z "$cli" ]; then skipped=$((skipped + 1)); continue; fi
  want=$(sed -n 's/^exit: //p' "$f" | head -1)
  frag=$(sed -n 's/^message: //p' "$f" | head -1)
  # the model: everything after the 'model:' line
  ext=memfit
  sed -n '/^model:$/,$p' "$f" | tail -n +2 > "$tmp/$name.model"
  if head -c 1 "$tmp/$name.model" | grep -q '{'; then ext=json; fi
  mv "$tmp/$name.model" "$tmp/$name.$ext"
  # onnx: a binary model file (tests/corpus/onnx/), used as MODEL instead of the text after model:
  onnx=$(sed -n 's/^onnx: //p' "$f" | head -1)
  model_path="$tmp/$name.$ext"
  [ -n "$onnx" ] && model_path="$SRC/tests/corpus/onnx/$onnx"
  read -r -a args <<< "$cli"
  for i in "${!args[@]}"; do [ "${args[$i]}" = MODEL ] && args[$i]="$model_path"; done
  timeout 60 "$BIN" "${args[@]}" > "$tmp/out" 2>&1
  rc=$?
  # pending: a known bug in code another change owns; reported, not failed, until it passes
  why=$(sed -n 's/^pending: //p' "$f" | head -1)
  if [ -n "$why" ]; then
    if [ "$rc" = "$want" ] && grep -qF -- "$frag" "$tmp/out" && ! grep -q "internal error" "$tmp/out"; then
      echo "XPASS $name: passes now, remove its 'pending:' line"; fail=$((fail + 1))
    else
      echo "PENDING $name (exit $rc): $why"; pending=$((pending + 1))
    fi
    continue
  fi
  if [ "$rc" != "$want" ]; then
    echo "FAIL $name: exit $rc, expected $want"; head -c 2000 "$tmp/out"; echo; fail=$((fail + 1)); continue
  fi
  if ! grep -qF -- "$frag" "$tmp/out"; then
    echo "FAIL $name: output lacks '$frag'"; head -c 2000 "$tmp/out"; echo; fail=$((fail + 1)); continue
  fi
  if grep -q "internal error" "$tmp/out"; then
    echo "FAIL $name: says internal error"; fail=$((fail + 1)); continue
  fi
  pass=$((pass + 1))
done
echo "corpus (CLI): $pass passed, $fail failed, $pending pending, $skipped request-only"
[ "$fail" -eq 0 ] && [ "$pass" -gt 0 ]

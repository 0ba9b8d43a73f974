#!/bin/bash
# Eager against torch.compile (--compile) per method, 1- and 5-shot, with benchmark.speed on this machine's CPU.
# Run it alone on an idle machine; one JSON line per measurement goes to ${1:-compile.jsonl}.
# MTL's pretraining is shortened (pre_epochs=0.05): a step's cost does not depend on how well it was pretrained.
set -euo pipefail
out=${1:-compile.jsonl}
: > "$out"
for m in protonet matching relation tadam mtl; do
  extra=()
  [ "$m" = mtl ] && extra=(--set pre_epochs=0.05)
  for mode in eager compile; do
    flag=(); [ "$mode" = compile ] && flag=(--compile)
    python -m benchmark.speed --method "$m" --shots 1 5 --steps 20 --test-episodes 20 --eval-group 0 \
      --results-dir /tmp/speed-cache --json "${extra[@]}" "${flag[@]}" 2>/dev/null >> "$out"
  done
done

#!/usr/bin/env bash
# Emulated bf16 training of hype-learned (concat route), same seed and data order three ways: fp32 operands, bf16
# operands with split columns (SPEC section 8, the bf16 default) and bf16 with plain columns. bf16 here is the
# precision study's emulation: Qhat, Khat, Vhat rounded to bf16, products and sums in fp32, gradients passed
# straight through the rounding and folded back through the split (numerics/split-columns.ts).
# Prints the training loss averaged over blocks of 50 steps, and each run's difference from fp32.
#   scripts/split-training.sh [out-dir] [steps]      (default runs/split-training, 400 steps: a few minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/split-training}
steps=${2:-400}
common=(--pe hype --width 64 --layers 2 --heads 4 --length 128 --batch 8 --steps "$steps" --lr 3e-3 --warmup 40
  --seed 1 --checkpoint-every 0 --quiet)
declare -A options=(
  [fp32]='{"preset":"learned"}'
  [bf16-split]='{"preset":"learned","format":"bf16","columns":"split"}'
  [bf16-plain]='{"preset":"learned","format":"bf16","columns":"plain"}'
)
for v in fp32 bf16-split bf16-plain; do
  rm -rf "$out/$v"
  node bin/hype.js train "${common[@]}" --pe-options "${options[$v]}" --run-dir "$out/$v"
done
node - "$out" <<'EOF'
const fs = require('node:fs');
const out = process.argv[2];
const runs = ['fp32', 'bf16-split', 'bf16-plain'];
const loss = Object.fromEntries(
  runs.map((v) => [
    v,
    fs.readFileSync(`${out}/${v}/losses.jsonl`, 'utf8').trim().split('\n').map((l) => JSON.parse(l).loss),
  ]),
);
const block = 50;
console.log(['steps', ...runs, 'split - fp32', 'plain - fp32'].map((s) => s.padStart(14)).join(''));
for (let s = 0; s < loss.fp32.length; s += block) {
  const mean = (v) => loss[v].slice(s, s + block).reduce((a, b) => a + b, 0) / loss[v].slice(s, s + block).length;
  const m = Object.fromEntries(runs.map((v) => [v, mean(v)]));
  const cells = [`${s + 1}-${Math.min(s + block, loss.fp32.length)}`, ...runs.map((v) => m[v].toFixed(4))];
  cells.push((m['bf16-split'] - m.fp32).toFixed(4), (m['bf16-plain'] - m.fp32).toFixed(4));
  console.log(cells.map((c) => c.padStart(14)).join(''));
}
EOF

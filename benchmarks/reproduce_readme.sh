#!/usr/bin/env bash
# Reproduce one figure of the README by name; results go under OUT (default /tmp/longctx-readme),
# never into the repository (benchmarks/results/ holds the committed ones).
#
#   benchmarks/reproduce_readme.sh NAME [OUT]
#
# NAME          README figure                                           time on the 2-core CPU machine
# demo          demo line under "Speed is always against Hugging Face"  ~1 min
# dense         "The shipped example model": dense accuracy table       ~10 min
# eval          every method on the same samples (two eval runs)        ~25 min
# speed         "Speed": simulated hosts and real local workers         ~45 min (median of 3)
# planner       "Planner": equal vs balanced APB on 4 local workers     ~5 min
# plan          "Planner": the 128K / 8-host estimate                   seconds
# ablation      "When passing matters": APB's ablation on vt-llama      ~15 min
# spava-speed   "Spava, measured": the speed table and the ablation     ~25 min (loaded machine)
# spava-accuracy "Spava, measured": the video needle accuracy table     ~20 min
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:?usage: benchmarks/reproduce_readme.sh demo|dense|eval|speed|planner|plan|ablation|spava-speed|spava-accuracy [OUT]}
OUT=${2:-/tmp/longctx-readme}
mkdir -p "$OUT"
BIN=${VENV:-.venv}/bin
MODEL=examples/models/needle-llama
case "$NAME" in
  demo)    "$BIN/longctx" demo --nproc 4 | tee "$OUT/demo.txt" ;;
  dense)   "$BIN/python" examples/eval_dense.py --model "$MODEL" --tasks niah_single niah_multikey \
             --length 2048 4096 --samples 50 --seed 1234 | tee "$OUT/eval_dense.txt" ;;
  eval)    "$BIN/longctx" eval --model "$MODEL" --tasks niah_single,niah_multikey --length 4096 --nproc 4 \
             --methods dense,burst,ulysses,star,apb --samples 50 --json > "$OUT/eval_needle_4096.json"
           "$BIN/longctx" eval --model "$MODEL" --tasks niah_single,niah_multikey --length 4096 --nproc 4 \
             --methods apb --compressor random --samples 50 --json > "$OUT/eval_needle_4096_random.json" ;;
  speed)   "$BIN/python" benchmarks/cpu_methods.py --out "$OUT/cpu_methods.json" ;;
  planner) "$BIN/python" benchmarks/bench_planner.py --nproc 4 --length 4096 --repeats 5 \
             --out "$OUT/planner_apb.json" ;;
  plan)    "$BIN/longctx" plan --method apb --length 131072 --nproc 8 --device cuda | tee "$OUT/plan.txt" ;;
  ablation) "$BIN/python" benchmarks/apb_ablation.py --retaining-heads benchmarks/results/vt_llama_heads.safetensors \
             --out "$OUT/apb_ablation_vt_llama.json" ;;
  spava-speed) "$BIN/python" benchmarks/spava_speed.py --out "$OUT/spava_speed.json" ;;
  spava-accuracy) "$BIN/python" benchmarks/spava_accuracy.py --out "$OUT/spava_accuracy_vn_qwen_vl.json" ;;
  *)       echo "unknown figure '$NAME'; choose demo, dense, eval, speed, planner, plan, ablation, spava-speed or spava-accuracy" >&2; exit 2 ;;
esac
echo "results in $OUT"

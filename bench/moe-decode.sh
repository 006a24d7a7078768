#!/usr/bin/env bash
# Prefill and decode speed of a DeepSeek-shaped random model (the benchmark line of the MoE
# issue). Generates the model once with build/mktiny (cached), then runs
#   moerun run MODEL --tokens <128 ids> -n 32 --temp 0 -t THREADS
# RUNS times and prints prefill and decode tokens/s per run, parsed from moerun's stderr line
# "prompt N tokens in X s (R t/s), generated N tokens in X s (R t/s)", and their means.
#
#   bench/moe-decode.sh [--small] [--type q8_0] [--runs 3] [--threads 2] [--prompt 128]
#                       [--gen 32] [--cache DIR]
# Default model: deepseek-v2-lite shape (15.7B parameters, about 16 GB at q8_0);
# --small: deepseek-small (0.85B, about 0.9 GB). Cache: DIR (default /tmp/moerun-bench).
# BIN / MKTINY override the binaries (default build/moerun, build/mktiny).
set -eu
cd "$(dirname "$0")/.."
BIN=${BIN:-build/moerun}
MKTINY=${MKTINY:-build/mktiny}
preset=deepseek-v2-lite type=q8_0 runs=3 threads=2 n_prompt=128 n_gen=32
cache=/tmp/moerun-bench
while [ $# -gt 0 ]; do
    case $1 in
    --small) preset=deepseek-small ;;
    --type) type=$2; shift ;;
    --runs) runs=$2; shift ;;
    --threads | -t) threads=$2; shift ;;
    --prompt) n_prompt=$2; shift ;;
    --gen) n_gen=$2; shift ;;
    --cache) cache=$2; shift ;;
    -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "moe-decode.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
for b in "$BIN" "$MKTINY"; do
    [ -x "$b" ] || { echo "moe-decode.sh: $b not built (make $b)" >&2; exit 1; }
done

# Parameters (millions) and bytes per parameter, for the disk check before generating.
case $preset in deepseek-v2-lite) mparams=15710 ;; *) mparams=850 ;; esac
case $type in
f32) bpp=4 ;; f16 | bf16) bpp=2 ;; q8_0) bpp=1.07 ;; q6_k) bpp=0.83 ;; q5_*) bpp=0.7 ;;
*) bpp=0.6 ;;
esac
need_mb=$(awk -v p="$mparams" -v b="$bpp" 'BEGIN { printf "%d", p * b * 1.02 + 64 }')

model=$cache/$preset-$type.gguf
mkdir -p "$cache"
if [ ! -f "$model" ]; then
    free_mb=$(df -Pm "$cache" | awk 'NR == 2 { print $4 }')
    if [ "$free_mb" -lt "$need_mb" ]; then
        echo "moe-decode.sh: $preset at $type needs about $need_mb MB in $cache;" \
            "only $free_mb MB are free (use --cache DIR or --small)" >&2
        exit 1
    fi
    echo "generating $model (about $need_mb MB, $free_mb MB free)" >&2
    t0=$(date +%s)
    "$MKTINY" "$model" --preset "$preset" --type "$type"
    echo "generated in $(($(date +%s) - t0)) s" >&2
fi
size_mb=$(($(stat -c %s "$model") / 1048576))

# A fixed prompt of n_prompt ids: BOS, then ids spread over the filler pieces.
ids=$(awk -v n="$n_prompt" 'BEGIN { s = "1"; for (i = 1; i < n; i++) s = s "," (259 + (i * 7919) % 100000); print s }')

echo "model: $model ($size_mb MiB, $preset, $type), threads $threads," \
    "prompt $n_prompt, generate $n_gen"
err=$(mktemp)
trap 'rm -f "$err"' EXIT
all=""
for r in $(seq 1 "$runs"); do
    "$BIN" run "$model" --tokens "$ids" -n "$n_gen" --temp 0 -t "$threads" >/dev/null 2>"$err" || true
    line=$(grep 'generated' "$err" | tail -n 1 || true)
    pp=$(echo "$line" | sed -n 's/.*prompt [0-9]* tokens in [0-9.]* s (\([0-9.]*\) t\/s).*/\1/p')
    tg=$(echo "$line" | sed -n 's/.*generated [0-9]* tokens in [0-9.]* s (\([0-9.]*\) t\/s).*/\1/p')
    ng=$(echo "$line" | sed -n 's/.*generated \([0-9]*\) tokens.*/\1/p')
    if [ -z "$pp" ] || [ -z "$tg" ]; then
        echo "moe-decode.sh: run $r: no timing line; stderr ends:" >&2
        tail -n 3 "$err" >&2
        exit 1
    fi
    echo "run $r: prefill $pp t/s, decode $tg t/s ($ng tokens)"
    all="$all $pp $tg"
done
echo "$all" | awk -v n="$runs" -v t="$threads" -v p="$preset" -v q="$type" '{
    for (i = 1; i <= NF; i += 2) { pp += $i; tg += $(i + 1) }
    printf "mean: prefill %.2f t/s, decode %.2f t/s (%s %s, %d threads, %d runs)\n", pp / n, tg / n, p, q, t, n }'

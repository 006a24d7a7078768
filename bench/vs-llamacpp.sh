#!/usr/bin/env bash
# moerun against llama.cpp on the same GGUF file and thread count: prefill (ppN, one batch of
# N random tokens) and decode (tgN, N tokens one at a time) tokens/s, interleaved (moerun,
# llama.cpp, moerun, llama.cpp, ...) so that a noisy neighbour hurts both alike, and the ratio
# moerun / llama.cpp for each.
#
#   bench/vs-llamacpp.sh MODEL [THREADS]
#
# THREADS: default 2. Environment: ROUNDS (default 3) rounds of one invocation each, REPS
# (default 2) timed runs per invocation after its warm-up, N_PROMPT (128), N_GEN (32),
# BIN (default build/moerun; runs `$BIN bench`), NODE (default node).
# llama.cpp runs through the npm package node-llama-cpp@3.21.1 (prebuilt CPU build), installed
# into tests/ref/node_modules on first use; bench/llamacpp_bench.mjs says how it is driven.
# Its figures come from llama.cpp's own timer (time inside llama_decode, as llama-bench
# measures); "wall" adds node-llama-cpp's per-call overhead. The ratios use the former.
set -eu
cd "$(dirname "$0")/.."
BIN=${BIN:-build/moerun}
NODE=${NODE:-node}
ROUNDS=${ROUNDS:-3} REPS=${REPS:-2} N_PROMPT=${N_PROMPT:-128} N_GEN=${N_GEN:-32}
if [ $# -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    [ $# -ge 1 ] && exit 0
    exit 2
fi
model=$1 threads=${2:-2}
[ -f "$model" ] || { echo "vs-llamacpp.sh: no such file: $model" >&2; exit 1; }
[ -x "$BIN" ] || { echo "vs-llamacpp.sh: $BIN not built (make)" >&2; exit 1; }
[ -d tests/ref/node_modules/node-llama-cpp ] ||
    (cd tests/ref && npm install --no-audit --no-fund --no-save node-llama-cpp@3.21.1 >/dev/null)

field() { # json-line key -> the number after "key":
    sed -n "s/.*\"$2\": *\\([-0-9.eE+]*\\).*/\\1/p" <<<"$1"
}
line_of() { # output test(pp|tg) -> the JSON line of that test
    if [ "$2" = pp ]; then grep '"n_gen": *0[,}]' <<<"$1" || true; else grep '"n_prompt": *0[,}]' <<<"$1" || true; fi
}

echo "model: $model ($(($(stat -c %s "$model") / 1048576)) MiB), threads $threads," \
    "pp$N_PROMPT tg$N_GEN, $ROUNDS rounds x $REPS runs, interleaved"
printf '%5s  %10s %10s  %10s %10s %10s  %8s %8s\n' round "moerun pp" "llama pp" \
    "moerun tg" "llama tg" "(wall)" roofline "GB/s"
rows=""
for r in $(seq 1 "$ROUNDS"); do
    mo=$("$BIN" bench "$model" -p "$N_PROMPT" -n "$N_GEN" -t "$threads" -r "$REPS" --json)
    ll=$("$NODE" bench/llamacpp_bench.mjs "$model" "$threads" "$N_PROMPT" "$N_GEN" "$REPS")
    mo_tg=$(line_of "$mo" tg) ll_tg=$(line_of "$ll" tg)
    row="$(field "$(line_of "$mo" pp)" avg_ts) $(field "$(line_of "$ll" pp)" avg_ts)"
    row="$row $(field "$mo_tg" avg_ts) $(field "$ll_tg" avg_ts) $(field "$ll_tg" wall_avg_ts)"
    row="$row $(field "$mo_tg" roofline_fraction) $(field "$mo_tg" membw_gbps)"
    [ "$(wc -w <<<"$row")" -eq 7 ] || { echo "vs-llamacpp.sh: round $r: missing figures:" \
        "$mo $ll" >&2; exit 1; }
    printf '%5d  %10.2f %10.2f  %10.2f %10.2f %10.2f  %7.1f%% %8.2f\n' "$r" $(awk '{ $6 *= 100; print }' <<<"$row")
    rows="$rows$row"$'\n'
done
awk 'NF { for (i = 1; i <= NF; i++) s[i] += $i; n++
       lpp += log($1 / $2); ltg += log($3 / $4) }
     END { printf " mean  %10.2f %10.2f  %10.2f %10.2f %10.2f  %7.1f%% %8.2f\n",
               s[1] / n, s[2] / n, s[3] / n, s[4] / n, s[5] / n, 100 * s[6] / n, s[7] / n
           printf "ratio moerun/llama.cpp: pp %.2f, tg %.2f (of the means; per-round geometric" \
               " mean: pp %.2f, tg %.2f; tg against llama.cpp wall clock %.2f)\n",
               s[1] / s[2], s[3] / s[4], exp(lpp / n), exp(ltg / n), s[3] / s[5] }' <<<"$rows"

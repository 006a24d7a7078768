#!/bin/sh
# Tokenizer throughput: tokenizes about 1 MB of mixed text (English, code, many scripts,
# emoji, long numbers and runs of white space, from the fixtures' test texts and this
# repository's sources) with `moerun tokenize MODEL < file` and prints MB/s. A benchmark,
# not a test: nothing here passes or fails.
#   bench/tokenize.sh [MODEL] [BYTES]
# MODEL defaults to ../shared/fixtures/vocab/ggml-vocab-qwen2.gguf. Model loading (vocabulary
# index, merge table) is timed apart, with an empty input, and subtracted.
set -eu
cd "$(dirname "$0")/.."
FIX=${MOERUN_FIXTURES:-../shared/fixtures}
MODEL=${1:-$FIX/vocab/ggml-vocab-qwen2.gguf}
BYTES=${2:-1048576}
BIN=${BIN:-./moerun}
[ -x "$BIN" ] || { echo "bench/tokenize.sh: $BIN not built (run make)" >&2; exit 1; }
[ -f "$MODEL" ] || { echo "bench/tokenize.sh: $MODEL not found" >&2; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
for f in "$FIX"/vocab/*.inp "$FIX"/deepseek-v3-tokenizer/texts.inp *.c *.h; do
    [ -f "$f" ] && grep -v '^__ggml_vocab_test__$' "$f" >>"$TMP/seed" || true
done
while [ "$(wc -c <"$TMP/seed")" -lt "$BYTES" ]; do cat "$TMP/seed" "$TMP/seed" >"$TMP/more"; mv "$TMP/more" "$TMP/seed"; done
head -c "$BYTES" "$TMP/seed" >"$TMP/text"
: >"$TMP/empty"

now() { date +%s.%N; }
run_once() { # prints seconds for one tokenize of $1
    t0=$(now)
    "$BIN" tokenize "$MODEL" <"$1" >"$TMP/ids"
    t1=$(now)
    echo "$t1 - $t0" | bc -l
}
best() { # best of three
    b=""
    for _ in 1 2 3; do
        s=$(run_once "$1")
        if [ -z "$b" ] || [ "$(echo "$s < $b" | bc -l)" = 1 ]; then b=$s; fi
    done
    echo "$b"
}
load=$(best "$TMP/empty")
total=$(best "$TMP/text")
n_ids=$(wc -w <"$TMP/ids")
awk -v b="$BYTES" -v l="$load" -v t="$total" -v n="$n_ids" -v m="$MODEL" 'BEGIN {
    tok = t - l; if (tok <= 0) tok = 1e-9
    printf "model %s\n", m
    printf "%d bytes -> %d tokens; load %.3f s, load + tokenize %.3f s\n", b, n, l, t
    printf "tokenize: %.3f s, %.2f MB/s\n", tok, b / 1048576 / tok
}'

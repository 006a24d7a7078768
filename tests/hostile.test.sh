#!/usr/bin/env bash
# Hostile prompts and options through the binary, on the tiny MoE model of the fuzz corpus
# (tests/fuzz/corpus/gguf/qwen2moe-tiny.gguf: SentencePiece vocabulary of <unk> <s> </s> and
# the 256 byte tokens, context 32). The behaviour each case pins down:
#   invalid UTF-8 prompt   accepted: bytes that are not UTF-8 become byte tokens; exit 0
#   NUL bytes (-f, stdin)  part of the prompt (never cut at the NUL): <0x00> token; exit 0
#   empty prompt           BOS alone is the prompt; exit 0
#   prompt > context       exit 1, one line: "the prompt has N tokens but the context holds C"
#   -n 1000000000          generation stops when the context is full, with one stderr note
#                          "stopped: the context of C tokens is full"; exit 0
#   -n above 2^30, -c 0, -c above 2^24
#                          exit 1, one line naming the option and its range
#   -c above the model's   accepted (as llama.cpp does): the cache is sized for it, and the
#   context_length         run works; info line shows the -c context
# Prints "ok"/"FAIL" lines for tests/run.sh.
set -u
BIN=${BIN:-./moerun}
M=tests/fuzz/corpus/gguf/qwen2moe-tiny.gguf
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

ok() { echo "ok $1"; }
fail() { echo "FAIL $1: $2"; }

# run NAME ARGS...: runs $BIN ARGS with stdin from $tmp/stdin (empty unless written),
# stdout to $tmp/out, stderr to $tmp/err; sets rc and nerr (stderr lines).
run() {
    "${@:2}" <"$tmp/stdin" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    nerr=$(wc -l <"$tmp/err")
}
: >"$tmp/stdin"

# expect_error NAME NEEDLE ARGS...: exit 1, exactly one stderr line containing NEEDLE.
expect_error() {
    local name=$1 needle=$2
    shift 2
    run "$name" "$BIN" "$@"
    if [ "$rc" -eq 1 ] && [ "$nerr" -eq 1 ] && grep -qF -- "$needle" "$tmp/err"; then
        ok "$name"
    else
        fail "$name" "exit $rc, $nerr stderr lines, expected '$needle': $(head -c 300 "$tmp/err")"
    fi
}

# expect_ok NAME ARGS...: exit 0, no crash.
expect_ok() {
    local name=$1
    shift
    run "$name" "$BIN" "$@"
    if [ "$rc" -eq 0 ]; then
        ok "$name"
    else
        fail "$name" "exit $rc: $(head -c 300 "$tmp/err")"
    fi
}

if [ ! -x "$BIN" ] || [ ! -f "$M" ]; then
    echo "SKIP hostile: $BIN or $M missing"
    exit 0
fi

# ---- invalid UTF-8 ----
expect_ok hostile_invalid_utf8_run run -m "$M" -p $'\xff\xfe abc \xc3 \xed\xa0\x80 \xf4\x90\x80\x80' \
    -n 4 --temp 0 -q
run hostile_invalid_utf8_tokens "$BIN" tokenize "$M" $'\xff\xc3'
# 0xff and 0xc3 as byte tokens: ids 3 + byte (after <unk> <s> </s>); the leading space
# prefix is U+2581 = e2 96 81
if [ "$rc" -eq 0 ] && [ "$(cat "$tmp/out")" = "229 153 132 258 198" ]; then
    ok hostile_invalid_utf8_tokens
else
    fail hostile_invalid_utf8_tokens "exit $rc, ids '$(cat "$tmp/out")' (expected 229 153 132 258 198)"
fi

# ---- NUL bytes ----
printf 'ab\0cd' >"$tmp/nul.txt"
printf 'ab\0cd' >"$tmp/stdin"
run hostile_nul_tokenize_stdin "$BIN" tokenize "$M"
if [ "$rc" -eq 0 ] && [ "$(cat "$tmp/out")" = "229 153 132 100 101 3 102 103" ]; then
    ok hostile_nul_tokenize_stdin
else
    fail hostile_nul_tokenize_stdin "exit $rc, ids '$(cat "$tmp/out")' (the NUL is <0x00> = 3)"
fi
: >"$tmp/stdin"
expect_ok hostile_nul_prompt_file run -m "$M" -f "$tmp/nul.txt" -n 3 --temp 0 -q
run hostile_nul_prompt_file_ids "$BIN" run -m "$M" -f "$tmp/nul.txt" -n 1 --temp 0 -v
if [ "$rc" -eq 0 ] && grep -q "prompt 9 tokens" "$tmp/err"; then
    ok hostile_nul_prompt_file_ids
else
    fail hostile_nul_prompt_file_ids "exit $rc, expected a 9-token prompt (BOS + 8): $(grep prompt "$tmp/err")"
fi
printf 'ab\0cd' >"$tmp/stdin"
expect_ok hostile_nul_prompt_stdin run -m "$M" -n 3 --temp 0 -q
: >"$tmp/stdin"
printf '\0\0\0\0' >"$tmp/nuls.txt"
expect_ok hostile_only_nuls run -m "$M" -f "$tmp/nuls.txt" -n 2 --temp 0 -q

# ---- empty prompt ----
expect_ok hostile_empty_prompt run -m "$M" -p "" -n 2 --temp 0 -q

# ---- prompt longer than the context ----
long=$(head -c 2000 /dev/zero | tr '\0' a)
expect_error hostile_prompt_longer_than_context "the prompt has 2004 tokens but the context holds 32" \
    run -m "$M" -p "$long" -n 3 --temp 0
expect_error hostile_prompt_longer_than_c "the context holds 8" run -m "$M" -p "aaaaaaaaaaaa" -c 8 -n 3
head -c 100000 /dev/urandom >"$tmp/rand.txt"
expect_error hostile_random_bytes_longer_than_context "the prompt has" \
    run -m "$M" -f "$tmp/rand.txt" -n 3 --temp 0

# ---- -n 10^9: stops at a full context ----
run hostile_n_1e9 "$BIN" run -m "$M" -p "a" -n 1000000000 -c 16 --temp 0 --ids
n_ids=$(wc -w <"$tmp/out")
if [ "$rc" -eq 0 ] && grep -q "stopped: the context of 16 tokens is full" "$tmp/err" &&
    [ "$n_ids" -ge 1 ] && [ "$n_ids" -le 16 ]; then
    ok hostile_n_1e9
else
    fail hostile_n_1e9 "exit $rc, $n_ids ids: $(tail -c 300 "$tmp/err")"
fi
expect_error hostile_n_too_big "-n expects an integer in -1..1073741824" \
    run -m "$M" -p a -n 10000000000
expect_error hostile_n_negative "-n expects an integer" run -m "$M" -p a -n -5

# ---- -c ----
expect_error hostile_c_zero "-c expects an integer in 1..16777216" run -m "$M" -p a -c 0
expect_error hostile_c_too_big "-c expects an integer in 1..16777216, got '16777217'" \
    run -m "$M" -p a -c 16777217
expect_error hostile_c_huge "-c expects an integer" run -m "$M" -p a -c 99999999999999999999
run hostile_c_above_model "$BIN" run -m "$M" -p a -n 3 -c 100000 --temp 0
if [ "$rc" -eq 0 ] && grep -q "ctx 100000" "$tmp/err"; then
    ok hostile_c_above_model
else
    fail hostile_c_above_model "exit $rc: $(head -c 300 "$tmp/err")"
fi
exit 0

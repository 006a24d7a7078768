#!/usr/bin/env bash
# The binary as a user drives it: greedy output equal to llama.cpp's, prompts from -p, -f and
# stdin, seeds, clean stdout, help and version. Prints "ok"/"FAIL"/"SKIP" lines.
set -u
BIN=${BIN:-./moerun}
FIX=${MOERUN_FIXTURES:-../shared/fixtures}
S=$FIX/llama2c-stories/stories260K.gguf
. "$(dirname "$0")/lib.sh"


for cmd in run info tokenize eval; do
    out=$("$BIN" $cmd --help 2>/dev/null)
    rc=$?
    case "$out" in "usage: moerun $cmd"*) r=$rc ;; *) r=1 ;; esac
    check "$cmd --help" "$r" "exit $rc, output: ${out:0:80}"
done
out=$("$BIN" --version)
check "--version" $? "$out"
case "$out" in "moerun "[0-9]*) r=0 ;; *) r=1 ;; esac
check "--version text" $r "$out"
"$BIN" >/dev/null 2>&1
[ $? -eq 1 ]
check "no command exits 1" $? "expected exit 1"

if [ ! -f "$S" ]; then
    echo "SKIP stories260K cli: $S not found"
    exit 0
fi

# llama.cpp's 64 greedy ids after "Once upon a time" (once_upon.json, llama_cpp_greedy_ids)
want=$(python3 -c 'import json,sys; print(" ".join(map(str, json.load(open(sys.argv[1]))["llama_cpp_greedy_ids"])))' \
    "$FIX/llama2c-stories/once_upon.json" 2>/dev/null)
if [ -z "$want" ]; then
    want=$(tr -d ' \n' <"$FIX/llama2c-stories/once_upon.json" |
        sed 's/.*"llama_cpp_greedy_ids":\[\([0-9,]*\)\].*/\1/' | tr ',' ' ')
fi
got=$("$BIN" run "$S" -p "Once upon a time" -n 64 --temp 0 --ids -q)
[ "$got" = "$want" ]
check "greedy ids equal llama.cpp's (64 tokens)" $? "got: $got"

got=$("$BIN" run "$S" --tokens 1,403,407,261,378 -n 64 --temp 0 --ids -q)
[ "$got" = "$want" ]
check "--tokens prompt gives the same greedy ids" $? "got: $got"

a=$("$BIN" run "$S" -p "Once upon a time" -n 24 --temp 0 -q)
b=$(printf 'Once upon a time' | "$BIN" run "$S" -n 24 --temp 0 -q)
printf 'Once upon a time' >"$tmp/prompt.txt"
c=$("$BIN" run "$S" -f "$tmp/prompt.txt" -n 24 --temp 0 -q)
[ -n "$a" ] && [ "$a" = "$b" ] && [ "$a" = "$c" ]
check "-p, stdin and -f give the same text" $? "-p: '$a' stdin: '$b' -f: '$c'"

"$BIN" run "$S" -p "Once upon a time" -n 16 --temp 0 >"$tmp/out" 2>"$tmp/err"
! grep -q moerun "$tmp/out" && grep -q "generated" "$tmp/err"
check "stdout has only text, logs on stderr" $? "stdout: $(head -c 200 "$tmp/out")"

"$BIN" run "$S" -p "Once upon a time" -n 16 --temp 0 -q >/dev/null 2>"$tmp/err"
[ ! -s "$tmp/err" ]
check "-q prints nothing on stderr" $? "stderr: $(head -c 200 "$tmp/err")"

s1=$("$BIN" run "$S" -p "Once" -n 40 --temp 1.0 --seed 42 --ids -q)
s2=$("$BIN" run "$S" -p "Once" -n 40 --temp 1.0 --seed 42 --ids -q)
s3=$("$BIN" run "$S" -p "Once" -n 40 --temp 1.0 --seed 43 --ids -q)
[ "$s1" = "$s2" ] && [ "$s1" != "$s3" ]
check "same seed repeats a sampled run, another seed differs" $? "42: $s1 / 43: $s3"

n=$("$BIN" run "$S" -p "Once" -n 7 --temp 0 --ids -q | wc -w)
[ "$n" -eq 7 ]
check "-n 7 generates 7 tokens" $? "got $n"

got=$("$BIN" tokenize "$S" "Once upon a time" --bos)
[ "$got" = "1 403 407 261 378" ]
check "tokenize --bos" $? "got: $got"
got=$(printf 'Once upon a time' | "$BIN" tokenize "$S")
[ "$got" = "403 407 261 378" ]
check "tokenize from stdin" $? "got: $got"

"$BIN" info "$S" >"$tmp/info"
grep -q "^architecture: llama" "$tmp/info" && grep -q "^layers: 5" "$tmp/info" &&
    grep -q "^attention: 8 heads (kv 4)" "$tmp/info"
check "info" $? "$(head -c 300 "$tmp/info")"
n=$("$BIN" info "$S" --tensors | grep -c '^  blk\.\|^  token_embd\|^  output')
[ "$n" -eq 48 ]
check "info --tensors lists 48 tensors" $? "got $n"

"$BIN" eval "$S" --tokens 1,403,407 --logits "$tmp/a.bin" &&
    "$BIN" eval "$S" --tokens 1,403,407 --logits "$tmp/b.bin" --decode
sz=$(stat -c %s "$tmp/a.bin" 2>/dev/null || echo 0)
[ "$sz" -eq $((3 * 512 * 4)) ]
check "eval writes n_tokens x n_vocab float32" $? "size $sz"
ls "$tmp" | grep -q '\.tmp\.' && r=1 || r=0
check "eval leaves no temporary file" $r "$(ls "$tmp")"

# the built-in model (models/, beside the binary in the source tree) and its BPE tokenizer
T=models/tinyseek-kjv-q8_0.gguf
got=$("$BIN" tokenize "$T" "In the beginning" --bos)
[ "$got" = "0 42 79 260 811 266 79 292" ]
check "tokenize BPE with BOS (llama.cpp's ids)" $? "got: $got"
got=$("$BIN" tokenize "$T" --detok "0 42 79 260 811 266 79 292")
[ "$got" = "In the beginning" ]
check "tokenize --detok" $? "got: '$got'"
got=$("$BIN" tokenize "$T" "In the" --show | tr '\t' '|')
[ "$got" = "$(printf "42|'I'\n79|'n'\n260|' the'")" ]
check "tokenize --show" $? "got: $got"
"$BIN" tokenize "$T" --detok "1,x" >/dev/null 2>"$tmp/err"
rc=$?
[ $rc -eq 1 ] && grep -q "not a list of token ids" "$tmp/err"
check "tokenize --detok rejects a bad id list" $? "exit $rc: $(cat "$tmp/err")"

"$BIN" run -p "In the beginning" -n 8 --temp 0 -q >"$tmp/out" 2>&1 </dev/null
[ "$(cat "$tmp/out")" = " of the children of Israel, and the" ]
check "run with no model uses the built-in one" $? "got: $(cat "$tmp/out")"
MOERUN_MODEL=/nonexistent.gguf "$BIN" run -p hi -n 1 >/dev/null 2>"$tmp/err"
rc=$?
[ $rc -eq 1 ] && grep -q "/nonexistent.gguf" "$tmp/err"
check "MOERUN_MODEL names the default model" $? "exit $rc: $(cat "$tmp/err")"
"$BIN" info "$T" >"$tmp/info"
grep -q "^experts: 16, 2 used per token, 1 shared" "$tmp/info" &&
    grep -q "^attention: MLA" "$tmp/info" && grep -q "active per token: 2.46M" "$tmp/info" &&
    grep -q "^kv cache per token: 640 B at f16" "$tmp/info"
check "info on a MoE/MLA model" $? "$(cat "$tmp/info")"

# chat templates: the plain family is BOS + text, so it equals the raw prompt on this model
a=$("$BIN" run -p "In the beginning" -n 8 --temp 0 -q)
b=$("$BIN" run -p "In the beginning" -n 8 --temp 0 -q --template plain)
[ -n "$a" ] && [ "$a" = "$b" ]
check "--template plain equals the raw prompt" $? "raw '$a' plain '$b'"
ids=$("$BIN" run -p "In the beginning" -n 1 --temp 0 --template deepseek3 --system S -v 2>&1 |
    sed -n 's/^moerun: prompt tokens: //p')
got=$("$BIN" tokenize "$T" --detok "$ids" --special)
[ "$got" = "<｜begin▁of▁sentence｜>S<｜User｜>In the beginning<｜Assistant｜>" ]
check "--template deepseek3 --system renders the V3 turns" $? "got: $got"
"$BIN" run -p x --template nosuch >/dev/null 2>"$tmp/err"
rc=$?
[ $rc -eq 1 ] && grep -q 'chat template "nosuch" is unknown (expected one of: plain' "$tmp/err"
check "--template with an unknown name" $? "exit $rc: $(cat "$tmp/err")"

# output to a FIFO or a device goes straight there: a temporary file renamed over it would
# replace it (it once replaced /dev/null)
mkfifo "$tmp/fifo"
cat "$tmp/fifo" >"$tmp/from-fifo" &
"$BIN" eval "$S" --tokens 1,403 --logits "$tmp/fifo" -q
rc=$?
wait
[ $rc -eq 0 ] && [ -p "$tmp/fifo" ] && [ "$(stat -c %s "$tmp/from-fifo")" -eq $((2 * 512 * 4)) ]
check "eval --logits into a FIFO keeps the FIFO" $? "exit $rc, fifo: $(stat -c %F "$tmp/fifo")"

# --no-mmap / --mlock change where the weights live, never the results
"$BIN" eval "$T" --tokens 1,400,401,402,403 --logits "$tmp/mapped.f32" -q
"$BIN" eval "$T" --tokens 1,400,401,402,403 --logits "$tmp/read.f32" -q --no-mmap
"$BIN" eval "$T" --tokens 1,400,401,402,403 --logits "$tmp/locked.f32" -q --mlock --no-mmap
cmp -s "$tmp/mapped.f32" "$tmp/read.f32" && cmp -s "$tmp/mapped.f32" "$tmp/locked.f32"
check "eval logits equal with --no-mmap and --mlock" $? "files differ"
"$BIN" run "$T" -p "In the" -n 4 --temp 0 --no-mmap 2>"$tmp/err" >/dev/null
grep -q "6.74 MiB read into RAM, 4 layers" "$tmp/err"
check "--no-mmap: the load summary says the weights were read into RAM" $? "$(cat "$tmp/err")"
"$BIN" run "$T" -p "In the" -n 4 --temp 0 --mlock 2>"$tmp/err" >/dev/null
grep -q "6.74 MiB locked in RAM, 4 layers" "$tmp/err"
check "--mlock: the load summary says the weights are locked" $? "$(cat "$tmp/err")"
printf 'In the\n' | "$BIN" chat "$T" --temp 0 --no-mmap 2>"$tmp/err" >/dev/null &&
    grep -q "^moerun chat: .*6.74 MiB read into RAM, cpu" "$tmp/err"
check "chat --no-mmap: the load summary says the weights were read into RAM" $? "$(cat "$tmp/err")"
printf 'In the\n' | "$BIN" chat "$T" --temp 0 --mlock 2>"$tmp/err" >/dev/null &&
    grep -q "^moerun chat: .*6.74 MiB locked in RAM, cpu" "$tmp/err"
check "chat --mlock: the load summary says the weights are locked" $? "$(cat "$tmp/err")"
# A refused lock (RLIMIT_MEMLOCK, and for root no CAP_IPC_LOCK) is one warning, not a failure.
if ldd "$BIN" 2>/dev/null | grep -q 'lib[at]san'; then
    echo "SKIP --mlock refused: the sanitizer runtime turns mlock into a no-op that succeeds"
elif [ "$(id -u)" -ne 0 ] || command -v setpriv >/dev/null; then
    drop=()
    [ "$(id -u)" -eq 0 ] && drop=(setpriv --bounding-set -ipc_lock --inh-caps -ipc_lock)
    a=$("$BIN" run "$T" -p "In the" -n 4 --temp 0 -q)
    b=$(ulimit -l 64 && "${drop[@]}" "$BIN" run "$T" -p "In the" -n 4 --temp 0 --mlock 2>"$tmp/err")
    rc=$?
    [ $rc -eq 0 ] && [ "$a" = "$b" ] &&
        grep -q "^moerun run: warning: --mlock: $T: cannot lock 6.7 MiB in RAM: .*(RLIMIT_MEMLOCK 64 KiB; raise it with ulimit -l); running unlocked$" "$tmp/err" &&
        grep -q "6.74 MiB, 4 layers" "$tmp/err"
    check "--mlock refused by the lock limit: one warning, same output" $? "exit $rc: $(cat "$tmp/err")"
else
    echo "SKIP --mlock refused: running as root without setpriv to drop CAP_IPC_LOCK"
fi

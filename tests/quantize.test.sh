#!/usr/bin/env bash
# moerun quantize as a user drives it: every TYPE on random models of three architectures
# round-trips through eval (runs, finite logits); usage errors, a refused requantization, a
# missing input and Ctrl-C exit non-zero with a clear message and leave no OUT file (nor a
# temporary one); --dry-run writes nothing. Byte identity with llama-quantize is in
# tests/test_quantize.c. Prints "ok"/"FAIL"/"SKIP" lines.
set -u
BIN=${BIN:-./moerun}
MKTINY=${MKTINY:-$(dirname "$BIN")/mktiny}
[ -x "$MKTINY" ] || MKTINY=build/mktiny
. "$(dirname "$0")/lib.sh"

# No OUT and no OUT.tmp.<pid> left behind.
no_output() { [ ! -e "$1" ] && [ -z "$(ls "$1".tmp.* 2>/dev/null)" ]; }

require_subcommand quantize quantize || exit 0
check "quantize --help" 0 ""
if [ ! -x "$MKTINY" ]; then
    echo "SKIP quantize: no mktiny at $MKTINY"
    exit 0
fi

# ---- every type, three architectures, through eval ----
finite_logits() { # file, n_values
    python3 -c 'import math,struct,sys
d=open(sys.argv[1],"rb").read(); n=len(d)//4
v=struct.unpack("<%df"%n,d)
sys.exit(0 if n==int(sys.argv[2]) and all(math.isfinite(x) for x in v) and max(v)>min(v) else 1)' "$1" "$2"
}
types="F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K"
for arch in deepseek2 qwen3moe llama-moe; do
    "$MKTINY" "$tmp/$arch.gguf" --preset "tiny-$arch" >/dev/null 2>&1 ||
        "$MKTINY" "$tmp/$arch.gguf" --arch "$arch" >/dev/null 2>&1
    if [ ! -f "$tmp/$arch.gguf" ]; then
        echo "FAIL quantize round trip $arch: mktiny could not make the model"
        continue
    fi
    bad=""
    for t in $types; do
        if ! "$BIN" quantize "$tmp/$arch.gguf" "$tmp/q.gguf" "$t" 2>"$tmp/err"; then
            bad="$bad $t(quantize: $(tail -n 1 "$tmp/err"))"
            continue
        fi
        if ! "$BIN" eval "$tmp/q.gguf" --tokens 1,5,9,300,42 --logits "$tmp/l.bin" -q 2>"$tmp/err"; then
            bad="$bad $t(eval: $(tail -n 1 "$tmp/err"))"
        elif ! finite_logits "$tmp/l.bin" $((5 * 512)); then
            bad="$bad $t(logits not finite or constant)"
        fi
        rm -f "$tmp/q.gguf" "$tmp/l.bin"
    done
    [ -z "$bad" ]
    check "quantize $arch to 16 types, eval gives finite logits" $? "$bad"
done

IN=$tmp/deepseek2.gguf
[ -f "$IN" ] || exit 0

# ---- errors leave nothing behind ----
"$BIN" quantize "$IN" "$tmp/o.gguf" Q4_K_X 2>"$tmp/err"
rc=$?
[ $rc -eq 1 ] && grep -q "Q4_K_M" "$tmp/err" && grep -q "Q6_K" "$tmp/err" && no_output "$tmp/o.gguf"
check "a bad TYPE exits 1 and lists the valid ones" $? "exit $rc: $(cat "$tmp/err")"

"$BIN" quantize "$IN" "$tmp/o.gguf" 2>"$tmp/err"
rc=$?
[ $rc -eq 1 ] && no_output "$tmp/o.gguf"
check "a missing TYPE exits 1" $? "exit $rc: $(cat "$tmp/err")"

"$BIN" quantize "$tmp/nonexistent.gguf" "$tmp/o.gguf" Q8_0 2>"$tmp/err"
rc=$?
[ $rc -eq 1 ] && grep -q "nonexistent.gguf" "$tmp/err" && no_output "$tmp/o.gguf"
check "a missing input exits 1, names the file, writes nothing" $? "exit $rc: $(cat "$tmp/err")"

"$BIN" quantize "$IN" "$tmp/q8.gguf" Q8_0 2>/dev/null
"$BIN" quantize "$tmp/q8.gguf" "$tmp/o.gguf" Q4_K_M 2>"$tmp/err"
rc=$?
[ $rc -eq 1 ] && grep -q "already quantized" "$tmp/err" && grep -q -- "--allow-requantize" "$tmp/err" &&
    grep -q "q8.gguf: tensor '" "$tmp/err" && no_output "$tmp/o.gguf"
check "a quantized input is refused with a clear message" $? "exit $rc: $(cat "$tmp/err")"

"$BIN" quantize "$tmp/q8.gguf" "$tmp/o.gguf" Q4_K_M --allow-requantize 2>"$tmp/err" &&
    "$BIN" eval "$tmp/o.gguf" --tokens 1,2,3 --logits "$tmp/l.bin" -q 2>>"$tmp/err" &&
    finite_logits "$tmp/l.bin" $((3 * 512))
check "--allow-requantize requantizes, and the file runs" $? "$(tail -n 2 "$tmp/err")"
rm -f "$tmp/o.gguf"

"$BIN" quantize "$IN" "$tmp/o.gguf" Q4_K_M --dry-run 2>"$tmp/err"
rc=$?
n=$(grep -c ' -> ' "$tmp/err")
[ $rc -eq 0 ] && no_output "$tmp/o.gguf" && grep -q "dry run" "$tmp/err" &&
    grep -q "bits per weight" "$tmp/err" && [ "$n" -gt 10 ]
check "--dry-run prints types and size, writes nothing" $? "exit $rc, $n lines: $(tail -n 2 "$tmp/err")"

"$BIN" quantize "$IN" "$tmp/o.gguf" Q4_K_M --tensor-type '(=Q8_0' 2>"$tmp/err"
rc=$?
[ $rc -eq 1 ] && grep -q "regex" "$tmp/err" && no_output "$tmp/o.gguf"
check "a bad --tensor-type regex exits 1" $? "exit $rc: $(cat "$tmp/err")"

"$BIN" quantize "$IN" "$IN" Q8_0 2>"$tmp/err"
rc=$?
[ $rc -eq 1 ] && grep -q "input" "$tmp/err"
check "OUT equal to IN is refused" $? "exit $rc: $(cat "$tmp/err")"

# ---- Ctrl-C: a model big enough to take a few seconds on one thread ----
"$MKTINY" "$tmp/big.gguf" --arch deepseek2 --embd 512 --layers 4 --experts 16 --ff-exp 512 \
    --experts-used 2 >/dev/null 2>&1
if [ -f "$tmp/big.gguf" ]; then
    "$BIN" quantize "$tmp/big.gguf" "$tmp/big-q.gguf" Q2_K -t 1 2>"$tmp/err" &
    pid=$!
    sleep 0.5
    kill -INT $pid 2>/dev/null
    wait $pid
    rc=$?
    if [ $rc -eq 0 ]; then
        echo "SKIP quantize Ctrl-C: finished within half a second, before the signal"
    else
        [ $rc -eq 130 ] && grep -q "interrupted" "$tmp/err" && no_output "$tmp/big-q.gguf"
        check "Ctrl-C exits 130 and leaves no OUT file" $? "exit $rc: $(tail -n 1 "$tmp/err")"
    fi
else
    echo "FAIL quantize Ctrl-C: mktiny could not make the model"
fi

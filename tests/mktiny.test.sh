#!/usr/bin/env bash
# The model generator (build/mktiny) against the runner: for every tiny preset (every
# architecture moerun supports), the F32 model loads (`info`), `eval` logits of the batch and
# the token-by-token (--decode) paths agree within 1e-4, and the Q8_0 model generates. Also: the
# same seed gives the same file, the deepseek2 legacy (attn_kv_b) and split (attn_k_b/attn_v_b)
# layouts of one seed give the same logits within 1e-4, and the Q4_K_M mix loads and runs.
# Prints "ok"/"FAIL"/"SKIP" lines. Needs python3 to compare logits.
set -u
BIN=${BIN:-./moerun}
MKTINY=${MKTINY:-$(dirname "$BIN")/mktiny}
[ -x "$MKTINY" ] || MKTINY=build/mktiny
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ ! -x "$MKTINY" ]; then
    echo "SKIP mktiny: $MKTINY not built (make $(dirname "$BIN")/mktiny)"
    exit 0
fi
if ! command -v python3 >/dev/null; then
    echo "SKIP mktiny: python3 not found (compares logits)"
    exit 0
fi

TOKENS=1,300,301,302,5,400,450,2,1,77,99,260,261,262,263,264,511,3,258

max_diff() { # a.bin b.bin -> max |a - b|, or a reason
    python3 - "$1" "$2" <<'PY'
import struct, sys
a = open(sys.argv[1], 'rb').read(); b = open(sys.argv[2], 'rb').read()
if len(a) != len(b) or not a:
    print(f"sizes {len(a)} and {len(b)}"); sys.exit()
n = len(a) // 4
x = struct.unpack(f'{n}f', a); y = struct.unpack(f'{n}f', b)
print(f"{max(abs(p - q) for p, q in zip(x, y)):.3g}")
PY
}

check_f32() { # preset
    local p=$1 m=$tmp/$1.gguf
    if ! "$MKTINY" "$m" --preset "$p" 2>"$tmp/err"; then
        echo "FAIL mktiny $p: $(tail -n 1 "$tmp/err")"
        return
    fi
    if "$BIN" info "$m" >"$tmp/info" 2>&1; then echo "ok mktiny $p info"; else
        echo "FAIL mktiny $p info: $(tail -n 1 "$tmp/info")"; fi
    "$BIN" eval "$m" --tokens "$TOKENS" --logits "$tmp/b.bin" -q 2>"$tmp/err" &&
        "$BIN" eval "$m" --tokens "$TOKENS" --logits "$tmp/d.bin" --decode -q 2>>"$tmp/err"
    if [ $? -ne 0 ]; then
        echo "FAIL mktiny $p eval: $(tail -n 1 "$tmp/err")"
        return
    fi
    local d
    d=$(max_diff "$tmp/b.bin" "$tmp/d.bin")
    if python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= 1e-4 else 1)" "$d" 2>/dev/null; then
        echo "ok mktiny $p f32 batch vs decode (max |diff| $d)"
    else
        echo "FAIL mktiny $p f32 batch vs decode: $d (limit 1e-4)"
    fi
}

check_run() { # preset, type
    local p=$1 t=$2 m=$tmp/$1-$2.gguf out
    if ! "$MKTINY" "$m" --preset "$p" --type "$t" --seed 7 2>"$tmp/err"; then
        echo "FAIL mktiny $p $t: $(tail -n 1 "$tmp/err")"
        return
    fi
    out=$("$BIN" run "$m" --tokens 1,300,301 -n 8 --temp 0 --ids -q 2>"$tmp/err")
    if [ $? -eq 0 ] && [ "$(echo "$out" | wc -w)" -eq 8 ]; then
        echo "ok mktiny $p $t run (8 ids)"
    else
        echo "FAIL mktiny $p $t run: '$out' $(tail -n 1 "$tmp/err")"
    fi
}

presets=$("$MKTINY" --list-presets | grep '^tiny-')
[ -n "$presets" ] || echo "FAIL mktiny --list-presets: no tiny presets"
for p in $presets; do
    check_f32 "$p"
    check_run "$p" q8_0
done
check_run tiny-deepseek2 q4_k_m
check_run tiny-qwen3moe q6_k

# tiny-deepseek2 and tiny-deepseek2-legacy: the same weights in the two layouts (check_f32 made them)
if [ -f "$tmp/tiny-deepseek2.gguf" ] && [ -f "$tmp/tiny-deepseek2-legacy.gguf" ] &&
    "$BIN" eval "$tmp/tiny-deepseek2.gguf" --tokens "$TOKENS" --logits "$tmp/a.bin" -q &&
    "$BIN" eval "$tmp/tiny-deepseek2-legacy.gguf" --tokens "$TOKENS" --logits "$tmp/b.bin" -q; then
    d=$(max_diff "$tmp/a.bin" "$tmp/b.bin")
    if python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= 1e-4 else 1)" "$d" 2>/dev/null; then
        echo "ok mktiny deepseek2 legacy and split layouts agree (max |diff| $d)"
    else
        echo "FAIL mktiny deepseek2 legacy vs split layout: $d (limit 1e-4)"
    fi
else
    echo "FAIL mktiny deepseek2 legacy vs split layout: models missing or eval failed"
fi

"$MKTINY" "$tmp/s1.gguf" --arch qwen2moe --seed 5 2>/dev/null &&
    "$MKTINY" "$tmp/s2.gguf" --arch qwen2moe --seed 5 2>/dev/null && cmp -s "$tmp/s1.gguf" "$tmp/s2.gguf"
if [ $? -eq 0 ]; then echo "ok mktiny same seed, same file"; else echo "FAIL mktiny same seed: files differ"; fi

"$MKTINY" "$tmp/bad.gguf" --arch deepseek2 --groups 3 2>"$tmp/err"
rc=$?
if [ $rc -eq 1 ] && grep -q "groups" "$tmp/err" && [ ! -e "$tmp/bad.gguf" ]; then
    echo "ok mktiny refuses a bad shape"
else
    echo "FAIL mktiny bad shape: exit $rc, $(head -n 1 "$tmp/err")"
fi

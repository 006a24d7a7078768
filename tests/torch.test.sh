#!/usr/bin/env bash
# moerun convert + eval against a PyTorch reference forward written from the published model
# definitions (tests/ref/torch_forward.py), on tiny random Hugging Face checkpoints of every
# architecture convert reads (tests/ref/mk_tiny_hf.py): Llama (BF16), Qwen2 (F16), Mixtral,
# Qwen2-MoE, Qwen3-MoE (3 shards), DeepSeek-V2, DeepSeek-V3 and DeepSeek-V3 in FP8 E4M3 with
# 128x128 weight_scale_inv blocks (2 shards). Converted with --outtype f32, the logits of a
# 24-token sequence must equal the reference's within 1e-3 (max |diff|).
# Needs python3 with torch (Debian: apt-get install python3-torch); TORCH_PYTHON picks the
# interpreter. Prints "ok"/"FAIL"/"SKIP" lines.
set -u
BIN=${BIN:-./moerun}
REF=$(cd "$(dirname "$0")" && pwd)/ref
BOUND=1e-3
. "$(dirname "$0")/lib.sh"

require_subcommand torch convert || exit 0
PY=
for p in ${TORCH_PYTHON:-} python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null && "$p" -c 'import torch, numpy' 2>/dev/null; then
        PY=$p
        break
    fi
done
if [ -z "$PY" ]; then
    echo "SKIP torch: no python3 here can import torch and numpy (apt-get install python3-torch, or set TORCH_PYTHON)"
    exit 0
fi

NAMES=$("$PY" "$REF/mk_tiny_hf.py" --list)
"$PY" "$REF/mk_tiny_hf.py" "$tmp" 2>"$tmp/err"
check "torch: mk_tiny_hf.py writes the checkpoints" $? "$(tail -3 "$tmp/err")"
T=334,3,100,260,72,101,108,108,111,32,119,111,114,108,100,300,301,302,330,331,13,10,200,255
args=()
for n in $NAMES; do args+=("$tmp/$n" "$tmp/$n.ref"); done
"$PY" "$REF/torch_forward.py" --tokens $T "${args[@]}" 2>"$tmp/err"
check "torch: reference forward runs" $? "$(tail -3 "$tmp/err")"

# max |a - b| over two float32 files, or "size A B" when their sizes differ
maxdiff() {
    "$PY" -c '
import sys, numpy as np
a, b = np.fromfile(sys.argv[1], "<f4"), np.fromfile(sys.argv[2], "<f4")
print(f"size {a.size} {b.size}" if a.size != b.size or not a.size else "%.3g" % np.abs(a - b).max())' "$1" "$2" 2>&1
}

for n in $NAMES; do
    arch=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["architectures"][0])' "$tmp/$n/config.json")
    if ! "$BIN" convert "$tmp/$n" -o "$tmp/$n.gguf" --outtype f32 -q 2>"$tmp/err"; then
        check "torch $n ($arch): convert --outtype f32" 1 "$(head -c 300 "$tmp/err")"
        continue
    fi
    if ! "$BIN" eval "$tmp/$n.gguf" --tokens $T --logits "$tmp/$n.bin" -q 2>"$tmp/err"; then
        check "torch $n ($arch): eval" 1 "$(head -c 300 "$tmp/err")"
        continue
    fi
    if [ ! -f "$tmp/$n.ref" ]; then
        check "torch $n ($arch)" 1 "no reference logits"
        continue
    fi
    d=$(maxdiff "$tmp/$n.bin" "$tmp/$n.ref")
    "$PY" -c 'import sys; sys.exit(0 if not sys.argv[1].startswith("size") and float(sys.argv[1]) <= float(sys.argv[2]) else 1)' "$d" "$BOUND"
    check "torch $n ($arch): convert + eval equal the PyTorch reference (max |diff| $d <= $BOUND)" $? "max |diff| $d > $BOUND"
    rm -f "$tmp/$n.gguf"
done

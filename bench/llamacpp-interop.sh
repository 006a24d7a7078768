#!/usr/bin/env bash
# Files moerun writes load and run in llama.cpp: converts tinyseek-kjv's Hugging Face
# checkpoint (moerun convert), quantizes it to Q4_K_M (moerun quantize), runs both in
# llama.cpp through the npm package node-llama-cpp (prebuilt CPU build; installed into
# tests/ref/node_modules by `npm install node-llama-cpp` there) and in moerun, and prints the
# largest next-token probability difference over each position's top 20 tokens and whether
# the most likely token agrees. A check to run by hand; not part of make test (it installs a
# native package).
set -eu
cd "$(dirname "$0")/.."
BIN=${BIN:-./moerun}
HF=${1:-../shared/fixtures/tinyseek-kjv/hf}
IDS=${IDS:-0,42,79,260,811,266,79,292,270,260,488,270,428,13}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
[ -d tests/ref/node_modules/node-llama-cpp ] ||
    (cd tests/ref && npm install --no-audit --no-fund --no-save node-llama-cpp@3.21.1 >/dev/null)

"$BIN" convert "$HF" -o "$tmp/f32.gguf" --outtype f32 2>/dev/null
"$BIN" quantize "$tmp/f32.gguf" "$tmp/q4_k_m.gguf" Q4_K_M 2>/dev/null
for f in f32 q4_k_m; do
    "$BIN" eval "$tmp/$f.gguf" --tokens "$IDS" --logits "$tmp/$f.bin" -q
    node tests/ref/llamacpp_probs.mjs "$tmp/$f.gguf" "$IDS" 20 >"$tmp/$f.json"
    python3 - "$tmp/$f.bin" "$tmp/$f.json" "$f" <<'PY'
import json, math, struct, sys
raw = open(sys.argv[1], 'rb').read()
rows = [json.loads(l) for l in open(sys.argv[2])]
V = len(raw) // 4 // len(rows)
worst, agree = 0.0, 0
for r, peer in enumerate(rows):
    logits = struct.unpack_from(f'{V}f', raw, r * V * 4)
    m = max(logits)
    z = sum(math.exp(x - m) for x in logits)
    probs = [math.exp(x - m) / z for x in logits]
    agree += max(range(V), key=probs.__getitem__) == peer[0][0]
    worst = max(worst, max(abs(probs[t] - p) for t, p in peer))
print(f"{sys.argv[3]}: loads in llama.cpp; top token agrees at {agree}/{len(rows)} positions, "
      f"max |p_moerun - p_llama.cpp| over the top 20 = {worst:.2e}")
PY
done

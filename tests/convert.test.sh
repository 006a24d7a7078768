#!/usr/bin/env bash
# moerun convert: the tinyseek-kjv checkpoint gives the file llama.cpp's converter wrote (every
# key and tensor byte, tinyseek-kjv-f32.manifest.json) and llama.cpp's logits; tiny checkpoints
# of every architecture (tests/ref/mkhf.py, made from the compat fixtures) convert back to the
# compat files' tensors and logits; FP8 block-scaled and sharded sources; bad inputs fail with
# a message naming the file and tensor, exit 1 and no output file.
# Prints "ok"/"FAIL"/"SKIP" lines.
set -u
BIN=${BIN:-./moerun}
FIX=${MOERUN_FIXTURES:-../shared/fixtures}
REF=$(cd "$(dirname "$0")" && pwd)/ref
TS=$FIX/tinyseek-kjv
C=$FIX/compat
. "$(dirname "$0")/lib.sh"

require_subcommand convert convert || exit 0
if ! command -v python3 >/dev/null; then
    echo "SKIP convert: python3 not found (the checks read GGUF and safetensors with it)"
    exit 0
fi

# max |a - b| over two float32 files of equal size, or "size" when they differ
maxdiff() {
    python3 -c '
import struct, sys
a, b = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
if len(a) != len(b) or not a: print("size"); sys.exit()
n = len(a) // 4
print(max(abs(x - y) for x, y in zip(struct.unpack("<%df" % n, a), struct.unpack("<%df" % n, b))))' "$1" "$2"
}
below() { python3 -c 'import sys; sys.exit(0 if sys.argv[1] != "size" and float(sys.argv[1]) <= float(sys.argv[2]) else 1)' "$1" "$2"; }

# ---- tinyseek-kjv: llama.cpp's own conversion ----
if [ -f "$TS/hf/model.safetensors" ]; then
    "$BIN" convert "$TS/hf" -o "$tmp/ts.gguf" --outtype f32 --name tinyseek-kjv -q 2>"$tmp/err"
    check "tinyseek convert f32 exits 0" $? "$(cat "$tmp/err")"
    d=$(python3 "$REF/gguf_manifest.py" "$tmp/ts.gguf" "$TS/tinyseek-kjv-f32.manifest.json" 2>&1)
    check "tinyseek f32: keys, values, tensors and bytes equal llama.cpp's manifest" $? "$d"
    toks=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(",".join(map(str, j["prompt_ids"] + j["generated_ids"][:63])))' "$TS/f32_p1.json")
    n=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["prompt_ids"]))' "$TS/f32_p1.json")
    "$BIN" eval "$tmp/ts.gguf" --tokens "$toks" --prefill "$n" --logits "$tmp/p1.bin" -q
    d=$(maxdiff "$tmp/p1.bin" "$TS/f32_p1_logits.bin")
    below "$d" 1e-3
    check "tinyseek f32 eval equals llama.cpp's P1 logits (max diff $d)" $? "max diff $d"
    if [ -f "$TS/tinyseek-kjv-q8_0.gguf" ]; then
        "$BIN" convert "$TS/hf" -o "$tmp/ts-q8.gguf" --outtype q8_0 -q &&
            python3 "$REF/gguf_manifest.py" "$TS/tinyseek-kjv-q8_0.gguf" >"$tmp/q8.json" &&
            d=$(python3 "$REF/gguf_manifest.py" "$tmp/ts-q8.gguf" "$tmp/q8.json" | grep -v "general.name\|key order")
        [ -z "$d" ]
        check "tinyseek --outtype q8_0 tensors equal llama-quantize's Q8_0 file" $? "$d"
    fi
    rm -f "$tmp"/ts*.gguf
else
    echo "SKIP tinyseek convert: $TS/hf not found"
fi

# ---- every architecture, from the compat fixtures ----
T=1,403,407,261,378,432,383,286,261,376,298,315,421,395,317,426,3,511,130,259,2,62,499,403
arch_diff() { # differences in tensors and architecture keys (the tokenizer is mkhf's own)
    python3 "$REF/gguf_manifest.py" "$2" >"$tmp/ref.json"
    python3 "$REF/gguf_manifest.py" "$1" "$tmp/ref.json" |
        grep -v "tokenizer\|general.name\|general.type\|general.size_label\|key order"
}
for a in llama llama-moe qwen2 qwen2moe qwen3moe deepseek2-lite deepseek2-v3; do
    src=$C/$a/$a-F32.gguf
    if [ ! -f "$src" ]; then
        echo "SKIP convert $a: $src not found"
        continue
    fi
    python3 "$REF/mkhf.py" "$src" "$tmp/hf-$a" &&
        "$BIN" convert "$tmp/hf-$a" -o "$tmp/$a.gguf" --outtype f32 -q 2>"$tmp/err"
    check "convert $a ($(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["architectures"][0])' "$tmp/hf-$a/config.json"))" $? "$(cat "$tmp/err")"
    d=$(arch_diff "$tmp/$a.gguf" "$src")
    [ -z "$d" ]
    check "convert $a: tensors and keys equal the compat file's" $? "$(echo "$d" | head -3)"
    "$BIN" eval "$tmp/$a.gguf" --tokens $T --logits "$tmp/$a.bin" -q
    d=$(maxdiff "$tmp/$a.bin" "$C/$a/$a-F32.logits.bin")
    below "$d" 1e-3
    check "convert $a: eval equals llama.cpp's logits (max diff $d)" $? "max diff $d"
done

# ---- FP8 block scales (DeepSeek-V3's format), sharded, BF16 sources, output types ----
src=$C/deepseek2-v3/deepseek2-v3-F32.gguf
if [ -f "$src" ]; then
    python3 "$REF/mkhf.py" "$src" "$tmp/fp8" --fp8 --shards 3
    "$BIN" convert "$tmp/fp8" -o "$tmp/fp8.gguf" --outtype f32 -q 2>"$tmp/err"
    check "convert FP8 E4M3 + weight_scale_inv, 3 shards" $? "$(cat "$tmp/err")"
    python3 "$REF/gguf_manifest.py" "$tmp/fp8.gguf" >"$tmp/fp8.json"
    d=$(python3 -c '
import json, sys
got = {t["name"]: t["sha256"] for t in json.load(open(sys.argv[1]))["tensors"]}
exp = json.load(open(sys.argv[2]))
ref = {t["name"]: t["sha256"] for t in json.load(open(sys.argv[3]))["tensors"]}
bad = [k for k in exp if got.get(k) != exp[k]] + [k for k in ref if k not in exp and got.get(k) != ref[k]]
print(" ".join(bad) if bad else "", end="")
print("" if len(exp) >= 6 else "too few FP8 tensors", end="")' "$tmp/fp8.json" "$tmp/fp8/expected.json" <(python3 "$REF/gguf_manifest.py" "$src"))
    [ -z "$d" ]
    check "FP8 tensors dequantized block by block to the expected bytes" $? "$d"
    python3 "$REF/mkhf.py" "$src" "$tmp/bf16" --dtype bf16
    for t in f16 bf16 q8_0; do
        "$BIN" convert "$tmp/bf16" -o "$tmp/bf16-$t.gguf" --outtype $t -q 2>"$tmp/err" &&
            "$BIN" eval "$tmp/bf16-$t.gguf" --tokens $T --logits "$tmp/bf16.bin" -q 2>>"$tmp/err"
        check "BF16 source -> --outtype $t converts and evals" $? "$(cat "$tmp/err")"
    done
    ty=$(python3 "$REF/gguf_manifest.py" "$tmp/bf16-q8_0.gguf" | python3 -c '
import json, sys
m = json.load(sys.stdin)
print(m["metadata"]["general.file_type"]["value"], *sorted({t["type"] for t in m["tensors"]}))')
    [ "$ty" = "7 F32 Q8_0" ]
    check "q8_0 output: file_type 7, norms and routers F32" $? "$ty"
fi

# ---- bad inputs: exit 1, a message naming file and tensor, no OUT ----
bad() { # name, expected message part, hf dir
    "$BIN" convert "$3" -o "$tmp/bad.gguf" -q 2>"$tmp/err"
    local rc=$?
    local left
    left=$(ls "$tmp" | grep -c '^bad\.gguf')
    [ $rc -eq 1 ] && [ "$left" -eq 0 ] && grep -q -- "$2" "$tmp/err"
    check "$1" $? "exit $rc, files left $left, stderr: $(head -c 300 "$tmp/err")"
    rm -f "$tmp/bad.gguf"
}
if [ -d "$tmp/hf-qwen2" ]; then
    h=$tmp/hf-qwen2
    cp -r "$h" "$tmp/e1" && rm "$tmp/e1/model.safetensors"
    bad "no safetensors: error names the file" "e1/model.safetensors" "$tmp/e1"
    cp -r "$tmp/fp8" "$tmp/e2" && rm "$tmp/e2/model-00002-of-00003.safetensors"
    bad "missing shard: error names shard and a tensor" "missing shard model-00002-of-00003.safetensors (holds tensor" "$tmp/e2"
    cp -r "$h" "$tmp/e3" && sed -i 's/"Qwen2ForCausalLM"/"GPT2LMHeadModel"/' "$tmp/e3/config.json"
    bad "unknown architecture lists the supported ones" "unsupported architecture GPT2LMHeadModel (supported: DeepseekV2ForCausalLM" "$tmp/e3"
    cp -r "$h" "$tmp/e4" && sed -i 's/"intermediate_size": 64/"intermediate_size": 96/' "$tmp/e4/config.json"
    bad "shape contradicting config.json names file and tensor" "model.safetensors: tensor model.layers.0.mlp.down_proj.weight has shape \[256, 64\], but config.json implies \[256, 96\]" "$tmp/e4"
    cp -r "$h" "$tmp/e5" && python3 - "$tmp/e5/model.safetensors" <<'EOF'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
i = b.index(b'"model.layers.0.self_attn.o_proj.weight": {"dtype": "F32"')
j = b.index(b'"F32"', i)
b[j:j + 5] = b'"I32"'
open(p, "wb").write(bytes(b))
EOF
    bad "unsupported dtype names file, tensor and dtype" "model.safetensors: tensor model.layers.0.self_attn.o_proj.weight: unsupported dtype I32" "$tmp/e5"
    cp -r "$h" "$tmp/e6" && printf '{"architectures": ["Qwen2ForCausalLM"],\n "hidden_size": 256,,}' >"$tmp/e6/config.json"
    bad "malformed config.json: line and column" "config.json:2:21: string key expected" "$tmp/e6"
    cp -r "$h" "$tmp/e7" && truncate -s -1000 "$tmp/e7/model.safetensors"
    bad "truncated safetensors: the tensor past the end is named" "past the file end" "$tmp/e7"
    "$BIN" convert "$h" -q 2>"$tmp/err"
    [ $? -eq 1 ] && grep -q "required" "$tmp/err"
    check "no -o: exit 1 with usage" $? "$(cat "$tmp/err")"
    ls "$tmp" | grep -q '\.tmp\.'
    [ $? -ne 0 ]
    check "no temporary files left behind" $? "$(ls "$tmp")"
fi

# ---- Ctrl-C mid-write: no OUT, no temporary; and resident memory stays at a chunk ----
# a 512 MiB embedding (sparse file: zeros cost no disk)
if [ -d "$tmp/hf-qwen2" ]; then
    mkdir -p "$tmp/big" && cp "$tmp/hf-qwen2"/tokenizer*.json "$tmp/big/"
    python3 - "$tmp/big" <<'EOF2'
import json, struct, sys
d, H, V = sys.argv[1], 4096, 32768
json.dump({"architectures": ["Qwen2ForCausalLM"], "hidden_size": H, "num_hidden_layers": 1,
           "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 64,
           "vocab_size": V, "rms_norm_eps": 1e-6}, open(f"{d}/config.json", "w"))
items = [("model.embed_tokens.weight", [V, H]), ("model.layers.0.input_layernorm.weight", [H]),
         ("model.norm.weight", [H])]
hdr, off = {}, 0
for n, s in items:
    nb = 4 * s[0] * (s[1] if len(s) > 1 else 1)
    hdr[n] = {"dtype": "F32", "shape": s, "data_offsets": [off, off + nb]}
    off += nb
h = json.dumps(hdr).encode()
h += b" " * (-len(h) % 8)
with open(f"{d}/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    f.truncate(8 + len(h) + off)
EOF2
    "$BIN" convert "$tmp/big" -o "$tmp/big.gguf" --outtype f32 -q 2>"$tmp/err" &
    pid=$!
    for _ in $(seq 1 500); do
        ls "$tmp" | grep -q '^big\.gguf\.tmp\.' && break
        sleep 0.01
    done
    kill -INT $pid 2>/dev/null
    wait $pid
    rc=$?
    left=$(ls "$tmp" | grep -c '^big\.gguf')
    [ $rc -eq 130 ] && [ "$left" -eq 0 ]
    check "Ctrl-C while writing: exit 130, no OUT and no temporary file" $? "exit $rc, $left files left: $(ls "$tmp" | grep big)"
    if [ -x /usr/bin/time ]; then
        /usr/bin/time -v "$BIN" convert "$tmp/big" -o "$tmp/big.gguf" --outtype q8_0 -q 2>"$tmp/err"
        kb=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$tmp/err")
        [ -n "$kb" ] && [ "$kb" -lt 131072 ]
        check "512 MiB tensor converts in under 128 MiB resident (${kb:-?} KiB)" $? "$(tail -3 "$tmp/err")"
        rm -f "$tmp/big.gguf"
    fi
fi

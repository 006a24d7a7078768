#!/usr/bin/env bash
# Peak memory of `moerun convert` on a checkpoint over 4x larger than its own limit (issue 6:
# "peak memory stays below about 1 GiB plus one stacked expert tensor, whatever the model's
# size"). Writes a random DeepSeek-V2-Lite-shaped checkpoint (hidden 2048, 64 routed experts of
# 1408, 2 shared, MLA with kv_lora 512; 6 layers, the first dense) in BF16, 5.6 GiB in 3
# shards with model.safetensors.index.json, then runs
#   /usr/bin/time -v moerun convert DIR -o OUT.gguf --outtype f16
# and prints the maximum resident set size against the limit, 1 GiB plus the largest stacked
# expert tensor at f16 (64 x 1408 x 2048 x 2 B = 352 MiB), i.e. 1376 MiB. The weights are a
# repeated block of random small BF16 values (quick to write, never zero pages); the model is
# not meant to make sense, only to convert. Everything lives under DIR (default
# /tmp/moerun-convmem) and is deleted at the end; needs about 14 GB free there.
#
#   bench/convert-memory.sh [--dir DIR] [--keep]
# BIN overrides the binary (default ./moerun).
set -eu
cd "$(dirname "$0")/.."
BIN=${BIN:-./moerun}
dir=/tmp/moerun-convmem keep=0
while [ $# -gt 0 ]; do
    case $1 in
    --dir) dir=$2; shift ;;
    --keep) keep=1 ;;
    -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "convert-memory.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ -x /usr/bin/time ] || { echo "convert-memory.sh: /usr/bin/time missing (apt-get install time)" >&2; exit 1; }
mkdir -p "$dir"
[ $keep -eq 1 ] || trap 'rm -rf "$dir"' EXIT
free_kb=$(df -Pk "$dir" | awk 'NR == 2 {print $4}')
if [ "$free_kb" -lt $((14 * 1024 * 1024)) ]; then
    echo "convert-memory.sh: $dir has $((free_kb / 1024 / 1024)) GiB free, 14 needed" >&2
    exit 1
fi

echo "writing the checkpoint to $dir/hf ..."
t0=$(date +%s)
python3 - "$dir/hf" "$PWD/tests/ref" <<'EOF'
import json, os, random, struct, sys
out, ref = sys.argv[1], sys.argv[2]
sys.path.insert(0, ref)
from mkhf import write_tokenizer  # plain Python: a small byte-level BPE tokenizer.json
os.makedirs(out, exist_ok=True)
E, H, L, V = 2048, 16, 6, 512
kv_lora, nope, rope, vd, inter, moe_inter, n_exp, n_shared = 512, 128, 64, 128, 10944, 1408, 64, 2
cfg = {"architectures": ["DeepseekV2ForCausalLM"], "hidden_size": E, "num_hidden_layers": L,
       "num_attention_heads": H, "num_key_value_heads": H, "intermediate_size": inter,
       "moe_intermediate_size": moe_inter, "q_lora_rank": None, "kv_lora_rank": kv_lora,
       "qk_nope_head_dim": nope, "qk_rope_head_dim": rope, "v_head_dim": vd,
       "n_routed_experts": n_exp, "n_shared_experts": n_shared, "num_experts_per_tok": 6,
       "first_k_dense_replace": 1, "moe_layer_freq": 1, "n_group": 1, "topk_group": 1,
       "scoring_func": "softmax", "topk_method": "greedy", "norm_topk_prob": False,
       "routed_scaling_factor": 1.0, "vocab_size": V, "max_position_embeddings": 163840,
       "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
       "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"}
json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=1)
write_tokenizer(out, V)
t = [("model.embed_tokens.weight", [V, E])]
for i in range(L):
    p = f"model.layers.{i}."
    t += [(p + "input_layernorm.weight", [E]), (p + "self_attn.q_proj.weight", [H * (nope + rope), E]),
          (p + "self_attn.kv_a_proj_with_mqa.weight", [kv_lora + rope, E]),
          (p + "self_attn.kv_a_layernorm.weight", [kv_lora]),
          (p + "self_attn.kv_b_proj.weight", [H * (nope + vd), kv_lora]),
          (p + "self_attn.o_proj.weight", [E, H * vd]), (p + "post_attention_layernorm.weight", [E])]
    mlps = [(p + "mlp.", inter)] if i == 0 else \
        [(f"{p}mlp.experts.{e}.", moe_inter) for e in range(n_exp)] + [(p + "mlp.shared_experts.", moe_inter * n_shared)]
    if i:
        t.append((p + "mlp.gate.weight", [n_exp, E]))
    for m, f in mlps:
        t += [(m + "gate_proj.weight", [f, E]), (m + "up_proj.weight", [f, E]), (m + "down_proj.weight", [E, f])]
t += [("model.norm.weight", [E]), ("lm_head.weight", [V, E])]
# 8 MiB of random BF16 values in +-[2^-9, 2^-5) (high bytes 0x3b/0x3c, sign random);
# norms get values near 1 so that nothing overflows if someone runs the file
rng = random.Random(1)
block = bytearray(rng.getrandbits(8) for _ in range(1 << 16)) * 128
hi = bytes((0x3B + (b & 1)) | (b & 0x80) for b in range(256))
block[1::2] = block[1::2].translate(hi)
block = bytes(block)
ones = struct.pack("<H", 0x3F80)
n_shards = 3
sizes = [2 * (s[0] * (s[1] if len(s) > 1 else 1)) for _, s in t]
per = sum(sizes) / n_shards
shards, cur, acc = [[]], 0, 0
for (name, shape), nb in zip(t, sizes):
    if acc >= per * len(shards) and len(shards) < n_shards:
        shards.append([])
    shards[-1].append((name, shape, nb))
    acc += nb
wm = {}
for k, part in enumerate(shards):
    fname = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
    hdr, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, nb in part:
        hdr[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + nb]}
        off += nb
        wm[name] = fname
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    with open(os.path.join(out, fname), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        pos = 0
        for name, shape, nb in part:
            if len(shape) == 1:
                f.write(ones * (nb // 2))
                continue
            left = nb
            while left:
                s = pos % len(block)
                n = min(left, len(block) - s)
                f.write(block[s:s + n])
                left -= n
                pos += n + 2 * 4099  # shift the pattern between writes
json.dump({"metadata": {"total_size": sum(sizes)}, "weight_map": wm},
          open(os.path.join(out, "model.safetensors.index.json"), "w"), indent=1)
EOF
t1=$(date +%s)
src_b=$(du -cb "$dir"/hf/*.safetensors | awk 'END {print $1}')
echo "checkpoint: $(awk -v b="$src_b" 'BEGIN {printf "%.2f GiB", b / 2^30}') in $((t1 - t0)) s"
sync

rc=0
/usr/bin/time -v "$BIN" convert "$dir/hf" -o "$dir/out.gguf" --outtype f16 -q 2>"$dir/time.txt" || rc=$?
kb=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$dir/time.txt")
wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$dir/time.txt")
out_b=$(stat -c %s "$dir/out.gguf" 2>/dev/null || echo 0)
stacked=$((64 * 1408 * 2048 * 2))
limit_kb=$(((1024 * 1024 * 1024 + stacked) / 1024))
echo "convert exit $rc, wall $wall, output $(awk -v b="$out_b" 'BEGIN {printf "%.2f GiB", b / 2^30}')"
echo "maximum resident set size: $((kb / 1024)) MiB ($kb KiB)"
echo "limit: 1 GiB + one stacked expert tensor at f16 ($((stacked / 1048576)) MiB) = $((limit_kb / 1024)) MiB;" \
    "checkpoint / limit = $(awk -v a="$src_b" -v b="$limit_kb" 'BEGIN {printf "%.1f", a / 1024 / b}')x"
if [ $rc -ne 0 ]; then
    tail -5 "$dir/time.txt"
    exit 1
fi
if [ "$kb" -lt "$limit_kb" ]; then
    echo "PASS: peak RSS under the limit"
else
    echo "FAIL: peak RSS over the limit"
    exit 1
fi

#!/usr/bin/env python3
"""Writes a tiny Hugging Face checkpoint directory from one of the compat F32 GGUF files
(../shared/fixtures/compat/*/*-F32.gguf, written in llama.cpp's layout): config.json, a small
byte-level BPE tokenizer.json, tokenizer_config.json and safetensors with the HF tensor names
and layouts, i.e. the inverse of llama.cpp's converter (experts unstacked, DeepSeek's attn_k_b /
attn_v_b merged back into kv_b_proj, Llama's q/k rope permutation undone). Converting the
directory back must give the same tensor bytes, and eval the same logits. Plain Python.

usage: mkhf.py COMPAT-F32.gguf OUTDIR [--shards N] [--fp8] [--dtype f32|bf16]
  --shards N  split the tensors over N files with model.safetensors.index.json
  --fp8       store the 2-D attention/shared/dense projections as F8_E4M3 with 128x128
              weight_scale_inv blocks (DeepSeek-V3's format) and write OUTDIR/expected.json:
              the sha256 of each such tensor's dequantized F32 bytes as the converter must
              write them
  --dtype     bf16: every other tensor as BF16 (truncated from F32 by rounding to nearest even)
"""
import bisect
import hashlib
import json
import math
import os
import struct
import sys
from array import array

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_manifest import Reader  # noqa: E402


def read_gguf(path):
    data = open(path, "rb").read()
    r = Reader(data)
    r.take("<I"), r.take("<I")
    n_t, n_kv = r.take("<Q"), r.take("<Q")
    meta = {}
    for _ in range(n_kv):
        key, t = r.string(), r.take("<I")
        meta[key] = r.value(t)
    infos = []
    for _ in range(n_t):
        name, nd = r.string(), r.take("<I")
        ne = [r.take("<Q") for _ in range(nd)]
        t, off = r.take("<I"), r.take("<Q")
        assert t == 0, "F32 files only"
        infos.append((name, ne, off))
    base = (r.p + 31) // 32 * 32
    tensors = {}
    for name, ne, off in infos:
        n = math.prod(ne)
        a = array("f")
        a.frombytes(data[base + off:base + off + 4 * n])
        tensors[name] = (list(reversed(ne)), a)  # row-major shape
    return meta, tensors


def unpermute(a, shape, n_head):
    """llama.cpp stores row h*hd + 2j + s of HF row h*hd + s*hd/2 + j; undo it."""
    rows = shape[0]
    cols = math.prod(shape[1:]) if len(shape) > 1 else 1
    hd = rows // n_head
    out = array("f", bytes(4 * len(a)))
    for h in range(n_head):
        for j in range(hd // 2):
            for s in range(2):
                src = (h * hd + 2 * j + s) * cols
                dst = (h * hd + s * hd // 2 + j) * cols
                out[dst:dst + cols] = a[src:src + cols]
    return out


def merge_kv_b(kb, vb, H, nope, v, lora):
    """kv_b_proj [H*(nope+v), lora] from attn_k_b [H][lora][nope] and attn_v_b [H][v][lora]."""
    out = array("f", bytes(4 * H * (nope + v) * lora))
    for h in range(H):
        for j in range(nope):
            row = (h * (nope + v) + j) * lora
            for l in range(lora):
                out[row + l] = kb[(h * lora + l) * nope + j]
        for i in range(v):
            row = (h * (nope + v) + nope + i) * lora
            out[row:row + lora] = vb[(h * v + i) * lora:(h * v + i + 1) * lora]
    return out


LAYER = {"attn_norm.weight": "input_layernorm.weight",
         "ffn_norm.weight": "post_attention_layernorm.weight",
         "attn_q.weight": "self_attn.q_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
         "attn_k.weight": "self_attn.k_proj.weight", "attn_k.bias": "self_attn.k_proj.bias",
         "attn_v.weight": "self_attn.v_proj.weight", "attn_v.bias": "self_attn.v_proj.bias",
         "attn_output.weight": "self_attn.o_proj.weight",
         "attn_q_norm.weight": "self_attn.q_norm.weight",
         "attn_k_norm.weight": "self_attn.k_norm.weight",
         "attn_q_a.weight": "self_attn.q_a_proj.weight",
         "attn_q_a_norm.weight": "self_attn.q_a_layernorm.weight",
         "attn_q_b.weight": "self_attn.q_b_proj.weight",
         "attn_kv_a_mqa.weight": "self_attn.kv_a_proj_with_mqa.weight",
         "attn_kv_a_norm.weight": "self_attn.kv_a_layernorm.weight",
         "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
         "ffn_down.weight": "mlp.down_proj.weight",
         "ffn_gate_inp.weight": "mlp.gate.weight",
         "exp_probs_b.bias": "mlp.gate.e_score_correction_bias",
         "ffn_gate_inp_shexp.weight": "mlp.shared_expert_gate.weight"}
GLOBAL = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
          "output.weight": "lm_head.weight"}


def hf_arch(meta):
    arch = meta["general.architecture"]
    if arch == "llama":
        return "MixtralForCausalLM" if meta.get("llama.expert_count") else "LlamaForCausalLM"
    if arch == "deepseek2":
        return "DeepseekV3ForCausalLM" if meta.get("deepseek2.attention.q_lora_rank") else "DeepseekV2ForCausalLM"
    return {"qwen2": "Qwen2ForCausalLM", "qwen2moe": "Qwen2MoeForCausalLM",
            "qwen3moe": "Qwen3MoeForCausalLM"}[arch]


def config(meta, tensors):
    a = meta["general.architecture"]
    g = lambda k, d=None: meta.get(f"{a}.{k}", d)  # noqa: E731
    c = {"architectures": [hf_arch(meta)], "hidden_size": g("embedding_length"),
         "num_hidden_layers": g("block_count"), "num_attention_heads": g("attention.head_count"),
         "num_key_value_heads": g("attention.head_count_kv"),
         "intermediate_size": g("feed_forward_length"), "vocab_size": 512,
         "max_position_embeddings": g("context_length"), "rope_theta": g("rope.freq_base"),
         "rms_norm_eps": float("%.7g" % g("attention.layer_norm_rms_epsilon")),
         "tie_word_embeddings": "output.weight" not in tensors, "bos_token_id": 1,
         "eos_token_id": 2, "torch_dtype": "float32"}
    if g("attention.key_length") and a != "deepseek2":
        c["head_dim"] = g("attention.key_length")
    if a == "llama" and g("expert_count"):
        c.update(num_local_experts=g("expert_count"), num_experts_per_tok=g("expert_used_count"))
    if a in ("qwen2moe", "qwen3moe"):
        c.update(num_experts=g("expert_count"), num_experts_per_tok=g("expert_used_count"),
                 moe_intermediate_size=g("expert_feed_forward_length"),
                 norm_topk_prob=a == "qwen3moe")
        if g("expert_shared_feed_forward_length"):
            c["shared_expert_intermediate_size"] = g("expert_shared_feed_forward_length")
    if a == "deepseek2":
        c.update(deepseek_config(meta, g))
    return c


def deepseek_config(meta, g):
    rope = g("rope.dimension_count")
    c = {"num_key_value_heads": g("attention.head_count"),  # HF counts MLA's heads as kv heads
         "n_routed_experts": g("expert_count"), "num_experts_per_tok": g("expert_used_count"),
         "n_shared_experts": g("expert_shared_count"), "moe_intermediate_size": g("expert_feed_forward_length"),
         "first_k_dense_replace": g("leading_dense_block_count"),
         "q_lora_rank": g("attention.q_lora_rank") or None, "kv_lora_rank": g("attention.kv_lora_rank"),
         "qk_rope_head_dim": rope, "qk_nope_head_dim": g("attention.key_length_mla") - rope,
         "v_head_dim": g("attention.value_length_mla"),
         "routed_scaling_factor": g("expert_weights_scale"),
         "scoring_func": "sigmoid" if g("expert_gating_func") == 2 else "softmax",
         "norm_topk_prob": bool(g("expert_weights_norm", False)),
         "topk_method": "noaux_tc" if g("expert_gating_func") == 2 else "greedy"}
    if g("expert_group_count"):
        c.update(n_group=g("expert_group_count"), topk_group=g("expert_group_used_count"))
    if g("rope.scaling.type") == "yarn":
        c["rope_scaling"] = {"type": "yarn", "factor": g("rope.scaling.factor"),
                             "original_max_position_embeddings": g("rope.scaling.original_context_length"),
                             "beta_fast": g("rope.scaling.yarn_beta_fast"), "beta_slow": g("rope.scaling.yarn_beta_slow"),
                             "mscale": 1.0, "mscale_all_dim": round(g("rope.scaling.yarn_log_multiplier") / 0.1, 6)}
    return c


def hf_tensors(meta, tensors, cfg):
    """GGUF tensors -> ordered list of (HF name, shape, float array)."""
    a = meta["general.architecture"]
    out = []
    moe = "block_sparse_moe" if cfg["architectures"][0] == "MixtralForCausalLM" else "mlp"
    shexp = "shared_expert" if a == "qwen2moe" else "shared_experts"
    exp_names = {"gate": "w1", "up": "w3", "down": "w2"} if moe != "mlp" else \
        {k: k + "_proj" for k in ("gate", "up", "down")}
    for name, (shape, arr) in tensors.items():
        if name in GLOBAL:
            out.append((GLOBAL[name], shape, arr))
            continue
        _, b, rest = name.split(".", 2)
        pre = f"model.layers.{b}."
        if rest.endswith("_exps.weight"):
            which = rest.split("_")[1]
            n = shape[0]
            per = len(arr) // n
            for e in range(n):
                out.append((f"{pre}{moe}.experts.{e}.{exp_names[which]}.weight", shape[1:], arr[e * per:(e + 1) * per]))
        elif rest.endswith("_shexp.weight") and rest != "ffn_gate_inp_shexp.weight":
            which = rest.split("_")[1]
            out.append((f"{pre}mlp.{shexp}.{which}_proj.weight", shape, arr))
        elif rest == "attn_k_b.weight":
            H, lora, nope = shape
            v = cfg["v_head_dim"]
            vb = tensors[f"blk.{b}.attn_v_b.weight"][1]
            out.append((pre + "self_attn.kv_b_proj.weight", [H * (nope + v), lora], merge_kv_b(arr, vb, H, nope, v, lora)))
        elif rest == "attn_v_b.weight":
            continue
        elif rest == "ffn_gate_inp.weight" and moe != "mlp":
            out.append((pre + "block_sparse_moe.gate.weight", shape, arr))
        else:
            if a == "llama" and rest.startswith(("attn_q.", "attn_k.")):
                n_head = cfg["num_attention_heads"] if rest.startswith("attn_q") else cfg["num_key_value_heads"]
                arr = unpermute(arr, shape, n_head)
            out.append((pre + LAYER[rest], shape, arr))
    return out


def f32_to_bf16_bytes(arr):
    out = bytearray()
    for (u,) in struct.iter_unpack("<I", arr.tobytes()):
        out += struct.pack("<H", ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF)
    return bytes(out)


def fp8_value(b):
    e, m = (b >> 3) & 15, b & 7
    v = m / 8 * 2.0 ** -6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
    return -v if b & 0x80 else v


# every finite E4M3 value with its byte (0x7f / 0xff are NaN), sorted by value
E4M3 = sorted((fp8_value(b), b) for b in range(256) if b & 0x7F != 0x7F)
E4M3_VALUES = [v for v, _ in E4M3]


def fp8_code(x):
    """Nearest E4M3 value to x (|x| <= 448): (byte, value)."""
    i = bisect.bisect_left(E4M3_VALUES, x)
    cands = [E4M3[k] for k in (i - 1, i) if 0 <= k < len(E4M3)]
    v, b = min(cands, key=lambda vb: abs(vb[0] - x))
    return b, v


def to_fp8(shape, arr):
    """F8_E4M3 bytes, the F32 scale_inv array ([ceil(r/128), ceil(c/128)]) and the dequantized
    values (each fp8 value times its block's scale, rounded to F32 as the converter does)."""
    R, C = shape
    br, bc = (R + 127) // 128, (C + 127) // 128
    scale = array("f", [0.0] * (br * bc))
    for i in range(br):
        for j in range(bc):
            amax = max((abs(arr[r * C + c]) for r in range(i * 128, min(R, i * 128 + 128))
                        for c in range(j * 128, min(C, j * 128 + 128))), default=0.0)
            scale[i * bc + j] = amax / 448.0 if amax else 1.0
    q = bytearray(R * C)
    deq = array("f", [0.0] * (R * C))
    for r in range(R):
        for c in range(C):
            s = scale[(r // 128) * bc + c // 128]
            code, val = fp8_code(arr[r * C + c] / s)
            q[r * C + c] = code
            deq[r * C + c] = val * s
    return bytes(q), scale, deq


FP8_SUFFIXES = ("self_attn.o_proj.weight", "self_attn.q_a_proj.weight", "self_attn.q_b_proj.weight",
                "self_attn.kv_a_proj_with_mqa.weight", "mlp.down_proj.weight", "shared_experts.up_proj.weight")


def gguf_name(hf):
    inv = {v: k for k, v in LAYER.items()}
    inv["mlp.shared_experts.up_proj.weight"] = "ffn_up_shexp.weight"
    _, _, b, rest = hf.split(".", 3)
    return f"blk.{b}.{inv[rest]}"


def encode(entries, fp8, dtype):
    """(name, dtype, shape, bytes) per stored tensor, and expected sha256 per GGUF name."""
    stored, expected = [], {}
    for name, shape, arr in entries:
        if fp8 and name.endswith(FP8_SUFFIXES) and len(shape) == 2:
            q, scale, deq = to_fp8(shape, arr)
            stored.append((name, "F8_E4M3", shape, q))
            stored.append((name + "_scale_inv", "F32", [(shape[0] + 127) // 128, (shape[1] + 127) // 128], scale.tobytes()))
            expected[gguf_name(name)] = hashlib.sha256(deq.tobytes()).hexdigest()
        elif dtype == "bf16":
            stored.append((name, "BF16", shape, f32_to_bf16_bytes(arr)))
        else:
            stored.append((name, "F32", shape, arr.tobytes()))
    return stored, expected


def write_safetensors(path, items):
    header, off = {}, 0
    for name, dt, shape, data in items:
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for item in items:
            f.write(item[3])


def write_tokenizer(out, n_vocab):
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3, "b": 4, "ab": 5}
    for i in range(6, n_vocab):
        vocab[f"t{i}"] = i
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for t, i in list(vocab.items())[:3]]
    tok = {"version": "1.0", "added_tokens": added, "normalizer": None,
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
           "model": {"type": "BPE", "vocab": vocab, "merges": ["a b"]}}
    json.dump(tok, open(os.path.join(out, "tokenizer.json"), "w"))
    json.dump({"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>"},
              open(os.path.join(out, "tokenizer_config.json"), "w"))


def main():
    args = sys.argv[1:]
    src, out = args[0], args[1]
    shards = int(args[args.index("--shards") + 1]) if "--shards" in args else 1
    dtype = args[args.index("--dtype") + 1] if "--dtype" in args else "f32"
    meta, tensors = read_gguf(src)
    cfg = config(meta, tensors)
    if "--fp8" in args:
        cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}
    os.makedirs(out, exist_ok=True)
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=1)
    write_tokenizer(out, 512)
    stored, expected = encode(hf_tensors(meta, tensors, cfg), "--fp8" in args, dtype)
    if "--fp8" in args:
        json.dump(expected, open(os.path.join(out, "expected.json"), "w"), indent=1)
    if shards == 1:
        write_safetensors(os.path.join(out, "model.safetensors"), stored)
        return
    per = (len(stored) + shards - 1) // shards
    weight_map = {}
    for k in range(shards):
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = stored[k * per:(k + 1) * per]
        write_safetensors(os.path.join(out, fname), part)
        weight_map.update({name: fname for name, *_ in part})
    json.dump({"metadata": {}, "weight_map": weight_map}, open(os.path.join(out, "model.safetensors.index.json"), "w"))


if __name__ == "__main__":
    main()

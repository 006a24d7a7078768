#!/usr/bin/env python3
"""Writes tiny random Hugging Face checkpoints, one per architecture `moerun convert` reads:
config.json, tokenizer.json (a tiny byte-level BPE: 256 byte tokens, merges, 2 specials),
tokenizer_config.json and safetensors written by hand (no safetensors package; FP8 E4M3
bytes computed here since torch 1.13 has no float8 dtype). Weights come from a seeded torch
generator, so every run writes the same bytes. tests/ref/torch_forward.py is the reference
forward for them; tests/torch.test.sh converts, evals and compares.

usage: mk_tiny_hf.py OUTDIR [NAME ...]       (default: every NAME; --list prints them)

  llama          LlamaForCausalLM, GQA, untied lm_head, stored BF16
  qwen2          Qwen2ForCausalLM, q/k/v biases, tied embeddings, stored F16
  mixtral        MixtralForCausalLM, 4 experts, top-2
  qwen2moe       Qwen2MoeForCausalLM, shared expert with sigmoid gate, q/k/v biases
  qwen3moe       Qwen3MoeForCausalLM, q/k norms, head_dim != hidden/heads, norm_topk_prob,
                 3 shards with model.safetensors.index.json
  deepseek-v2    DeepseekV2ForCausalLM, q_lora_rank null, softmax, group_limited_greedy
                 (4 groups, 2 kept), routed_scaling_factor 1.5, 2 shared experts, first
                 layer dense, YaRN (mscale = mscale_all_dim = 0.707)
  deepseek-v3    DeepseekV3ForCausalLM, q_lora_rank, sigmoid + e_score_correction_bias,
                 noaux_tc (4 groups, 2 kept), norm_topk_prob, routed_scaling_factor 2.5,
                 YaRN (mscale = mscale_all_dim = 1)
  deepseek-v3-fp8  the same architecture with dimensions that are not multiples of 128,
                 every projection and expert stored F8_E4M3 with 128x128 weight_scale_inv
                 blocks (DeepSeek-V3's official format), in 2 shards where one weight and
                 its scale_inv lie in different files
"""
import json
import math
import os
import struct
import sys

import torch

# ---- tokenizer: byte-level BPE ----


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


LETTERS = "etaoinsh"
SPACE_LETTERS = "etaoinshrdlcum"
N_VOCAB = 256 + len(LETTERS) ** 2 + len(SPACE_LETTERS) + 2  # 336


def write_tokenizer(out):
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    merges = []
    for a in LETTERS:
        for b in LETTERS:
            merges.append(f"{a} {b}")
            vocab[a + b] = len(vocab)
    sp = b2u[ord(" ")]
    for a in SPACE_LETTERS:
        merges.append(f"{sp} {a}")
        vocab[sp + a] = len(vocab)
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    added = []
    for t in specials:
        added.append({"id": len(vocab), "content": t, "single_word": False, "lstrip": False,
                      "rstrip": False, "normalized": False, "special": True})
        vocab[t] = len(vocab)
    assert len(vocab) == N_VOCAB
    tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
           "normalizer": None,
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                             "use_regex": True},
           "post_processor": None,
           "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                       "use_regex": True},
           "model": {"type": "BPE", "dropout": None, "unk_token": None,
                     "continuing_subword_prefix": None, "end_of_word_suffix": None,
                     "fuse_unk": False, "byte_fallback": False, "vocab": vocab, "merges": merges}}
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tok, f, ensure_ascii=False)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": True, "add_eos_token": False, "bos_token": specials[0],
                   "eos_token": specials[1], "model_max_length": 4096,
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f)
    return N_VOCAB - 2, N_VOCAB - 1


# ---- FP8 E4M3 (e4m3fn: bias 7, no infinities, 0x7f / 0xff are NaN, max 448) ----


def e4m3_value(b):
    e, m = (b >> 3) & 15, b & 7
    v = m / 8 * 2.0 ** -6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
    return -v if b & 0x80 else v


_FIN = sorted((e4m3_value(b), b) for b in range(256) if b & 0x7F != 0x7F and b != 0x80)
E4M3_VALS = torch.tensor([v for v, _ in _FIN], dtype=torch.float64)
E4M3_CODES = torch.tensor([b for _, b in _FIN], dtype=torch.uint8)


def to_e4m3(x):
    """x (|x| <= 448, float64) -> nearest E4M3 byte codes (uint8, same shape)."""
    flat = x.reshape(-1).double()
    i = torch.bucketize(flat, E4M3_VALS).clamp(1, len(E4M3_VALS) - 1)
    lo, hi = E4M3_VALS[i - 1], E4M3_VALS[i]
    pick = torch.where((flat - lo).abs() <= (hi - flat).abs(), i - 1, i)
    return E4M3_CODES[pick].reshape(x.shape)


def fp8_blocks(w, block=128):
    """w [R, C] float32 -> (E4M3 bytes [R, C] uint8, scale_inv [ceil(R/128), ceil(C/128)] f32)."""
    R, C = w.shape
    br, bc = (R + block - 1) // block, (C + block - 1) // block
    scale = torch.ones(br, bc, dtype=torch.float32)
    q = torch.empty(R, C, dtype=torch.uint8)
    for i in range(br):
        for j in range(bc):
            blk = w[i * block:(i + 1) * block, j * block:(j + 1) * block].double()
            amax = blk.abs().max().item()
            s = torch.tensor(amax / 448.0 if amax else 1.0, dtype=torch.float32)
            scale[i, j] = s
            q[i * block:(i + 1) * block, j * block:(j + 1) * block] = to_e4m3(blk / s.double())
    return q, scale


# ---- safetensors ----

DT = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.uint8: "F8_E4M3"}


def tensor_bytes(t):
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def write_safetensors(path, items):
    """items: list of (name, tensor); uint8 tensors are F8_E4M3 codes."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in items:
        data = tensor_bytes(t)
        header[name] = {"dtype": DT[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)


def write_sharded(out, items, cuts):
    """items split at the indices in cuts into len(cuts) + 1 shards with an index file."""
    bounds = [0] + list(cuts) + [len(items)]
    n = len(bounds) - 1
    weight_map, total = {}, 0
    for k in range(n):
        fname = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        part = items[bounds[k]:bounds[k + 1]]
        write_safetensors(os.path.join(out, fname), part)
        for name, t in part:
            weight_map[name] = fname
            total += len(tensor_bytes(t))
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)


# ---- random weights ----


class Gen:
    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)
        self.items = []

    def randn(self, *shape):
        return torch.randn(*shape, generator=self.g, dtype=torch.float32)

    def linear(self, name, rows, cols, gain=1.0):
        self.items.append((name, self.randn(rows, cols) * (gain / math.sqrt(cols))))

    def norm(self, name, n):
        self.items.append((name, 1.0 + 0.2 * self.randn(n)))

    def bias(self, name, n):
        self.items.append((name, 0.2 * self.randn(n)))

    def uniform(self, name, n, lo, hi):
        self.items.append((name, lo + (hi - lo) * torch.rand(n, generator=self.g)))


def mlp(g, pre, hidden, inter, names=("gate_proj", "up_proj", "down_proj")):
    g.linear(f"{pre}.{names[0]}.weight", inter, hidden)
    g.linear(f"{pre}.{names[1]}.weight", inter, hidden)
    g.linear(f"{pre}.{names[2]}.weight", hidden, inter)


def base_config(arch, **kw):
    c = {"architectures": [arch], "vocab_size": N_VOCAB, "bos_token_id": N_VOCAB - 2,
         "eos_token_id": N_VOCAB - 1, "hidden_act": "silu", "initializer_range": 0.02,
         "torch_dtype": "float32", "use_cache": True}
    c.update(kw)
    return c


def embed_and_head(g, c):
    g.items.insert(0, ("model.embed_tokens.weight", g.randn(c["vocab_size"], c["hidden_size"])))
    g.norm("model.norm.weight", c["hidden_size"])
    if not c.get("tie_word_embeddings", False):
        g.linear("lm_head.weight", c["vocab_size"], c["hidden_size"], gain=2.0)


def std_attention(g, pre, c, bias=False, qk_norm=False):
    H, Hkv, E = c["num_attention_heads"], c["num_key_value_heads"], c["hidden_size"]
    hd = c.get("head_dim", E // H)
    g.linear(f"{pre}.self_attn.q_proj.weight", H * hd, E)
    g.linear(f"{pre}.self_attn.k_proj.weight", Hkv * hd, E)
    g.linear(f"{pre}.self_attn.v_proj.weight", Hkv * hd, E)
    if bias:
        g.bias(f"{pre}.self_attn.q_proj.bias", H * hd)
        g.bias(f"{pre}.self_attn.k_proj.bias", Hkv * hd)
        g.bias(f"{pre}.self_attn.v_proj.bias", Hkv * hd)
    g.linear(f"{pre}.self_attn.o_proj.weight", E, H * hd)
    if qk_norm:
        g.norm(f"{pre}.self_attn.q_norm.weight", hd)
        g.norm(f"{pre}.self_attn.k_norm.weight", hd)


def make_llama(g):
    c = base_config("LlamaForCausalLM", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=96, max_position_embeddings=2048,
                    rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                    attention_bias=False, mlp_bias=False, pretraining_tp=1, rope_scaling=None,
                    torch_dtype="bfloat16")
    for i in range(c["num_hidden_layers"]):
        pre = f"model.layers.{i}"
        g.norm(f"{pre}.input_layernorm.weight", 64)
        std_attention(g, pre, c)
        g.norm(f"{pre}.post_attention_layernorm.weight", 64)
        mlp(g, f"{pre}.mlp", 64, 96)
    embed_and_head(g, c)
    return c, torch.bfloat16


def make_qwen2(g):
    c = base_config("Qwen2ForCausalLM", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=80, max_position_embeddings=4096,
                    rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                    use_sliding_window=False, sliding_window=4096, max_window_layers=2,
                    torch_dtype="float16")
    for i in range(c["num_hidden_layers"]):
        pre = f"model.layers.{i}"
        g.norm(f"{pre}.input_layernorm.weight", 64)
        std_attention(g, pre, c, bias=True)
        g.norm(f"{pre}.post_attention_layernorm.weight", 64)
        mlp(g, f"{pre}.mlp", 64, 80)
    embed_and_head(g, c)
    return c, torch.float16


def make_mixtral(g):
    c = base_config("MixtralForCausalLM", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=48, max_position_embeddings=4096,
                    rope_theta=1000000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                    num_local_experts=4, num_experts_per_tok=2, router_aux_loss_coef=0.02,
                    sliding_window=None)
    for i in range(c["num_hidden_layers"]):
        pre = f"model.layers.{i}"
        g.norm(f"{pre}.input_layernorm.weight", 64)
        std_attention(g, pre, c)
        g.norm(f"{pre}.post_attention_layernorm.weight", 64)
        g.linear(f"{pre}.block_sparse_moe.gate.weight", 4, 64, gain=2.0)
        for e in range(4):
            mlp(g, f"{pre}.block_sparse_moe.experts.{e}", 64, 48, names=("w1", "w3", "w2"))
    embed_and_head(g, c)
    return c, torch.float32


def make_qwen2moe(g):
    c = base_config("Qwen2MoeForCausalLM", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4, intermediate_size=96, max_position_embeddings=4096,
                    rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                    num_experts=8, num_experts_per_tok=3, moe_intermediate_size=32,
                    shared_expert_intermediate_size=64, norm_topk_prob=False,
                    decoder_sparse_step=1, mlp_only_layers=[], use_sliding_window=False)
    for i in range(c["num_hidden_layers"]):
        pre = f"model.layers.{i}"
        g.norm(f"{pre}.input_layernorm.weight", 64)
        std_attention(g, pre, c, bias=True)
        g.norm(f"{pre}.post_attention_layernorm.weight", 64)
        g.linear(f"{pre}.mlp.gate.weight", 8, 64, gain=2.0)
        for e in range(8):
            mlp(g, f"{pre}.mlp.experts.{e}", 64, 32)
        mlp(g, f"{pre}.mlp.shared_expert", 64, 64)
        g.linear(f"{pre}.mlp.shared_expert_gate.weight", 1, 64, gain=2.0)
    embed_and_head(g, c)
    return c, torch.float32


def make_qwen3moe(g):
    c = base_config("Qwen3MoeForCausalLM", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=32, intermediate_size=96,
                    max_position_embeddings=4096, rope_theta=1000000.0, rms_norm_eps=1e-6,
                    tie_word_embeddings=False, num_experts=8, num_experts_per_tok=3,
                    moe_intermediate_size=32, norm_topk_prob=True, decoder_sparse_step=1,
                    mlp_only_layers=[], attention_bias=False, rope_scaling=None)
    for i in range(c["num_hidden_layers"]):
        pre = f"model.layers.{i}"
        g.norm(f"{pre}.input_layernorm.weight", 64)
        std_attention(g, pre, c, qk_norm=True)
        g.norm(f"{pre}.post_attention_layernorm.weight", 64)
        g.linear(f"{pre}.mlp.gate.weight", 8, 64, gain=2.0)
        for e in range(8):
            mlp(g, f"{pre}.mlp.experts.{e}", 64, 32)
    embed_and_head(g, c)
    return c, torch.float32


def deepseek(g, arch, E, H, q_lora, kv_lora, nope, rope, v, inter, moe_inter, n_exp, top_k,
             n_shared, n_group, topk_group, scoring, topk_method, norm_topk, scale, mscale):
    c = base_config(arch, hidden_size=E, num_hidden_layers=3, num_attention_heads=H,
                    num_key_value_heads=H, intermediate_size=inter, moe_intermediate_size=moe_inter,
                    q_lora_rank=q_lora, kv_lora_rank=kv_lora, qk_nope_head_dim=nope,
                    qk_rope_head_dim=rope, v_head_dim=v, n_routed_experts=n_exp,
                    n_shared_experts=n_shared, num_experts_per_tok=top_k, first_k_dense_replace=1,
                    moe_layer_freq=1, n_group=n_group, topk_group=topk_group,
                    scoring_func=scoring, topk_method=topk_method, norm_topk_prob=norm_topk,
                    routed_scaling_factor=scale, aux_loss_alpha=0.001, seq_aux=True,
                    max_position_embeddings=163840, rope_theta=10000.0, rms_norm_eps=1e-6,
                    tie_word_embeddings=False, attention_bias=False,
                    rope_scaling={"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                                  "beta_fast": 32, "beta_slow": 1, "mscale": mscale,
                                  "mscale_all_dim": mscale})
    if arch == "DeepseekV3ForCausalLM":
        c["num_nextn_predict_layers"] = 0
        c["ep_size"] = 1
    for i in range(c["num_hidden_layers"]):
        pre = f"model.layers.{i}"
        a = f"{pre}.self_attn"
        g.norm(f"{pre}.input_layernorm.weight", E)
        if q_lora:
            g.linear(f"{a}.q_a_proj.weight", q_lora, E)
            g.norm(f"{a}.q_a_layernorm.weight", q_lora)
            g.linear(f"{a}.q_b_proj.weight", H * (nope + rope), q_lora)
        else:
            g.linear(f"{a}.q_proj.weight", H * (nope + rope), E)
        g.linear(f"{a}.kv_a_proj_with_mqa.weight", kv_lora + rope, E)
        g.norm(f"{a}.kv_a_layernorm.weight", kv_lora)
        g.linear(f"{a}.kv_b_proj.weight", H * (nope + v), kv_lora)
        g.linear(f"{a}.o_proj.weight", E, H * v)
        g.norm(f"{pre}.post_attention_layernorm.weight", E)
        if i < c["first_k_dense_replace"]:
            mlp(g, f"{pre}.mlp", E, inter)
            continue
        g.linear(f"{pre}.mlp.gate.weight", n_exp, E, gain=2.0)
        if topk_method == "noaux_tc":
            g.uniform(f"{pre}.mlp.gate.e_score_correction_bias", n_exp, 0.0, 0.4)
        for e in range(n_exp):
            mlp(g, f"{pre}.mlp.experts.{e}", E, moe_inter)
        mlp(g, f"{pre}.mlp.shared_experts", E, moe_inter * n_shared)
    embed_and_head(g, c)
    return c


def make_deepseek_v2(g):
    c = deepseek(g, "DeepseekV2ForCausalLM", E=64, H=4, q_lora=None, kv_lora=32, nope=16, rope=8,
                 v=16, inter=96, moe_inter=24, n_exp=8, top_k=3, n_shared=2, n_group=4,
                 topk_group=2, scoring="softmax", topk_method="group_limited_greedy",
                 norm_topk=False, scale=1.5, mscale=0.707)
    return c, torch.float32


def make_deepseek_v3(g):
    c = deepseek(g, "DeepseekV3ForCausalLM", E=64, H=4, q_lora=48, kv_lora=32, nope=16, rope=8,
                 v=16, inter=96, moe_inter=24, n_exp=16, top_k=4, n_shared=1, n_group=4,
                 topk_group=2, scoring="sigmoid", topk_method="noaux_tc", norm_topk=True,
                 scale=2.5, mscale=1.0)
    return c, torch.float32


def make_deepseek_v3_fp8(g):
    c = deepseek(g, "DeepseekV3ForCausalLM", E=160, H=4, q_lora=144, kv_lora=136, nope=16, rope=8,
                 v=24, inter=200, moe_inter=40, n_exp=8, top_k=2, n_shared=1, n_group=2,
                 topk_group=1, scoring="sigmoid", topk_method="noaux_tc", norm_topk=True,
                 scale=2.5, mscale=1.0)
    c["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                "weight_block_size": [128, 128]}
    c["torch_dtype"] = "bfloat16"
    return c, "fp8"


MAKERS = {"llama": make_llama, "qwen2": make_qwen2, "mixtral": make_mixtral,
          "qwen2moe": make_qwen2moe, "qwen3moe": make_qwen3moe, "deepseek-v2": make_deepseek_v2,
          "deepseek-v3": make_deepseek_v3, "deepseek-v3-fp8": make_deepseek_v3_fp8}

# what DeepSeek-V3's official checkpoints store as FP8: every projection of the layers
FP8_KEEP = ("layernorm.weight", "mlp.gate.weight", "e_score_correction_bias")


def write(name, out):
    g = Gen(sum(map(ord, name)))
    cfg, dtype = MAKERS[name](g)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    write_tokenizer(out)
    items = []
    if dtype == "fp8":
        for n, t in g.items:
            if n.startswith("model.layers.") and t.dim() == 2 and not n.endswith(FP8_KEEP):
                q, s = fp8_blocks(t)
                items += [(n, q), (n + "_scale_inv", s)]
            elif n.startswith("model.layers.") or n == "model.norm.weight":
                items.append((n, t))
            else:
                items.append((n, t.to(torch.bfloat16)))  # embeddings and lm_head: BF16
    else:
        items = [(n, t.to(dtype)) for n, t in g.items]
    if name == "qwen3moe":
        write_sharded(out, items, [len(items) // 3, 2 * len(items) // 3])
    elif name == "deepseek-v3-fp8":
        # cut between a weight and its scale_inv, near the middle
        k = next(i for i in range(len(items) // 2, len(items)) if items[i][0].endswith("_scale_inv"))
        write_sharded(out, items, [k])
    else:
        write_safetensors(os.path.join(out, "model.safetensors"), items)


def main():
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if args else 1)
    if args[0] == "--list":
        print(" ".join(MAKERS))
        return
    names = args[1:] or list(MAKERS)
    for n in names:
        if n not in MAKERS:
            sys.exit(f"mk_tiny_hf.py: unknown name {n} (known: {' '.join(MAKERS)})")
        write(n, os.path.join(args[0], n))


if __name__ == "__main__":
    main()

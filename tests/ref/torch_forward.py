#!/usr/bin/env python3
"""A PyTorch reference forward (float32, batch 1, causal, no cache) for the architectures
`moerun convert` reads, written from the published model definitions: Hugging Face's
modeling_llama / modeling_qwen2 / modeling_mixtral / modeling_qwen2_moe / modeling_qwen3_moe
and DeepSeek's modeling_deepseek.py (V2 and V3). It reads the checkpoint itself (config.json and
safetensors, single or sharded; F32, F16, BF16 and F8_E4M3 with weight_scale_inv blocks), and
knows nothing of GGUF or llama.cpp's layouts.

usage: torch_forward.py --tokens 1,2,3 HF_DIR OUT.bin [HF_DIR OUT.bin ...]
Writes the logits after every token as raw little-endian float32, n_tokens x vocab_size.
"""
import json
import math
import os
import struct
import sys

import torch
import torch.nn.functional as F

# ---- checkpoint ----

E4M3 = []
for _b in range(256):
    _e, _m = (_b >> 3) & 15, _b & 7
    _v = float("nan") if _b & 0x7F == 0x7F else \
        (_m / 8 * 2.0 ** -6 if _e == 0 else (1 + _m / 8) * 2.0 ** (_e - 7))
    E4M3.append(-_v if _b & 0x80 else _v)
E4M3 = torch.tensor(E4M3, dtype=torch.float32)


def read_safetensors(path, out):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        raw = bytearray(data[a:b])
        shape, dt = info["shape"], info["dtype"]
        if dt == "F32":
            t = torch.frombuffer(raw, dtype=torch.float32)
        elif dt == "F16":
            t = torch.frombuffer(raw, dtype=torch.float16).float()
        elif dt == "BF16":
            t = torch.frombuffer(raw, dtype=torch.int16).view(torch.bfloat16).float()
        elif dt == "F8_E4M3":
            t = E4M3[torch.frombuffer(raw, dtype=torch.uint8).long()]
        else:
            raise SystemExit(f"{path}: {name}: dtype {dt} not handled")
        out[name] = t.reshape(shape) if shape else t.reshape(())
    return out


def load(d):
    cfg = json.load(open(os.path.join(d, "config.json")))
    w = {}
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        for shard in sorted(set(json.load(open(idx))["weight_map"].values())):
            read_safetensors(os.path.join(d, shard), w)
    else:
        read_safetensors(os.path.join(d, "model.safetensors"), w)
    # FP8 block scaling as DeepSeek's weight_dequant does: W = fp8 * scale_inv per block
    qc = cfg.get("quantization_config") or {}
    br, bc = qc.get("weight_block_size", [128, 128])
    for name in [n for n in w if n.endswith("_scale_inv")]:
        s = w.pop(name)
        base = name[:-len("_scale_inv")]
        R, C = w[base].shape
        full = s.repeat_interleave(br, 0).repeat_interleave(bc, 1)[:R, :C]
        w[base] = w[base] * full
    return cfg, w


# ---- building blocks (HF definitions) ----


def rms_norm(x, w, eps):
    # LlamaRMSNorm: x * rsqrt(mean(x^2) + eps), then times the weight
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def linear(x, w, b=None):
    return F.linear(x, w, b)


def rotate_half(x):
    x1, x2 = x[..., :x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rope_cos_sin(inv_freq, n, mscale=1.0):
    # angles in float64 (the exact values), then float32 as the model uses them
    t = torch.arange(n, dtype=torch.float64)
    freqs = torch.outer(t, inv_freq.double())
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * mscale).float(), (emb.sin() * mscale).float()


def default_inv_freq(dim, base):
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))


def attention(q, k, v, scale):
    """q [H, T, d], k [H, T, d], v [H, T, dv] -> [T, H*dv], causal."""
    T = q.shape[1]
    s = torch.matmul(q, k.transpose(1, 2)) * scale
    mask = torch.full((T, T), float("-inf")).triu(1)
    p = torch.softmax(s + mask, dim=-1, dtype=torch.float32)
    o = torch.matmul(p, v)  # [H, T, dv]
    return o.transpose(0, 1).reshape(T, -1)


def swiglu(x, gate, up, down):
    return linear(F.silu(linear(x, gate)) * linear(x, up), down)


# ---- Llama / Qwen2 / Mixtral / Qwen2-MoE / Qwen3-MoE ----


def std_attention(cfg, w, pre, x, cos, sin):
    T = x.shape[0]
    H, Hkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = cfg.get("head_dim") or cfg["hidden_size"] // H
    a = pre + "self_attn."
    q = linear(x, w[a + "q_proj.weight"], w.get(a + "q_proj.bias")).view(T, H, hd)
    k = linear(x, w[a + "k_proj.weight"], w.get(a + "k_proj.bias")).view(T, Hkv, hd)
    v = linear(x, w[a + "v_proj.weight"], w.get(a + "v_proj.bias")).view(T, Hkv, hd)
    if a + "q_norm.weight" in w:  # Qwen3: RMSNorm over head_dim, per head, before rope
        q = rms_norm(q, w[a + "q_norm.weight"], cfg["rms_norm_eps"])
        k = rms_norm(k, w[a + "k_norm.weight"], cfg["rms_norm_eps"])
    q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [heads, T, hd]
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    k = k.repeat_interleave(H // Hkv, dim=0)  # repeat_kv: head h uses kv head h // (H / Hkv)
    v = v.repeat_interleave(H // Hkv, dim=0)
    o = attention(q, k, v, hd ** -0.5)
    return linear(o, w[a + "o_proj.weight"])


def softmax_topk_moe(x, logits, k, norm, expert):
    """Mixtral / Qwen2-MoE / Qwen3-MoE: softmax over all experts, top-k, optional renorm."""
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    wts, idx = torch.topk(probs, k, dim=-1)
    if norm:
        wts = wts / wts.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(k):
            out[t] += wts[t, j] * expert(int(idx[t, j]), x[t:t + 1])[0]
    return out


def std_forward(cfg, w, tokens):
    arch = cfg["architectures"][0]
    E, eps = cfg["hidden_size"], cfg["rms_norm_eps"]
    H = cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or E // H
    cos, sin = rope_cos_sin(default_inv_freq(hd, cfg.get("rope_theta", 10000.0)), len(tokens))
    x = w["model.embed_tokens.weight"][tokens]
    for i in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        x = x + std_attention(cfg, w, pre, rms_norm(x, w[pre + "input_layernorm.weight"], eps), cos, sin)
        h = rms_norm(x, w[pre + "post_attention_layernorm.weight"], eps)
        if arch == "MixtralForCausalLM":
            m = pre + "block_sparse_moe."
            def ex(e, y, m=m):
                return swiglu(y, w[f"{m}experts.{e}.w1.weight"], w[f"{m}experts.{e}.w3.weight"],
                              w[f"{m}experts.{e}.w2.weight"])
            y = softmax_topk_moe(h, linear(h, w[m + "gate.weight"]), cfg["num_experts_per_tok"], True, ex)
        elif arch in ("Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM"):
            m = pre + "mlp."
            def ex(e, y, m=m):
                return swiglu(y, w[f"{m}experts.{e}.gate_proj.weight"], w[f"{m}experts.{e}.up_proj.weight"],
                              w[f"{m}experts.{e}.down_proj.weight"])
            y = softmax_topk_moe(h, linear(h, w[m + "gate.weight"]), cfg["num_experts_per_tok"],
                                 cfg.get("norm_topk_prob", False), ex)
            if m + "shared_expert.gate_proj.weight" in w:  # Qwen2-MoE
                s = swiglu(h, w[m + "shared_expert.gate_proj.weight"], w[m + "shared_expert.up_proj.weight"],
                           w[m + "shared_expert.down_proj.weight"])
                y = y + torch.sigmoid(linear(h, w[m + "shared_expert_gate.weight"])) * s
        else:
            m = pre + "mlp."
            y = swiglu(h, w[m + "gate_proj.weight"], w[m + "up_proj.weight"], w[m + "down_proj.weight"])
        x = x + y
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight")
    if head is None or cfg.get("tie_word_embeddings", False):
        head = w["model.embed_tokens.weight"]
    return linear(x, head)


# ---- DeepSeek-V2 / V3 (modeling_deepseek.py) ----


def yarn_find_correction_dim(num_rotations, dim, base=10000, max_position_embeddings=2048):
    return (dim * math.log(max_position_embeddings / (num_rotations * 2 * math.pi))) / (2 * math.log(base))


def yarn_find_correction_range(low_rot, high_rot, dim, base=10000, max_position_embeddings=2048):
    low = math.floor(yarn_find_correction_dim(low_rot, dim, base, max_position_embeddings))
    high = math.ceil(yarn_find_correction_dim(high_rot, dim, base, max_position_embeddings))
    return max(low, 0), min(high, dim - 1)


def yarn_get_mscale(scale=1, mscale=1):
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def yarn_linear_ramp_mask(lo, hi, dim):
    if lo == hi:
        hi += 0.001
    return ((torch.arange(dim, dtype=torch.float64) - lo) / (hi - lo)).clamp(0, 1)


def deepseek_rope(cfg, n):
    dim, base = cfg["qk_rope_head_dim"], cfg.get("rope_theta", 10000.0)
    rs = cfg.get("rope_scaling")
    if not rs:
        return rope_cos_sin(default_inv_freq(dim, base), n)
    assert rs.get("type", rs.get("rope_type")) == "yarn", rs
    factor = rs["factor"]
    orig = rs["original_max_position_embeddings"]
    beta_fast, beta_slow = rs.get("beta_fast", 32), rs.get("beta_slow", 1)
    mscale, mscale_all_dim = rs.get("mscale", 1), rs.get("mscale_all_dim", 0)
    freq_extra = default_inv_freq(dim, base)
    freq_inter = 1.0 / (factor * base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    lo, hi = yarn_find_correction_range(beta_fast, beta_slow, dim, base, orig)
    inv_freq_mask = 1.0 - yarn_linear_ramp_mask(lo, hi, dim // 2)
    inv_freq = freq_inter * (1 - inv_freq_mask) + freq_extra * inv_freq_mask
    _mscale = yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim)
    return rope_cos_sin(inv_freq, n, _mscale)


def deepseek_apply_rope(x, cos, sin):
    # modeling_deepseek.apply_rotary_pos_emb: the rope part is stored interleaved (pairs 2i, 2i+1);
    # it is de-interleaved to the rotate_half layout first
    h, s, d = x.shape
    x = x.view(h, s, d // 2, 2).transpose(3, 2).reshape(h, s, d)
    return x * cos + rotate_half(x) * sin


def deepseek_attention(cfg, w, a, x, cos, sin):
    T = x.shape[0]
    H = cfg["num_attention_heads"]
    nope, rope, vd = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    kv_lora, eps = cfg["kv_lora_rank"], cfg["rms_norm_eps"]
    qd = nope + rope
    if cfg.get("q_lora_rank") is None:
        q = linear(x, w[a + "q_proj.weight"])
    else:
        q = linear(rms_norm(linear(x, w[a + "q_a_proj.weight"]), w[a + "q_a_layernorm.weight"], eps),
                   w[a + "q_b_proj.weight"])
    q = q.view(T, H, qd).transpose(0, 1)
    q_nope, q_pe = torch.split(q, [nope, rope], dim=-1)
    ckv = linear(x, w[a + "kv_a_proj_with_mqa.weight"])
    ckv, k_pe = torch.split(ckv, [kv_lora, rope], dim=-1)
    k_pe = k_pe.view(T, 1, rope).transpose(0, 1)
    kv = linear(rms_norm(ckv, w[a + "kv_a_layernorm.weight"], eps), w[a + "kv_b_proj.weight"])
    kv = kv.view(T, H, nope + vd).transpose(0, 1)
    k_nope, v = torch.split(kv, [nope, vd], dim=-1)
    q_pe = deepseek_apply_rope(q_pe, cos, sin)
    k_pe = deepseek_apply_rope(k_pe, cos, sin)
    qs = torch.cat([q_nope, q_pe], dim=-1)
    ks = torch.cat([k_nope, k_pe.expand(H, T, rope)], dim=-1)
    scale = qd ** -0.5
    rs = cfg.get("rope_scaling")
    if rs:
        mscale_all_dim = rs.get("mscale_all_dim", 0)
        if mscale_all_dim:
            m = yarn_get_mscale(rs["factor"], mscale_all_dim)
            scale = scale * m * m
    return linear(attention(qs, ks, v, scale), w[a + "o_proj.weight"])


def deepseek_gate(cfg, w, m, h):
    """MoEGate.forward of DeepSeek-V2 (greedy, group_limited_greedy) and V3 (noaux_tc)."""
    n_exp, k = cfg["n_routed_experts"], cfg["num_experts_per_tok"]
    n_group, topk_group = cfg.get("n_group", 1), cfg.get("topk_group", 1)
    method = cfg.get("topk_method", "greedy")
    logits = linear(h, w[m + "gate.weight"])
    scoring = cfg.get("scoring_func", "softmax")
    scores = torch.softmax(logits, -1, dtype=torch.float32) if scoring == "softmax" else torch.sigmoid(logits)
    T = h.shape[0]
    if method == "greedy":
        wts, idx = torch.topk(scores, k, dim=-1)
    elif method == "group_limited_greedy":
        group_scores = scores.view(T, n_group, -1).max(dim=-1).values
        group_idx = torch.topk(group_scores, topk_group, dim=-1).indices
        group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
        score_mask = group_mask.unsqueeze(-1).expand(T, n_group, n_exp // n_group).reshape(T, -1)
        wts, idx = torch.topk(scores.masked_fill(~score_mask.bool(), float("-inf")), k, dim=-1)
    elif method == "noaux_tc":
        # the correction bias chooses the experts only; weights are the unbiased scores
        choice = scores + w[m + "gate.e_score_correction_bias"]
        group_scores = choice.view(T, n_group, -1).topk(2, dim=-1).values.sum(dim=-1)
        group_idx = torch.topk(group_scores, topk_group, dim=-1).indices
        group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
        score_mask = group_mask.unsqueeze(-1).expand(T, n_group, n_exp // n_group).reshape(T, -1)
        idx = torch.topk(choice.masked_fill(~score_mask.bool(), float("-inf")), k, dim=-1).indices
        wts = scores.gather(1, idx)
    else:
        raise SystemExit(f"topk_method {method} not handled")
    scale = cfg.get("routed_scaling_factor", 1.0)
    norm = k > 1 and cfg.get("norm_topk_prob", False)
    if cfg["architectures"][0] == "DeepseekV2ForCausalLM":
        # V2: renormalized weights are not scaled; the others are
        wts = wts / (wts.sum(-1, keepdim=True) + 1e-20) if norm else wts * scale
    else:
        if norm:
            wts = wts / (wts.sum(-1, keepdim=True) + 1e-20)
        wts = wts * scale
    return wts, idx


def deepseek_forward(cfg, w, tokens):
    eps = cfg["rms_norm_eps"]
    cos, sin = deepseek_rope(cfg, len(tokens))
    x = w["model.embed_tokens.weight"][tokens]
    for i in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        x = x + deepseek_attention(cfg, w, pre + "self_attn.", rms_norm(x, w[pre + "input_layernorm.weight"], eps),
                                   cos, sin)
        h = rms_norm(x, w[pre + "post_attention_layernorm.weight"], eps)
        m = pre + "mlp."
        moe = cfg.get("n_routed_experts") and i >= cfg.get("first_k_dense_replace", 0) and \
            i % cfg.get("moe_layer_freq", 1) == 0
        if not moe:
            y = swiglu(h, w[m + "gate_proj.weight"], w[m + "up_proj.weight"], w[m + "down_proj.weight"])
        else:
            wts, idx = deepseek_gate(cfg, w, m, h)
            y = torch.zeros_like(h)
            for t in range(h.shape[0]):
                for j in range(idx.shape[1]):
                    e = int(idx[t, j])
                    y[t] += wts[t, j] * swiglu(h[t:t + 1], w[f"{m}experts.{e}.gate_proj.weight"],
                                               w[f"{m}experts.{e}.up_proj.weight"],
                                               w[f"{m}experts.{e}.down_proj.weight"])[0]
            if cfg.get("n_shared_experts"):
                y = y + swiglu(h, w[m + "shared_experts.gate_proj.weight"], w[m + "shared_experts.up_proj.weight"],
                               w[m + "shared_experts.down_proj.weight"])
        x = x + y
    x = rms_norm(x, w["model.norm.weight"], eps)
    return linear(x, w["lm_head.weight"])


def forward(d, tokens):
    cfg, w = load(d)
    arch = cfg["architectures"][0]
    with torch.no_grad():
        if arch in ("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM"):
            return deepseek_forward(cfg, w, torch.tensor(tokens))
        if arch in ("LlamaForCausalLM", "Qwen2ForCausalLM", "MixtralForCausalLM",
                    "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM"):
            return std_forward(cfg, w, torch.tensor(tokens))
    raise SystemExit(f"{d}: architecture {arch} not handled")


def main():
    args = sys.argv[1:]
    if len(args) < 4 or args[0] != "--tokens" or len(args) % 2:
        sys.exit(__doc__.strip())
    torch.set_num_threads(1)
    tokens = [int(t) for t in args[1].split(",")]
    for d, out in zip(args[2::2], args[3::2]):
        logits = forward(d, tokens).float().contiguous()
        with open(out, "wb") as f:
            f.write(logits.numpy().astype("<f4").tobytes())


if __name__ == "__main__":
    main()

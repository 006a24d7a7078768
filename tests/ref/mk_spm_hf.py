#!/usr/bin/env python3
"""Tiny Llama checkpoints with a SentencePiece tokenizer.model, and the checks on what
`moerun convert` makes of them (tests/convert_spm.test.sh).

usage:
  mk_spm_hf.py from-gguf VOCAB.gguf OUTDIR
      tokenizer.model written here, protobuf by hand, from the gguf's tokens, scores and
      types (plus trainer_spec, normalizer_spec and unknown fields of every wire type, which a
      reader must skip); tokenizer.json (added_tokens only), tokenizer_config.json and
      config.json as Llama-2's; a safetensors file with an embedding and norms
  mk_spm_hf.py tiny OUTDIR
      the same kind of checkpoint around a hand-made 128-piece tokenizer.model (no fixture
      needed): the base the malformed files are made from
  mk_spm_hf.py keys GOT.gguf WANT.gguf
      the tokenizer.* keys of GOT must equal WANT's: values and order; prints differences
  mk_spm_hf.py spcheck OUTDIR/tokenizer.model VOCAB.gguf        (needs sentencepiece)
      the hand-written file loads in SentencePiece with the gguf's pieces, scores and types
  mk_spm_hf.py train OUTDIR                                     (needs sentencepiece)
      trains a small BPE model (byte_fallback, Llama's normalizer settings), writes a
      checkpoint around it with added_tokens.json, added_tokens_decoder, padding, config ids,
      a chat template and add_prefix_space; OUTDIR/expected.json holds the tokenizer keys
      llama.cpp's converter writes for it (computed here with SentencePieceProcessor as
      llama.cpp does), texts.inp / texts.out SentencePiece's ids for a set of texts
  mk_spm_hf.py expect GOT.gguf OUTDIR/expected.json
      GOT's tokenizer.* keys must equal expected.json's (values and order)
  mk_spm_hf.py tokcheck MOERUN FILE.gguf TEXTS.inp TEXTS.out
      `MOERUN tokenize FILE.gguf` on each text gives the ids on its line of TEXTS.out
  mk_spm_hf.py corrupt KIND SRC.model DST.model
      writes a malformed tokenizer.model and prints a part of the expected error message
"""
import json
import os
import random
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_manifest import Reader  # noqa: E402

# ---- protobuf, by hand ----


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7f
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb_key(field, wt):
    return varint(field << 3 | wt)


def pb_len(field, payload):
    return pb_key(field, 2) + varint(len(payload)) + payload


def pb_varint(field, n):
    return pb_key(field, 0) + varint(n)


def pb_f32(field, x):
    return pb_key(field, 5) + struct.pack("<f", x)


def piece_msg(text, score, typ, extra=b""):
    m = pb_len(1, text.encode()) + pb_f32(2, score)
    if typ != 1:  # NORMAL is the default: left out, as SentencePiece's writer may do
        m += pb_varint(3, typ)
    return m + extra


def model_proto(pieces):
    """pieces: (text, score, type) with types as in the gguf (the same numbers as the proto)."""
    out = bytearray()
    for i, (t, s, ty) in enumerate(pieces):
        # an unknown field inside one piece, and unknown top-level fields between pieces
        extra = pb_varint(7, 1) if i == 5 else b""
        out += pb_len(1, piece_msg(t, s, ty, extra))
        if i == 100:
            out += pb_key(1000, 1) + struct.pack("<Q", 123456789)
            out += pb_key(1001, 5) + struct.pack("<I", 42)
            out += pb_varint(1002, 1 << 62)
    trainer = pb_varint(3, 2) + pb_varint(4, len(pieces)) + pb_varint(35, 1)  # BPE, byte_fallback
    normalizer = pb_len(1, b"identity") + pb_varint(3, 1) + pb_varint(4, 0)
    out += pb_len(2, trainer) + pb_len(3, normalizer)
    return bytes(out)


# ---- GGUF metadata ----


def read_meta(path):
    """Ordered list of (key, gguf value type, value), arrays as ("ARRAY", list)."""
    data = open(path, "rb").read()
    r = Reader(data)
    assert r.take("<I") == 0x46554747, f"{path}: not a GGUF file"
    r.take("<I")
    r.take("<Q")
    n_kv = r.take("<Q")
    out = []
    for _ in range(n_kv):
        key, t = r.string(), r.take("<I")
        out.append((key, t, r.value(t)))
    return out


def tok_keys(path):
    return [(k, t, v) for k, t, v in read_meta(path) if k.startswith("tokenizer.")]


def key_diffs(got, want):
    diffs = []
    g, w = {k: (t, v) for k, t, v in got}, {k: (t, v) for k, t, v in want}
    for k in w:
        if k not in g:
            diffs.append(f"{k}: missing")
        elif g[k] != w[k]:
            gv, wv = g[k][1], w[k][1]
            if isinstance(gv, tuple) and isinstance(wv, tuple) and len(gv[1]) == len(wv[1]):
                i = next(i for i in range(len(wv[1])) if gv[1][i] != wv[1][i])
                diffs.append(f"{k}: element {i} is {gv[1][i]!r}, want {wv[1][i]!r}")
            else:
                diffs.append(f"{k}: {str(g[k])[:200]} != {str(w[k])[:200]}")
    diffs += [f"{k}: extra ({str(g[k])[:100]})" for k in g if k not in w]
    if not diffs and [k for k, *_ in got] != [k for k, *_ in want]:
        diffs.append(f"key order {[k for k, *_ in got]} != {[k for k, *_ in want]}")
    return diffs


# ---- a checkpoint around a tokenizer ----


def write_checkpoint(out, n_vocab, **cfg):
    os.makedirs(out, exist_ok=True)
    H = 8
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": H, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 2, "intermediate_size": 16,
              "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "vocab_size": n_vocab}
    config.update(cfg)
    json.dump(config, open(os.path.join(out, "config.json"), "w"), indent=1)
    items = [("model.embed_tokens.weight", [n_vocab, H]), ("model.layers.0.input_layernorm.weight", [H]),
             ("model.norm.weight", [H])]
    hdr, off = {}, 0
    for name, shape in items:
        nb = 4 * shape[0] * (shape[1] if len(shape) > 1 else 1)
        hdr[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + nb]}
        off += nb
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        f.truncate(8 + len(h) + off)  # zeros: the weights do not matter here


def from_gguf(src, out):
    meta = {k: v for k, _, v in read_meta(src)}
    tokens = meta["tokenizer.ggml.tokens"][1]
    scores = meta["tokenizer.ggml.scores"][1]
    types = meta["tokenizer.ggml.token_type"][1]
    os.makedirs(out, exist_ok=True)
    open(os.path.join(out, "tokenizer.model"), "wb").write(model_proto(list(zip(tokens, scores, types))))
    ids = {t: meta[f"tokenizer.ggml.{k}_token_id"] for t, k in (("unk", "unknown"), ("bos", "bos"), ("eos", "eos"))}
    # Llama-2's files: tokenizer.json names its special tokens in added_tokens, the config
    # refers to them by text; config.json has the bos / eos ids too
    added = [{"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i in sorted(ids.values())]
    json.dump({"version": "1.0", "added_tokens": added,
               "model": {"type": "BPE", "byte_fallback": True, "vocab": {}, "merges": []}},
              open(os.path.join(out, "tokenizer.json"), "w"))
    tc = {"add_bos_token": meta["tokenizer.ggml.add_bos_token"], "add_eos_token": meta["tokenizer.ggml.add_eos_token"],
          "pad_token": None, "legacy": False, "tokenizer_class": "LlamaTokenizer"}
    for t in ("bos", "eos", "unk"):
        tc[f"{t}_token"] = {"__type": "AddedToken", "content": tokens[ids[t]], "lstrip": False,
                            "normalized": False, "rstrip": False, "single_word": False}
    json.dump(tc, open(os.path.join(out, "tokenizer_config.json"), "w"), indent=1)
    write_checkpoint(out, len(tokens), bos_token_id=ids["bos"], eos_token_id=ids["eos"])


def tiny(out):
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)] + \
        [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)] + \
        [(c, -1.0 - i, 1) for i, c in enumerate("\u2581etaoinshrdlu")]
    os.makedirs(out, exist_ok=True)
    open(os.path.join(out, "tokenizer.model"), "wb").write(model_proto(pieces))
    json.dump({"add_bos_token": True, "bos_token": "<s>"}, open(os.path.join(out, "tokenizer_config.json"), "w"))
    write_checkpoint(out, len(pieces), bos_token_id=1, eos_token_id=2)


def spcheck(model, vocab):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor()
    sp.LoadFromFile(model)
    meta = {k: v for k, _, v in read_meta(vocab)}
    tokens, scores, types = (meta[f"tokenizer.ggml.{k}"][1] for k in ("tokens", "scores", "token_type"))
    bad = [] if sp.vocab_size() == len(tokens) else [f"vocab_size {sp.vocab_size()} != {len(tokens)}"]
    for i in range(min(sp.vocab_size(), len(tokens))):
        t = 2 if sp.IsUnknown(i) else 3 if sp.IsControl(i) else 5 if sp.IsUnused(i) else 6 if sp.IsByte(i) else 1
        got = (sp.IdToPiece(i), sp.GetScore(i), t)
        if got != (tokens[i], scores[i], types[i]):
            bad.append(f"piece {i}: {got} != {(tokens[i], scores[i], types[i])}")
    print("\n".join(bad[:5]))
    return 1 if bad else 0


# ---- a trained model ----

TEXTS = ["Hello world", " Hello world", "Hello World!", "  two leading spaces", "trailing spaces  ",
         "tabs\tand\nnewlines\n\n", "numbers 12345 and 3.14159", "unseen: 🦙 東京 Ünïcödé ✓",
         "", " ", "   ", "a", "multiple   spaces   between words", "emoji 😀😀 end",
         "the quick brown fox jumps over the lazy dog", "THE QUICK BROWN FOX", "don't won't it's",
         "\n", "x\n y", "<s> and </s> as text", "punctuation!!?? ... ,,;;"]


def corpus():
    rnd = random.Random(1234)
    words = ("the quick brown fox jumps over lazy dog and a cat sat on mat while river runs to "
             "sea under bright sky with stars moon light in winter summer spring autumn day night "
             "tokenizer model piece score byte merge vocabulary sentence text number 0 1 2 3 4 5 "
             "6 7 8 9 Hello World THE QUICK don't it's , . ! ? ; : ( ) -").split()
    lines = []
    for _ in range(2000):
        n = rnd.randint(3, 14)
        lines.append(" ".join(rnd.choice(words) for _ in range(n)))
    return lines


def llama_cpp_vocab(sp, n_vocab, added_json, decoder):
    """What llama.cpp's _create_vocab_sentencepiece makes of it (our own paraphrase)."""
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    scores = [-10000.0] * n_vocab
    types = [5] * n_vocab
    for i in range(min(sp.vocab_size(), n_vocab)):
        tokens[i], scores[i] = sp.IdToPiece(i), sp.GetScore(i)
        types[i] = 2 if sp.IsUnknown(i) else 3 if sp.IsControl(i) else 5 if sp.IsUnused(i) else 6 if sp.IsByte(i) else 1
    for text, i in added_json.items():
        if i < n_vocab:
            tokens[i], scores[i], types[i] = text, -1000.0, 4
    for key, d in decoder.items():
        i, text = int(key), d["content"]
        if i >= n_vocab:
            continue
        special = d.get("special") or text.startswith("<|") and text.endswith("|>")
        tokens[i], scores[i], types[i] = (text, -1000.0, 3) if special else (text.replace("\u2581", " "), -1000.0, 4)
    return tokens, scores, types


def train(out):
    import sentencepiece as spm
    os.makedirs(out, exist_ok=True)
    prefix = os.path.join(out, "sp")
    with open(prefix + ".txt", "w") as f:
        f.write("\n".join(corpus()) + "\n")
    spm.SentencePieceTrainer.train(
        input=prefix + ".txt", model_prefix=prefix, model_type="bpe", vocab_size=400,
        byte_fallback=True, split_digits=True, character_coverage=1.0, add_dummy_prefix=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", allow_whitespace_only_pieces=True,
        user_defined_symbols=["<ud>"], num_threads=1, minloglevel=2)
    os.replace(prefix + ".model", os.path.join(out, "tokenizer.model"))
    for ext in (".txt", ".vocab"):
        os.remove(prefix + ext)
    sp = spm.SentencePieceProcessor()
    sp.LoadFromFile(os.path.join(out, "tokenizer.model"))
    P = sp.vocab_size()
    n_vocab = P + 6
    added_json = {"<extra_a>": P, "\u2581ud\u2581x": P + 1, "<too_far>": n_vocab + 3}
    decoder = {"0": {"content": "<unk>", "special": True},
               str(P + 1): {"content": "\u2581ud\u2581x", "special": False},
               str(P + 2): {"content": "<|im_start|>", "special": False},
               str(P + 3): {"content": "\u2581my\u2581word", "special": False},
               str(n_vocab + 1): {"content": "<|far|>", "special": True}}
    template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tc = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
          "add_prefix_space": True, "chat_template": template, "added_tokens_decoder": decoder}
    json.dump(tc, open(os.path.join(out, "tokenizer_config.json"), "w"), indent=1)
    json.dump(added_json, open(os.path.join(out, "added_tokens.json"), "w"))
    cfg_ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "sep_token_id": n_vocab + 5}
    write_checkpoint(out, n_vocab, **cfg_ids)
    # the keys llama.cpp's converter writes: vocabulary; SpecialVocab's ids (none resolve from
    # tokenizer_config without a tokenizer.json, so config.json's in type order, the out of
    # range one skipped), flags, chat template; then LlamaModel's add_space_prefix
    tokens, scores, types = llama_cpp_vocab(sp, n_vocab, added_json, decoder)
    exp = [["tokenizer.ggml.model", 8, "llama"], ["tokenizer.ggml.pre", 8, "default"],
           ["tokenizer.ggml.tokens", 9, ["ARRAY", tokens]],
           ["tokenizer.ggml.scores", 9, ["ARRAY", [struct.unpack("<f", struct.pack("<f", s))[0] for s in scores]]],
           ["tokenizer.ggml.token_type", 9, ["ARRAY", types]],
           ["tokenizer.ggml.bos_token_id", 4, 1], ["tokenizer.ggml.eos_token_id", 4, 2],
           ["tokenizer.ggml.padding_token_id", 4, 0],
           ["tokenizer.ggml.add_bos_token", 7, True], ["tokenizer.ggml.add_eos_token", 7, False],
           ["tokenizer.chat_template", 8, template], ["tokenizer.ggml.add_space_prefix", 7, True]]
    json.dump(exp, open(os.path.join(out, "expected.json"), "w"))
    with open(os.path.join(out, "texts.inp"), "w") as fi, open(os.path.join(out, "texts.out"), "w") as fo:
        for t in TEXTS:
            fi.write(t + "\n__ggml_vocab_test__\n")
            fo.write("".join(f" {i}" for i in sp.encode(t)) + "\n")


def expect(got, exp_path):
    want = [(k, t, tuple(v) if isinstance(v, list) else v) for k, t, v in json.load(open(exp_path))]
    return key_diffs(tok_keys(got), want)


# ---- tokenization ----


def tokcheck(binary, model, inp, out):
    texts = open(inp, "rb").read().split(b"\n__ggml_vocab_test__\n")[:-1]
    lines = open(out).read().split("\n")
    bad = []
    for i, t in enumerate(texts):
        want = lines[i].split() if i < len(lines) else None
        r = subprocess.run([binary, "tokenize", model], input=t, capture_output=True)
        got = r.stdout.decode().split()
        if r.returncode or got != want:
            bad.append(f"text {i} {t[:40]!r}: got {' '.join(got)[:120]} want {' '.join(want or [])[:120]}"
                       f"{' ' + r.stderr.decode().strip() if r.returncode else ''}")
    if not texts:
        bad.append("no texts")
    print(f"{len(texts) - len(bad)}/{len(texts)} texts match")
    print("\n".join(bad[:5]))
    return 1 if bad else 0


# ---- malformed files ----


def corrupt(kind, src, dst):
    good = open(src, "rb").read()
    first = b""  # the first three pieces of src, whole
    pos = 0
    for _ in range(3):
        assert good[pos] == 0x0a
        n, k = 0, 0
        while True:
            b = good[pos + 1 + k]
            n |= (b & 0x7f) << (7 * k)
            k += 1
            if not b & 0x80:
                break
        first += good[pos:pos + 1 + k + n]
        pos += 1 + k + n
    cases = {
        "truncated": (good[:len(first) + 3], f"ModelProto field 1 (pieces[3]) at offset {len(first) + 1}: length"),
        "bad-varint": (first + b"\x0a" + b"\xff" * 10 + b"\x01",
                       f"ModelProto field 1 (pieces[3]) at offset {len(first) + 1}: varint longer than 64 bits"),
        "wire-type": (first + b"\x08\x05", f"ModelProto field 1 (pieces[3]) at offset {len(first)}: wire type 0, expected 2"),
        "score-wire-type": (pb_len(1, pb_len(1, b"a") + pb_varint(2, 5)),
                            "pieces[0] field 2 at offset 5: wire type 0, expected 5"),
        "group": (first + b"\x0b", f"at offset {len(first)}: unsupported wire type 3"),
        "bad-type": (first + pb_len(1, piece_msg("x", 0.0, 9)), "type 9 is not a SentencePiece piece type"),
        "bad-utf8": (first + pb_len(1, pb_len(1, b"a\xffb")), "piece is not valid UTF-8"),
        "empty": (b"", "no pieces"),
        "json": (b'{"model": {"type": "BPE"}}', "unsupported wire type 3"),
    }
    data, msg = cases[kind]
    open(dst, "wb").write(data)
    print(msg)


def main():
    a = sys.argv[1:]
    if a[0] == "from-gguf":
        from_gguf(a[1], a[2])
    elif a[0] == "tiny":
        tiny(a[1])
    elif a[0] == "keys":
        d = key_diffs(tok_keys(a[1]), tok_keys(a[2]))
        print("\n".join(d[:10]))
        return 1 if d else 0
    elif a[0] == "spcheck":
        return spcheck(a[1], a[2])
    elif a[0] == "train":
        train(a[1])
    elif a[0] == "expect":
        d = expect(a[1], a[2])
        print("\n".join(d[:10]))
        return 1 if d else 0
    elif a[0] == "tokcheck":
        return tokcheck(*a[1:5])
    elif a[0] == "corrupt":
        corrupt(a[1], a[2], a[3])
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# moerun convert with a SentencePiece tokenizer.model (tests/ref/mk_spm_hf.py builds the
# checkpoints):
#  1. llama.cpp's own SPM vocabulary (fixtures/vocab/ggml-vocab-llama-spm.gguf) written back
#     as a tokenizer.model protobuf by hand, in a Llama-2-style checkpoint: the converted
#     file's tokenizer keys equal the original's (tokens, scores, types, special ids, flags,
#     order), and `moerun tokenize` on it reproduces llama.cpp's ids for the fixture texts;
#  2. a small BPE model trained here with SentencePiece (byte_fallback) with added_tokens.json,
#     added_tokens_decoder, padding and config ids: the keys llama.cpp's converter writes
#     (computed with SentencePieceProcessor), and `moerun tokenize` equal to SentencePiece's
#     own encoding on a set of texts;
#  3. the tokenizer file each architecture takes (Llama, Mixtral, Qwen2: tokenizer.model
#     first; the MoE ones: tokenizer.json), and malformed tokenizer.model files: exit 1, a
#     message naming the file, the field and the offset, and no output file.
# Needs python3; part 2 and the SentencePiece cross-check of part 1 need python3-sentencepiece
# (SPM_PYTHON picks the interpreter). Prints "ok"/"FAIL"/"SKIP" lines.
set -u
BIN=${BIN:-./moerun}
FIX=${MOERUN_FIXTURES:-../shared/fixtures}
REF=$(cd "$(dirname "$0")" && pwd)/ref
MK=$REF/mk_spm_hf.py
V=$FIX/vocab/ggml-vocab-llama-spm.gguf
. "$(dirname "$0")/lib.sh"

require_subcommand convert_spm convert || exit 0
if ! command -v python3 >/dev/null; then
    echo "SKIP convert_spm: python3 not found (the checks build the checkpoints with it)"
    exit 0
fi
SPY=
for p in ${SPM_PYTHON:-} python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null && "$p" -c 'import sentencepiece' 2>/dev/null; then
        SPY=$p
        break
    fi
done

convert() { # hf dir, out
    "$BIN" convert "$1" -o "$2" --outtype f32 -q 2>"$tmp/err"
}

# ---- 1. llama.cpp's SPM vocabulary, round trip ----
if [ -f "$V" ]; then
    python3 "$MK" from-gguf "$V" "$tmp/l2"
    convert "$tmp/l2" "$tmp/l2.gguf"
    check "convert Llama-2-style checkpoint with tokenizer.model" $? "$(cat "$tmp/err")"
    d=$(python3 "$MK" keys "$tmp/l2.gguf" "$V" 2>&1)
    check "llama-spm: tokenizer keys (tokens, scores, types, ids, flags, order) equal llama.cpp's" $? "$d"
    d=$(python3 "$MK" tokcheck "$BIN" "$tmp/l2.gguf" "$V.inp" "$V.out" 2>&1)
    check "llama-spm: tokenize on the converted file gives llama.cpp's ids ($(echo "$d" | head -1))" $? "$d"
    if [ -n "$SPY" ]; then
        d=$("$SPY" "$MK" spcheck "$tmp/l2/tokenizer.model" "$V" 2>&1)
        check "llama-spm: the hand-written tokenizer.model loads in SentencePiece with the same pieces" $? "$d"
    else
        echo "SKIP llama-spm SentencePiece cross-check: no python3 with sentencepiece (apt-get install python3-sentencepiece, or set SPM_PYTHON)"
    fi
else
    echo "SKIP convert_spm llama-spm: $V not found"
fi

# ---- 2. a model trained by SentencePiece ----
if [ -n "$SPY" ]; then
    "$SPY" "$MK" train "$tmp/tr" 2>"$tmp/err"
    check "train a SentencePiece BPE model (byte_fallback)" $? "$(tail -3 "$tmp/err")"
    convert "$tmp/tr" "$tmp/tr.gguf"
    rc=$?
    check "convert it" $rc "$(cat "$tmp/err")"
    grep -q 'warning: .*added_tokens.json: token id .* ("<too_far>") is outside vocab_size' "$tmp/err"
    check "added token past vocab_size: warned and ignored" $? "$(cat "$tmp/err")"
    d=$(python3 "$MK" expect "$tmp/tr.gguf" "$tmp/tr/expected.json" 2>&1)
    check "trained: tokenizer keys equal llama.cpp's rules (added tokens, decoder, padding, ids, flags)" $? "$d"
    d=$(python3 "$MK" tokcheck "$BIN" "$tmp/tr.gguf" "$tmp/tr/texts.inp" "$tmp/tr/texts.out" 2>&1)
    check "trained: tokenize equals SentencePiece's encode ($(echo "$d" | head -1))" $? "$d"
else
    echo "SKIP convert_spm trained model: no python3 with sentencepiece (apt-get install python3-sentencepiece, or set SPM_PYTHON)"
fi

# ---- 3. which tokenizer file, per architecture; malformed tokenizer.model files ----
python3 "$MK" tiny "$tmp/tiny"
convert "$tmp/tiny" "$tmp/tiny.gguf"
check "convert a checkpoint with a hand-made tokenizer.model" $? "$(cat "$tmp/err")"
if [ -f "$tmp/tiny.gguf" ]; then
    # Qwen2 tries tokenizer.model first too; the MoE architectures take tokenizer.json only
    cp -r "$tmp/tiny" "$tmp/q2" && sed -i 's/"LlamaForCausalLM"/"Qwen2ForCausalLM"/' "$tmp/q2/config.json"
    convert "$tmp/q2" "$tmp/q2.gguf" && d=$(python3 "$MK" keys "$tmp/q2.gguf" "$tmp/tiny.gguf" 2>&1)
    check "Qwen2ForCausalLM takes tokenizer.model first, as llama.cpp" $? "$d $(cat "$tmp/err")"
    cp -r "$tmp/tiny" "$tmp/moe" && sed -i 's/"LlamaForCausalLM"/"Qwen2MoeForCausalLM"/' "$tmp/moe/config.json"
    "$BIN" convert "$tmp/moe" -o "$tmp/moe.gguf" -q 2>"$tmp/err"
    [ $? -eq 1 ] && grep -q "moe/tokenizer.json" "$tmp/err"
    check "Qwen2MoeForCausalLM ignores tokenizer.model (wants tokenizer.json, as llama.cpp)" $? "$(cat "$tmp/err")"
    cp -r "$tmp/tiny" "$tmp/nomodel" && rm "$tmp/nomodel/tokenizer.model"
    echo '{"model": {"type": "BPE", "byte_fallback": true, "vocab": {}, "merges": []}}' >"$tmp/nomodel/tokenizer.json"
    "$BIN" convert "$tmp/nomodel" -o "$tmp/nomodel.gguf" -q 2>"$tmp/err"
    [ $? -eq 1 ] && grep -q "SentencePiece-style BPE (byte_fallback): convert needs its tokenizer.model" "$tmp/err"
    check "Llama tokenizer.json with byte_fallback and no tokenizer.model: a clear error" $? "$(cat "$tmp/err")"
    rm "$tmp/nomodel/tokenizer.json"
    "$BIN" convert "$tmp/nomodel" -o "$tmp/nomodel.gguf" -q 2>"$tmp/err"
    [ $? -eq 1 ] && grep -q "nomodel: neither tokenizer.model nor tokenizer.json" "$tmp/err"
    check "Llama with no tokenizer file: a clear error" $? "$(cat "$tmp/err")"

    # malformed: exit 1, file + field + offset named, no output
    src=$tmp/tiny/tokenizer.model
    for kind in truncated bad-varint wire-type score-wire-type group bad-type bad-utf8 empty json; do
        rm -rf "$tmp/bad" && cp -r "$tmp/tiny" "$tmp/bad"
        want=$(python3 "$MK" corrupt $kind "$src" "$tmp/bad/tokenizer.model")
        "$BIN" convert "$tmp/bad" -o "$tmp/bad.gguf" -q 2>"$tmp/err"
        rc=$?
        [ $rc -eq 1 ] && [ ! -e "$tmp/bad.gguf" ] && grep -qF "bad/tokenizer.model: " "$tmp/err" &&
            grep -qF -- "$want" "$tmp/err"
        check "malformed tokenizer.model ($kind): exit 1, message names file and field" $? \
            "exit $rc, want '$want', stderr: $(head -c 300 "$tmp/err")"
    done
    left=$(find "$tmp" -maxdepth 1 -name '*.tmp.*' | wc -l)
    [ "$left" -eq 0 ]
    check "no temporary files left behind" $? "$(ls "$tmp")"
fi

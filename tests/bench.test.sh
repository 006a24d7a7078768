#!/usr/bin/env bash
# moerun bench on the built-in model: --json prints one valid JSON object per test with
# llama-bench's field names (and the roofline for decode), the table has its header and a row
# per test, --membw is used as given, and bad arguments are one-line usage errors (status 1).
# Checks shapes only, never speeds. Prints "ok"/"FAIL"/"SKIP" lines. Needs python3.
set -u
BIN=${BIN:-./moerun}
MODEL=${MODEL:-models/tinyseek-kjv-q8_0.gguf}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if ! command -v python3 >/dev/null; then
    echo "SKIP bench: python3 not found (checks the JSON)"
    exit 0
fi
if "$BIN" bench --help 2>&1 | grep -q "unknown command"; then
    echo "SKIP bench: $BIN has no bench command"
    exit 0
fi

check() { # name, then a command that succeeds when the check holds
    local name=$1
    shift
    if "$@"; then echo "ok bench: $name"; else echo "FAIL bench: $name"; fi
}

json_ok() { # file, expected membw or "" -> python checks the lines
    python3 - "$1" "$2" <<'PY'
import json, sys
lines = [l for l in open(sys.argv[1]) if l.strip()]
if len(lines) != 2: sys.exit(f"{len(lines)} lines, expected 2")
pp, tg = (json.loads(l) for l in lines)
common = ["model_filename", "model_type", "model_size", "model_n_params", "backends",
          "n_threads", "n_prompt", "n_gen", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts",
          "samples_ts"]
for o in (pp, tg):
    missing = [k for k in common if k not in o]
    if missing: sys.exit(f"missing {missing} in {o}")
    if not (o["avg_ts"] > 0 and o["stddev_ts"] >= 0 and len(o["samples_ts"]) == 1):
        sys.exit(f"bad figures in {o}")
    if not (o["model_size"] > 0 and o["model_n_params"] > 0 and o["n_threads"] >= 1):
        sys.exit(f"bad model fields in {o}")
if (pp["n_prompt"], pp["n_gen"], tg["n_prompt"], tg["n_gen"]) != (8, 0, 0, 4):
    sys.exit("wrong n_prompt / n_gen")
for k in ("roofline_fraction", "decode_bytes_per_token", "membw_gbps"):
    if not (isinstance(tg.get(k), (int, float)) and tg[k] > 0): sys.exit(f"bad {k} in {tg}")
if "roofline_fraction" in pp: sys.exit("roofline_fraction on the prefill line")
if sys.argv[2] and abs(tg["membw_gbps"] - float(sys.argv[2])) > 1e-6:
    sys.exit(f"membw_gbps {tg['membw_gbps']}, expected {sys.argv[2]}")
PY
}

"$BIN" bench "$MODEL" -p 8 -n 4 -r 1 --json >"$tmp/out.json" 2>"$tmp/err"
check "--json: exit 0, nothing on stderr" test $? -eq 0 -a ! -s "$tmp/err"
check "--json: two lines of valid JSON with the fields" json_ok "$tmp/out.json" ""

"$BIN" bench -m "$MODEL" -p 8 -n 4 -r 1 -t 1 --membw 12.5 --json >"$tmp/membw.json" 2>&1
check "--membw 12.5 is the bandwidth used" json_ok "$tmp/membw.json" 12.5

"$BIN" bench "$MODEL" -p 8 -n 4 -r 2 --membw 10 >"$tmp/table" 2>&1
check "table: header and rows pp8, tg4" \
    grep -q '^| model .*| *test | *t/s | roofline |' "$tmp/table"
check "table: a pp8 row and a tg4 row with a roofline" \
    bash -c "grep -q '| *pp8 |' '$tmp/table' && grep -q '| *tg4 | .*%' '$tmp/table'"

usage_error() { # args... -> exit 1 with one line on stderr
    "$BIN" bench "$@" >/dev/null 2>"$tmp/uerr"
    local rc=$?
    [ "$rc" -eq 1 ] && [ "$(wc -l <"$tmp/uerr")" -eq 1 ]
}
check "no model: usage error" usage_error
check "-p x: usage error" usage_error "$MODEL" -p x
check "-p 0 -n 0: usage error" usage_error "$MODEL" -p 0 -n 0
check "missing file: error" usage_error "$tmp/none.gguf"
check "--help: exit 0" bash -c "'$BIN' bench --help | grep -q '^usage: moerun bench'"

"$BIN" bench "$MODEL" -p 8 -n 4 -r 1 --no-mmap --mlock --json >"$tmp/hold.json" 2>&1
check "--no-mmap --mlock: use_mmap false, use_mlock true in the JSON" python3 -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
sys.exit(not (len(rows) == 2 and all(r["use_mmap"] is False and r["use_mlock"] is True for r in rows)))
' "$tmp/hold.json"
check "default: use_mmap true, use_mlock false" python3 -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
sys.exit(not all(r["use_mmap"] is True and r["use_mlock"] is False for r in rows))
' "$tmp/out.json"

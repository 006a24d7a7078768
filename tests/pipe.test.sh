#!/usr/bin/env bash
# moerun run in shell pipelines: one output line per input line, JSON records, clean stdout,
# exit statuses (0, 1 model or usage error, 2 unreadable input, 130 interrupted) and a closed
# downstream pipe. Uses the built-in model (models/, found beside the binary).
set -u
BIN=${BIN:-./moerun}
. "$(dirname "$0")/lib.sh"

printf 'In the beginning\nAnd God said\n' | "$BIN" run --each-line -n 8 --temp 0 >"$tmp/out" 2>"$tmp/err"
rc=$?
n=$(wc -l <"$tmp/out")
[ $rc -eq 0 ] && [ "$n" -eq 2 ] && [ "$(head -n 1 "$tmp/out")" = " of the children of Israel, and the" ]
check "--each-line: two prompts, two lines" $? "exit $rc, $n lines: $(cat "$tmp/out")"
! grep -q moerun "$tmp/out" && grep -q "loaded in" "$tmp/err"
check "--each-line: logs on stderr only" $? "$(head -c 200 "$tmp/out")"

printf 'a\n\nb\n' | "$BIN" run --each-line -n 4 --temp 0 -q >"$tmp/out"
[ "$(wc -l <"$tmp/out")" -eq 3 ] && [ -z "$(sed -n 2p "$tmp/out")" ]
check "--each-line: an empty line gets an empty reply" $? "$(cat "$tmp/out")"

printf 'In the beginning\nsaid "he"\\ \n' | "$BIN" run --json -n 6 --temp 0 -q >"$tmp/out"
python3 - "$tmp/out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert len(rows) == 2, rows
assert rows[0]["prompt"] == "In the beginning" and rows[0]["text"] == " of the children of Israel,"
assert rows[1]["prompt"] == 'said "he"\\ '
for r in rows:
    assert r["tokens"] == 6 and r["prompt_tokens"] > 0 and r["tokens_per_s"] >= 0
PY
check "--json: one parseable record per prompt" $? "$(cat "$tmp/out")"

"$BIN" run -p "In the beginning" -n 200 --temp 0 2>"$tmp/err" | head -c 5 >/dev/null
rc=${PIPESTATUS[0]}
[ $rc -eq 0 ] && ! grep -qi "error\|broken" "$tmp/err"
check "a closed pipe ends quietly with 0" $? "exit $rc: $(cat "$tmp/err")"

"$BIN" run /nonexistent/model.gguf -p hi >/dev/null 2>"$tmp/err"
rc=$?
[ $rc -eq 1 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q "/nonexistent/model.gguf" "$tmp/err"
check "a missing model: exit 1, one line" $? "exit $rc: $(cat "$tmp/err")"

"$BIN" run -f /nonexistent/prompt.txt >/dev/null 2>"$tmp/err"
rc=$?
[ $rc -eq 2 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q "/nonexistent/prompt.txt" "$tmp/err"
check "an unreadable prompt file: exit 2, one line" $? "exit $rc: $(cat "$tmp/err")"

mkfifo "$tmp/fifo"
"$BIN" run --each-line -q <"$tmp/fifo" >/dev/null 2>"$tmp/err" &
pid=$!
exec 3>"$tmp/fifo" # keep the pipe open: the run waits for a prompt
sleep 1
kill -INT $pid
wait $pid
rc=$?
exec 3>&-
[ $rc -eq 130 ] && [ ! -s "$tmp/err" ]
check "Ctrl-C: exit 130" $? "exit $rc: $(cat "$tmp/err")"

# every chat template family renders and runs (the built-in model has no template of its own);
# Mistral's template refuses a system turn, as the real one does
for f in plain deepseek3 deepseek3.1 deepseek-r1 deepseek-r1-llamacpp deepseek2 chatml qwen2.5 \
    qwen3 llama3 llama3.1 llama2 mistral mistral-nemo; do
    sys=(--system "Be brief.")
    [ $f = mistral ] && sys=()
    out=$(printf 'In the beginning\n' | "$BIN" run --each-line --template $f "${sys[@]}" -n 4 --temp 0 -q 2>&1)
    rc=$?
    [ $rc -eq 0 ] && [ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ]
    check "--template $f in a pipeline" $? "exit $rc: $out"
done

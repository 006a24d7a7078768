#!/usr/bin/env bash
# The chat REPL as a person drives it, through a pseudo-terminal: tmux runs `moerun chat` in
# a detached session of fixed size, send-keys types, capture-pane reads the screen. Every
# wait polls with a deadline. HOME and XDG_STATE_HOME point into a temporary directory, so
# the history file is the test's own. Prints "ok"/"FAIL"/"SKIP" lines.
set -u
BIN=${BIN:-./moerun}
MODEL=models/tinyseek-kjv-q8_0.gguf

if ! command -v tmux >/dev/null 2>&1; then
    echo "SKIP repl: tmux is not installed (apt-get install tmux)"
    exit 0
fi
case "$BIN" in /*) ;; *) BIN="$PWD/$BIN" ;; esac
if ! "$BIN" chat --help 2>/dev/null | grep -q "usage: moerun chat"; then
    echo "SKIP repl: $BIN has no chat command"
    exit 0
fi

# Line editing, history and bracketed paste come with libedit; a build without it says so.
has_edit=1
"$BIN" chat --help | grep -q "no libedit" && has_edit=0
skip_edit() {
    [ "$has_edit" = 1 ] && return 1
    echo "SKIP $1: this build has no libedit"
}

tmp=$(mktemp -d)
# a server of our own, its socket in the temporary directory, no user configuration
tm() { tmux -S "$tmp/tmux.sock" -f /dev/null "$@"; }
trap 'tm kill-server >/dev/null 2>&1; rm -rf "$tmp"' EXIT

check() { # name, condition-result (0 = pass), detail
    if [ "$2" -eq 0 ]; then echo "ok $1"; else echo "FAIL $1: $3"; fi
}

# The whole screen and scrollback, wrapped lines joined.
screen() { tm capture-pane -p -J -S - -t "$sess" 2>/dev/null; }
alive() { tm has-session -t "$sess" 2>/dev/null; }
# The last $1 lines that are not blank, for failure messages.
last() { screen | grep -v '^ *$' | tail -n "$1"; }
# Lines that start with the prompt: one more each time the REPL is ready for input.
prompts() { screen | grep -c '^>>> '; }

# Polls until the screen matches an extended regex; $2 is the limit in tenths of a second.
wait_for() {
    local i
    for ((i = 0; i < ${2:-100}; i++)); do
        screen | grep -Eq -- "$1" && return 0
        alive || return 1
        sleep 0.1
    done
    return 1
}

# Waits until there are at least $1 prompt lines (the last reply or command has finished).
wait_prompts() {
    local i
    for ((i = 0; i < ${2:-150}; i++)); do
        [ "$(prompts)" -ge "$1" ] && return 0
        alive || return 1
        sleep 0.1
    done
    return 1
}

# Types a line and waits for the prompt after it.
say() {
    local n
    n=$(prompts)
    tm send-keys -t "$sess" -l -- "$1"
    tm send-keys -t "$sess" Enter
    wait_prompts $((n + 1))
}

# Starts `moerun chat MODEL ARGS...` in a fresh session; its exit status lands in $tmp/exit.
# Each run gets a new session; the old one goes after (killing the server and starting
# another at once races with its shutdown).
sess=none n_sess=0
start() {
    local old=$sess args
    sess=s$((++n_sess))
    rm -f "$tmp/exit"
    args=$(printf ' %q' "$@")
    tm new-session -d -s "$sess" -x 150 -y 50 -c "$PWD" \
        "env HOME=$tmp XDG_STATE_HOME=$tmp/state NO_COLOR=1 TERM=xterm $BIN chat $MODEL$args;
         echo \$? >$tmp/exit; sleep 600"
    tm kill-session -t "$old" >/dev/null 2>&1
    wait_prompts 1 100
    # libedit sets the terminal mode after drawing the prompt; keys sent before that may be
    # flushed with the old mode's input queue
    sleep 0.3
}

# Waits for the REPL to end; prints its exit status (or "none").
exit_status() {
    local i
    for ((i = 0; i < 50; i++)); do
        [ -s "$tmp/exit" ] && cat "$tmp/exit" && return
        sleep 0.1
    done
    echo none
}

# Line $2 (default 2: the reply's first) of the screen from the prompt line "$1" on.
reply_after() { screen | grep -A1 -xF -- ">>> $1" | sed -n "${2:-2}p"; }

# ---- a line edited before sending, history across runs, /exit ----
start --temp 0
wait_prompts 1 100
check "starts with a prompt" $? "screen: $(last 5)"
tm send-keys -t "$sess" -l 'hello wrldx'
tm send-keys -t "$sess" BSpace Left Left Left
tm send-keys -t "$sess" -l 'o'
tm send-keys -t "$sess" Enter
wait_prompts 2
screen | grep -q '^>>> hello world *$'
r=$?
skip_edit "typing with Left and BSpace edits the line" ||
    check "typing with Left and BSpace edits the line" $r "screen: $(last 5)"
say "/save $tmp/edit.json"
grep -qF '"content": "hello world"' "$tmp/edit.json" 2>/dev/null
r=$?
skip_edit "the edited line is the message sent" ||
    check "the edited line is the message sent" $r "json: $(cat "$tmp/edit.json" 2>/dev/null)"
tm send-keys -t "$sess" -l '/exit'
tm send-keys -t "$sess" Enter
st=$(exit_status)
[ "$st" = 0 ]
check "/exit leaves with status 0" $? "status $st"

start --temp 0
tm send-keys -t "$sess" Up Up Up
wait_for '^>>> hello world *$' 30
r=$?
skip_edit "Up recalls history from the previous run" ||
    check "Up recalls history from the previous run" $r "screen: $(last 3)"
tm send-keys -t "$sess" C-u C-d
st=$(exit_status)
[ "$st" = 0 ]
check "Ctrl-D leaves with status 0" $? "status $st"

# ---- a """ block, a bracketed paste, /set temp 0, /clear, /save and /load ----
start --no-history
n=$(prompts)
for l in '"""' 'first line' 'second line' '"""'; do
    tm send-keys -t "$sess" -l -- "$l"
    tm send-keys -t "$sess" Enter
done
wait_prompts $((n + 1))
wait_for '^\.\.\. second line$' 10
r1=$?
say "/save $tmp/block.json"
grep -qF '"content": "first line\nsecond line"' "$tmp/block.json" 2>/dev/null
check '""" block is one message with its newline' $((r1 | $?)) \
    "json: $(cat "$tmp/block.json" 2>/dev/null)"

n=$(prompts)
tm set-buffer -b p "$(printf 'pasted one\npasted two')"
tm paste-buffer -p -b p -t "$sess"
sleep 0.3
tm send-keys -t "$sess" Enter
wait_prompts $((n + 1))
say "/save $tmp/paste.json"
grep -qF '"content": "pasted one\npasted two"' "$tmp/paste.json" 2>/dev/null
r=$?
skip_edit "bracketed paste keeps the pasted newline in one message" ||
    check "bracketed paste keeps the pasted newline in one message" $r \
    "json: $(tail -c 300 "$tmp/paste.json" 2>/dev/null)"

say "/clear"
say "/show"
screen | grep -q '^conversation: 0 messages'
check "/clear empties the conversation" $? "screen: $(last 8)"

say "/set temp 0"
say "And God said"
a=$(reply_after 'And God said')
say "/clear"
say "And God said"
b=$(reply_after 'And God said' 5)
[ -n "$a" ] && [ "$a" = "$b" ]
check "/set temp 0 makes the reply to the same question repeat" $? "first: '$a' second: '$b'"

say "And the earth"
say "/save $tmp/conv.json"
python3 - "$tmp/conv.json" <<'EOF' 2>/dev/null
import json, sys
m = json.load(open(sys.argv[1]))
assert [x["role"] for x in m] == ["user", "assistant", "user", "assistant"], m
assert m[0]["content"] == "And God said" and m[2]["content"] == "And the earth", m
EOF
r=$?
if ! command -v python3 >/dev/null; then # without python3: the four messages, by grep
    [ "$(grep -c '"role": "' "$tmp/conv.json" 2>/dev/null)" = 4 ] &&
        grep -qF '"content": "And God said"' "$tmp/conv.json"
    r=$?
fi
check "/save writes the conversation as JSON" $r "json: $(cat "$tmp/conv.json" 2>/dev/null)"
say "/clear"
say "/load $tmp/conv.json"
say "/show"
screen | grep -q '^conversation: 4 messages, 4 in the context'
r1=$?
say "/save $tmp/conv2.json"
cmp -s "$tmp/conv.json" "$tmp/conv2.json"
check "/load restores the conversation" $((r1 | $?)) "screen: $(last 12)"
printf '[{"role": "user", "content": "x"},\n {"role": "robot", "content": "y"}]' >"$tmp/bad.json"
say "/load $tmp/bad.json"
screen | grep -qF "/load $tmp/bad.json: line 2, column 2: role must be"
check "/load names the file, the place and the problem" $? "screen: $(last 3)"
tm send-keys -t "$sess" C-c
sleep 0.2
tm send-keys -t "$sess" C-c
st=$(exit_status)
[ "$st" = 0 ]
check "Ctrl-C twice on an empty line leaves with status 0" $? "status $st"

# ---- a template family, Ctrl-C in the middle of a long reply ----
start --template chatml -c 16384 --no-history
say "/show"
screen | grep -q '^template: chatml'
check "--template chatml is the template in use" $? "screen: $(last 8)"
n=$(prompts)
tm send-keys -t "$sess" -l 'Tell me everything'
tm send-keys -t "$sess" Enter
# The reply runs to the full context (this model's text has no end marker): about 16000
# tokens, seconds even on a fast machine. Ctrl-C goes as soon as its first words show, not
# after a fixed sleep that a fast machine outruns. Up to 30 s: under ASan on a loaded VM the
# first words once took more than 10 s, and Ctrl-C then landed before the reply began.
# Any line of the reply counts (it may begin with blank lines).
for ((i = 0; i < 600; i++)); do
    screen | grep -A40 -xF '>>> Tell me everything' | tail -n +2 | grep -q '[a-zA-Z]' && break
    sleep 0.05
done
tm send-keys -t "$sess" C-c
wait_prompts $((n + 1)) 40
r1=$?
screen | grep -q '^\[stopped\]'
check "Ctrl-C stops a reply and returns to the prompt" $((r1 | $?)) \
    "screen: $(last 4) [after ${i} polls; $(screen | wc -l) lines; session $(alive && echo alive || echo gone); exit status $(cat "$tmp/exit" 2>/dev/null || echo none)]"
say "/show"
screen | grep -q '^conversation: 2 messages'
check "the stopped reply stays in the conversation" $? "screen: $(last 8)"
say "/set max_tokens 16"
say "And what then"
reply_after 'And what then' | grep -q '[a-zA-Z]'
check "a new question after Ctrl-C gets a reply" $? "screen: $(last 4)"
say "/exit"
st=$(exit_status)
[ "$st" = 0 ]
check "/exit after a stopped reply leaves with status 0" $? "status $st"

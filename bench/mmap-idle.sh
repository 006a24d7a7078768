#!/usr/bin/env bash
# Decode speed of one long-lived process before and after an idle gap, for each way of
# holding the weights: mapped (the default), --mlock, --no-mmap. Shared VMs reclaim file-cache
# pages left untouched for about a minute, so a mapped model can come back from a pause
# reading its weights from disk again; locked or anonymous memory stays.
#
#   bench/mmap-idle.sh MODEL [IDLE_SECONDS] [THREADS]
#
# IDLE_SECONDS default 90, THREADS default 2. Environment: N_GEN (16) tokens per prompt,
# MODES (default "map mlock no-mmap"), BIN (default build/moerun).
# Per mode, three prompts go to one `moerun run --each-line --json` process: a warm-up, one
# right after it ("warm"), and one after the idle gap ("after idle"); the table gives each
# one's decode tokens/s, the load time and the peak resident memory (GNU time, when present).
set -eu
cd "$(dirname "$0")/.."
BIN=${BIN:-build/moerun}
N_GEN=${N_GEN:-16}
MODES=${MODES:-map mlock no-mmap}
if [ $# -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    [ $# -ge 1 ] && exit 0
    exit 2
fi
model=$1 idle=${2:-90} threads=${3:-2}
[ -f "$model" ] || { echo "mmap-idle.sh: no such file: $model" >&2; exit 1; }
[ -x "$BIN" ] || { echo "mmap-idle.sh: $BIN not built (make)" >&2; exit 1; }
timer=()
[ -x /usr/bin/time ] && timer=(/usr/bin/time -f "peak_rss_kib %M")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "model: $model ($(($(stat -c %s "$model") / 1048576)) MiB), threads $threads, tg$N_GEN," \
    "idle ${idle} s"
printf '%-9s %10s %12s %12s %14s\n' mode "load (s)" "warm t/s" "after idle" "peak RSS MiB"
for mode in $MODES; do
    case $mode in
    map) flags=() ;;
    mlock) flags=(--mlock) ;;
    no-mmap) flags=(--no-mmap) ;;
    *) echo "mmap-idle.sh: unknown mode '$mode'" >&2; exit 1 ;;
    esac
    { echo "In the beginning"; echo "And the earth was"; sleep "$idle"; echo "Then it was"; } |
        "${timer[@]}" "$BIN" run "$model" --each-line --json -n "$N_GEN" --temp 0 -t "$threads" \
            "${flags[@]}" >"$tmp/out" 2>"$tmp/err"
    tps=$(sed -n 's/.*"tokens_per_s": *\([0-9.]*\).*/\1/p' "$tmp/out" | tr '\n' ' ')
    load=$(sed -n 's/.*loaded in \([0-9.]*\) s.*/\1/p' "$tmp/err")
    rss=$(sed -n 's/^peak_rss_kib \([0-9]*\)/\1/p' "$tmp/err")
    set -- $tps
    [ $# -eq 3 ] || { echo "mmap-idle.sh: $mode: expected 3 records:" "$(cat "$tmp/err")" >&2; exit 1; }
    printf '%-9s %10s %12s %12s %14s\n' "$mode" "${load:-?}" "$2" "$3" \
        "$([ -n "$rss" ] && echo $((rss / 1024)) || echo '?')"
done

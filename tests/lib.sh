# Shared by the tests/*.test.sh scripts: a scratch directory removed on exit, and check NAME
# STATUS DETAIL, which prints "ok NAME" for status 0 and "FAIL NAME: DETAIL" otherwise (the
# lines tests/run.sh counts).
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
check() { if [ "$2" -eq 0 ]; then echo "ok $1"; else echo "FAIL $1: $3"; fi; }
# require_subcommand SUITE CMD: true when $BIN has CMD, else prints the SKIP line and is false.
require_subcommand() {
    case "$("$BIN" "$2" --help 2>/dev/null)" in
    "usage: moerun $2"*) return 0 ;;
    esac
    echo "SKIP $1: $BIN has no $2 subcommand"
    return 1
}

# Shared by the tests/*.test.sh scripts: a scratch directory removed on exit, and check NAME
# STATUS DETAIL, which prints "ok NAME" for status 0 and "FAIL NAME: DETAIL" otherwise (the
# lines tests/run.sh counts).
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
check() { if [ "$2" -eq 0 ]; then echo "ok $1"; else echo "FAIL $1: $3"; fi; }

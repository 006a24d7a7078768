#!/usr/bin/env bash
# The GPU options through the binary, on the built-in tinyseek-kjv model and Mesa's lavapipe
# (a CPU Vulkan device: used only when named with --device, never chosen on its own):
#   devices                  lists it with its memory and features; exit 0
#   no Vulkan loader         runs on the CPU, the reason in the one summary line; exit 0
#   auto choice on lavapipe  stays on the CPU ("no usable GPU")
#   --device 0               greedy text equal to the CPU's; summary names the device
#   --cpu-moe, -ngl 2, --fit the placement in the summary, same greedy text
#   MOERUN_VK_ATTN_CHUNK=4   attention split over the keys (flash-decoding): same greedy text
#   MOERUN_VK_MAX_BUFFER     routed experts in parts: same greedy text; one expert above
#                            the limit: experts on the CPU, said why; a bad value: exit 1
#   --profile                per-kernel GPU times on stderr, the last submission's dispatches
#                            and barriers (a tinyseek decode step: at most 44 barriers)
#   --device 7, -ngl x       exit 1, one line naming the option
#   MOERUN_VK_VALIDATE=1     the Khronos validation layer reports nothing
# Without a Vulkan device (or a build without Vulkan) the device cases SKIP; with
# MOERUN_REQUIRE_VULKAN=1 that is a failure.
set -u
BIN=${BIN:-./moerun}
. "$(dirname "$0")/lib.sh"
P="In the beginning"

"$BIN" run -p "$P" -n 16 --temp 0 --cpu >"$tmp/cpu.txt" 2>/dev/null
MOERUN_VK_LOADER=/nonexistent/libvulkan.so.1 "$BIN" run -p "$P" -n 4 --temp 0 \
    >/dev/null 2>"$tmp/noloader"
[ "$(grep -c 'cpu .*threads.*no Vulkan loader' "$tmp/noloader")" -eq 1 ]
check "no loader: CPU, the reason in the summary line" $? "$(cat "$tmp/noloader")"

if ! "$BIN" devices >"$tmp/devices" 2>"$tmp/devices.err" || ! grep -q "usable by moerun" "$tmp/devices"; then
    if [ "${MOERUN_REQUIRE_VULKAN:-0}" = 1 ]; then
        check "devices" 1 "MOERUN_REQUIRE_VULKAN=1 but no device: $(cat "$tmp/devices.err")"
    else
        echo "SKIP gpu: no usable Vulkan device ($(head -c 200 "$tmp/devices.err"))"
    fi
    exit 0
fi
grep -q "^0: .*device memory, subgroup [0-9]" "$tmp/devices"
check "devices: index, name, memory, subgroup size" $? "$(cat "$tmp/devices")"

if grep -q "^0: .*(CPU)" "$tmp/devices"; then
    "$BIN" run -p "$P" -n 4 --temp 0 >/dev/null 2>"$tmp/auto"
    grep -q "cpu .*threads.*no usable GPU" "$tmp/auto"
    check "auto: a CPU device is not chosen" $? "$(cat "$tmp/auto")"
fi

same_text() { # NAME ARGS...: greedy text on the GPU equals the CPU's
    "$BIN" run -p "$P" -n 16 --temp 0 "${@:2}" >"$tmp/gpu.txt" 2>"$tmp/gpu.err"
    local rc=$?
    cmp -s "$tmp/gpu.txt" "$tmp/cpu.txt"
    check "$1: greedy text equals the CPU's" $(($? + rc)) "exit $rc, $(cat "$tmp/gpu.txt")"
}
same_text "--device 0" --device 0
grep -q ", GPU .*, loaded in" "$tmp/gpu.err"
check "--device 0: summary names the GPU" $? "$(cat "$tmp/gpu.err")"
same_text "--cpu-moe" --device 0 --cpu-moe
grep -q "routed experts on the CPU" "$tmp/gpu.err"
check "--cpu-moe: said in the summary" $? "$(cat "$tmp/gpu.err")"
same_text "-ngl 2" --device 0 -ngl 2
grep -q "2 of 4 layers" "$tmp/gpu.err"
check "-ngl 2: 2 of 4 layers in the summary" $? "$(cat "$tmp/gpu.err")"
same_text "--fit" --device 0 --fit
# a prompt of 103 tokens: prefill through the tiled product (mul_mm, batches of 32 or more)
P="$(printf 'And God said, Let there be light: and there was light. %.0s' 1 2 3 4 5 6)"
"$BIN" run -p "$P" -n 16 --temp 0 --cpu >"$tmp/cpu.txt" 2>/dev/null
same_text "long prompt (tiled products)" --device 0 --profile
grep -q "^mul_mm_" "$tmp/gpu.err"
check "long prompt: the tiled product ran" $? "$(grep -v '^mul_mat' "$tmp/gpu.err")"
P="In the beginning"
"$BIN" run -p "$P" -n 16 --temp 0 --cpu >"$tmp/cpu.txt" 2>/dev/null
MOERUN_VK_ATTN_CHUNK=4 same_text "split attention (MOERUN_VK_ATTN_CHUNK=4)" --device 0 --profile
grep -q "^attn_combine " "$tmp/gpu.err"
check "split attention: attn_combine ran" $? "$(grep -v '^mul_mat' "$tmp/gpu.err")"
MOERUN_VK_ATTN_CHUNK=0 "$BIN" run -p "$P" -n 4 --device 0 >/dev/null 2>"$tmp/err"
rc=$?
[ $rc -eq 1 ] && grep -q "MOERUN_VK_ATTN_CHUNK: bad value '0'" "$tmp/err"
check "MOERUN_VK_ATTN_CHUNK=0: exit 1, named" $? "exit $rc: $(cat "$tmp/err")"

# the built-in model's expert tensors hold 16 matrices of 34816 bytes: 5 a part, 4 parts
recorded() { # 1 (dispatches) or 2 (barriers) FILE: --profile's count for the last submission
    sed -n "s/^the last submission recorded \([0-9]*\) dispatches and \([0-9]*\) barriers$/\\$1/p" "$2"
}
same_text "--profile" --device 0 --profile
whole=$(recorded 1 "$tmp/gpu.err")
MOERUN_VK_MAX_BUFFER=200000 same_text "experts in parts (MOERUN_VK_MAX_BUFFER=200000)" \
    --device 0 --profile
parts=$(recorded 1 "$tmp/gpu.err")
# a decode step: 3 MoE layers x 2 expert products x 3 more parts
! grep -q "routed experts on the CPU" "$tmp/gpu.err" && [ "$parts" = $((${whole:-0} + 18)) ]
check "experts in parts: on the GPU, a dispatch per part" $? \
    "dispatches $whole whole, $parts in parts: $(cat "$tmp/gpu.err")"
MOERUN_VK_MAX_BUFFER=30000 same_text "one expert above the limit" --device 0 -v
grep -q "routed experts on the CPU: 'blk.1.ffn_[a-z_]*exps.weight' holds matrices of 34816 bytes" \
    "$tmp/gpu.err"
check "one expert above the limit: experts on the CPU, said why" $? "$(cat "$tmp/gpu.err")"
MOERUN_VK_MAX_BUFFER=12x "$BIN" run -p "$P" -n 4 --device 0 >/dev/null 2>"$tmp/err"
rc=$?
[ $rc -eq 1 ] && grep -q "MOERUN_VK_MAX_BUFFER: bad value '12x'" "$tmp/err"
check "MOERUN_VK_MAX_BUFFER=12x: exit 1, named" $? "exit $rc: $(cat "$tmp/err")"

"$BIN" run -p "$P" -n 4 --device 0 --profile >/dev/null 2>"$tmp/prof"
grep -q "^GPU time per kernel" "$tmp/prof" && grep -q "^mul_mat_Q8_0 " "$tmp/prof" &&
    grep -q "^attention " "$tmp/prof"
check "--profile: per-kernel times" $? "$(cat "$tmp/prof")"
# 4 layers: the dense one 9 barriers, the MoE ones 11 (attention 6, feed-forward 5), the
# embedding 1, the first norm 1 (44 when this was written; 67 before the fusions)
n=$(recorded 2 "$tmp/prof")
[ -n "$n" ] && [ "$n" -le 44 ]
check "--profile: a decode step records at most 44 barriers" $? "${n:-no count}: $(tail -1 "$tmp/prof")"

"$BIN" run -p "$P" -n 4 --device 7 >/dev/null 2>"$tmp/err"
rc=$?
[ $rc -eq 1 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q "device 7" "$tmp/err"
check "--device 7: exit 1, one line" $? "exit $rc: $(cat "$tmp/err")"
"$BIN" run -p "$P" -n 4 -ngl x >/dev/null 2>"$tmp/err"
rc=$?
[ $rc -eq 1 ] && grep -q "bad value 'x' for -ngl" "$tmp/err"
check "-ngl x: exit 1, the option named" $? "exit $rc: $(cat "$tmp/err")"

"$BIN" eval "$(dirname "$0")/../models/tinyseek-kjv-q8_0.gguf" --tokens 1,2,3,4,5,6 \
    --logits "$tmp/l.bin" --device 0 -q 2>"$tmp/err"
check "eval --device 0: 6 rows of logits" $(($? + $(stat -c %s "$tmp/l.bin" 2>/dev/null || echo 1) % 6)) \
    "$(cat "$tmp/err")"

if [ -n "$(ls /usr/share/vulkan/explicit_layer.d/*validation* 2>/dev/null)" ]; then
    MOERUN_VK_VALIDATE=1 "$BIN" run -p "$P" -n 8 --temp 0 --device 0 --cpu-moe >/dev/null \
        2>"$tmp/val"
    rc=$?
    [ $rc -eq 0 ] && ! grep -q "vulkan validation" "$tmp/val"
    check "validation layer: no report" $? "exit $rc: $(grep -m3 validation "$tmp/val")"
elif [ "${MOERUN_REQUIRE_VULKAN:-0}" = 1 ]; then
    check "validation layer" 1 "not installed (vulkan-validationlayers)"
else
    echo "SKIP gpu validation layer: vulkan-validationlayers not installed"
fi

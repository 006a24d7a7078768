#!/usr/bin/env bash
# The GPU check, in one run on a machine with an NVIDIA GPU and nothing installed: the Vulkan
# tests on the real device, then `moerun bench` against llama.cpp's Vulkan build (npm
# node-llama-cpp's @node-llama-cpp/linux-x64-vulkan) on the same files: the deepseek-small
# bench model and a DeepSeek-V2-Lite-shaped one (15.7B parameters), both Q4_K_M, generated
# there by mktiny.
#   bench/gpu-device.sh prepare     here: fills $DEV (default .dev, keep it out of git) with
#       bin/      moerun, mktiny, test_vk_* (BLAS=0 LIBEDIT=0: libc only; Vulkan is dlopened)
#       debs/     libvulkan1 and the glvnd libraries NVIDIA's Vulkan driver needs (apt download)
#       node.xz, nm.tar.xz   a node binary and tests/ref/node_modules without the other
#                 platforms' prebuilt binaries and llama.cpp's source bundle
#       fixtures/ part of ../shared/fixtures/compat for test_vk_model
#   bench/gpu-device.sh             there (the device tool: carry $DEV): results in $OUT
#       (default /tmp/gpu-out): log.txt (every step's figures), tests.txt, and parts.tgz with
#       devices.txt, bench-*.txt, llama-*.txt, profile-*.txt, mktiny.txt (the device tool
#       brings back at most 8 files)
# About 6 minutes on an H200 with 16 cores, most of it writing the 9.7 GB model.
set -u
cd "$(dirname "$0")/.."
DEV=${DEV:-.dev}
OUT=${OUT:-/tmp/gpu-out}
FAMILIES=${FAMILIES:-"qwen2moe deepseek2-v3"}
MODELS=${MODELS:-"small v2lite"} # a dry run here: MODELS=small SMALL_PRESET=tiny-deepseek2
GPU_ARGS=${GPU_ARGS:-}          #   GPU_ARGS="--device 0" (lavapipe)
if [ "${1:-}" = prepare ]; then
    rm -rf "$DEV" && mkdir -p "$DEV/bin" "$DEV/debs" "$DEV/fixtures/compat"
    make -j2 BUILD=build-dev BLAS=0 LIBEDIT=0 OPT=-O2 build-dev/moerun build-dev/mktiny \
        build-dev/tests/test_vk_ops build-dev/tests/test_vk_matmul \
        build-dev/tests/test_vk_attn_router build-dev/tests/test_vk_model >/dev/null
    cp build-dev/moerun build-dev/mktiny build-dev/tests/test_vk_* "$DEV/bin/"
    rm -f "$DEV"/bin/*.d && strip "$DEV"/bin/*
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    mkdir -p /tmp/amd64/partial && apt-get $o update -qq
    (cd "$DEV/debs" && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 \
        libglx0 libgles2 >/dev/null)
    xz -T2 -6 -c "$(command -v node)" >"$DEV/node.xz"
    (cd tests/ref && tar cf - --exclude=node_modules/node-llama-cpp/llama/gitRelease.bundle \
        --exclude='node_modules/@node-llama-cpp/linux-arm*' --exclude=node_modules/@node-llama-cpp/linux-x64 \
        --exclude='node_modules/@node-llama-cpp/linux-x64-cuda*' node_modules) |
        xz -T2 -6 >"$DEV/nm.tar.xz"
    for fam in $FAMILIES; do cp -r "../shared/fixtures/compat/$fam" "$DEV/fixtures/compat/"; done
    rm -f "$DEV"/fixtures/compat/*/*.deq.bin
    du -sh "$DEV"
    exit 0
fi
P=$OUT/parts
mkdir -p "$P"
t0=$(date +%s)
trap 'tar czf "$OUT/parts.tgz" -C "$OUT" parts && rm -rf "$P"' EXIT
stamp() { echo "[$(($(date +%s) - t0)) s] $*" | tee -a "$OUT/log.txt"; }

# the NVIDIA machine lacks the loader and glvnd; its image's own /usr/share ICD file does not
# load, the driver mount's does
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -f "$icd" ]; then
    for f in "$DEV"/debs/*.deb; do dpkg -x "$f" /; done
    ldconfig
    export VK_DRIVER_FILES=$icd
fi
B=$DEV/bin
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$P/devices.txt" 2>&1
"$B/moerun" devices >>"$P/devices.txt" 2>&1
stamp "devices: $(grep -c usable "$P/devices.txt") listed"

for t in test_vk_ops test_vk_matmul test_vk_attn_router; do
    MOERUN_REQUIRE_VULKAN=1 "$B/$t" >>"$OUT/tests.txt" 2>&1 || echo "$t: exit $?" >>"$OUT/tests.txt"
done
MOERUN_REQUIRE_VULKAN=1 MOERUN_FIXTURES=$DEV/fixtures MOERUN_VK_FAMILIES=$FAMILIES \
    "$B/test_vk_model" >>"$OUT/tests.txt" 2>&1 || echo "test_vk_model: exit $?" >>"$OUT/tests.txt"
stamp "tests: $(grep -c '^ok' "$OUT/tests.txt") ok, $(grep -c '^FAIL' "$OUT/tests.txt") failed"

# node resolves packages from the real path: they must sit in a directory named node_modules
# (a checkout that has them installed keeps its own)
NODE=$(command -v node || echo /tmp/node)
if [ ! -e tests/ref/node_modules ]; then
    mkdir -p /tmp/nm && tar xJf "$DEV/nm.tar.xz" -C /tmp/nm &&
        ln -s /tmp/nm/node_modules tests/ref/node_modules
fi
[ -x "$NODE" ] || { xz -dc "$DEV/node.xz" >/tmp/node && chmod +x /tmp/node; }
"$B/mktiny" /tmp/small.gguf --preset "${SMALL_PRESET:-deepseek-small}" --type q4_k_m >"$P/mktiny.txt" 2>&1
stamp "small model written"
# the big one is written while the small one is measured (the GPU runs need little CPU)
case $MODELS in *v2lite*)
    ("$B/mktiny" /tmp/v2lite.gguf --preset deepseek-v2-lite --type q4_k_m --threads 12 \
        >>"$P/mktiny.txt" 2>&1; stamp "v2-lite model written") & ;;
esac

for m in $MODELS; do
    [ $m = v2lite ] && wait
    f=/tmp/$m.gguf
    "$B/moerun" bench "$f" -p 128 -n 64 -r 3 $GPU_ARGS >"$P/bench-$m.txt" 2>&1
    stamp "moerun $m: $(grep -E '(pp|tg)[0-9]' "$P/bench-$m.txt" | awk -F'|' '{print $7 $8}' | tr -s ' ' | tr '\n' ';')"
    LLAMA_GPU=vulkan timeout 180 "$NODE" bench/llamacpp_bench.mjs "$f" 8 128 64 3 \
        >"$P/llama-$m.txt" 2>"$P/llama-$m.err"
    stamp "llama.cpp vulkan $m: $(sed -n 's/.*"test":"\([a-z]*\)".*"avg_ts":\([0-9.]*\).*/\1 \2/p' "$P/llama-$m.txt" | tr '\n' ';')"
    "$B/moerun" bench "$f" -p 128 -n 64 -r 1 --profile $GPU_ARGS >"$P/profile-$m.txt" 2>&1
    "$B/moerun" bench "$f" -p 128 -n 64 -r 3 $GPU_ARGS >>"$P/bench-$m.txt" 2>&1
    stamp "moerun $m again: $(grep -E '(pp|tg)[0-9]' "$P/bench-$m.txt" | tail -2 | awk -F'|' '{print $7 $8}' | tr -s ' ' | tr '\n' ';')"
done
m=${MODELS##* }
"$B/moerun" bench "/tmp/$m.gguf" -p 0 -n 32 -r 2 --cpu-moe -t 16 $GPU_ARGS >"$P/bench-cpumoe.txt" 2>&1
stamp "$m --cpu-moe: $(grep -E 'tg[0-9]' "$P/bench-cpumoe.txt" | awk -F'|' '{print $8}')"

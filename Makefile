# moerun: one binary from C11 (and GLSL once the Vulkan backend lands).
#   make            build ./moerun (OpenBLAS and Vulkan detected; BLAS=0 / VULKAN=0 force off)
#   make test       build and run every test; last line "N passed, N failed, N skipped"
#   make asan       the same suite under AddressSanitizer + UBSan (objects in build-asan/)
#   make format     clang-format every C file
CC ?= cc
BUILD ?= build
BLAS ?= auto
VULKAN ?= auto
OPT ?= -O3 -g
PKG_CONFIG ?= pkg-config

CFLAGS_ALL := -std=c11 -D_GNU_SOURCE $(OPT) -Wall -Wextra -Werror -MMD -MP -pthread \
              -I. $(EXTRA_CFLAGS) $(CFLAGS)
LDLIBS_ALL := -lm -pthread $(EXTRA_LDFLAGS) $(LDFLAGS)

# ---- optional dependencies: detected once, announced once ----
ifneq ($(BLAS),0)
  BLAS_CFLAGS := $(shell $(PKG_CONFIG) --cflags openblas 2>/dev/null)
  BLAS_LIBS := $(shell $(PKG_CONFIG) --libs openblas 2>/dev/null)
  ifeq ($(BLAS_LIBS),)
    BLAS_PROBE := $(shell printf '\#include <cblas.h>\nint main(void){return 0;}\n' | \
                   $(CC) -x c - -lopenblas -o /dev/null 2>/dev/null && echo yes)
    ifeq ($(BLAS_PROBE),yes)
      BLAS_LIBS := -lopenblas
    endif
  endif
  ifeq ($(BLAS_LIBS),)
    ifeq ($(BLAS),1)
      $(error BLAS=1 but OpenBLAS was not found (install libopenblas-dev))
    endif
    $(info moerun: building without OpenBLAS (not found); prefill uses the quantized kernels)
  else
    CFLAGS_ALL += -DMOERUN_BLAS $(BLAS_CFLAGS)
    LDLIBS_ALL += $(BLAS_LIBS)
  endif
else
  $(info moerun: building without OpenBLAS (BLAS=0))
endif

# Vulkan: the headers (libvulkan-dev) and glslc at build time; at run time the loader is
# opened with dlopen, so the binary still runs (on the CPU) where there is none.
GLSLC ?= glslc
ifneq ($(VULKAN),0)
  VK_PROBE := $(shell $(CC) -E -include vulkan/vulkan.h -x c /dev/null >/dev/null 2>&1 && \
               command -v $(GLSLC) >/dev/null && echo yes)
  ifeq ($(VK_PROBE),yes)
    CFLAGS_ALL += -DMOERUN_VULKAN -I$(BUILD)
    LDLIBS_ALL += -ldl
    VK_ON := 1
  else
    ifeq ($(VULKAN),1)
      $(error VULKAN=1 but the Vulkan headers or glslc were not found (install libvulkan-dev glslc))
    endif
    $(info moerun: building without Vulkan (libvulkan-dev or glslc not found); CPU backend only)
  endif
else
  $(info moerun: building without Vulkan (VULKAN=0))
endif

# libedit (BSD licence) gives the chat REPL line editing and history; without it the REPL
# reads plain lines (no editing, no history). LIBEDIT=0 forces it off.
LIBEDIT ?= auto
ifneq ($(LIBEDIT),0)
  EDIT_LIBS := $(shell $(PKG_CONFIG) --libs libedit 2>/dev/null)
  ifeq ($(EDIT_LIBS),)
    ifeq ($(LIBEDIT),1)
      $(error LIBEDIT=1 but libedit was not found (install libedit-dev))
    endif
    $(info moerun: building without libedit (not found); chat reads plain lines, no history)
  else
    CFLAGS_ALL += -DMOERUN_LIBEDIT $(shell $(PKG_CONFIG) --cflags libedit 2>/dev/null)
    LDLIBS_ALL += $(EDIT_LIBS)
  endif
else
  $(info moerun: building without libedit (LIBEDIT=0))
endif

LIB_SRC := util.c gguf.c quant.c cpu.c model.c tokenizer.c unicode.c sampler.c moe.c chat.c \
           repl.c json.c safetensors.c tools/convert.c tools/convert_vocab.c tools/convert_spm.c tools/quantize.c \
           bench.c check.c vk.c vk_model.c
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
MAIN_OBJ := $(BUILD)/main.o $(BUILD)/run.o
TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)

.PHONY: all test asan asan-malformed format clean run check-build
all: moerun

moerun: $(BUILD)/moerun
	cp $< $@

$(BUILD)/moerun: $(MAIN_OBJ) $(BUILD)/libmoerun.a
	$(CC) $(CFLAGS_ALL) -o $@ $^ $(LDLIBS_ALL)

$(BUILD)/libmoerun.a: $(LIB_OBJ)
	rm -f $@
	ar rcs $@ $^

# ---- shaders: compiled by glslc into SPIR-V words that vk.c embeds ----
VK_TYPES := F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K
VK_PLAIN := rmsnorm rope attention attn_combine add copy2d router moe_group moe_residual
VK_SPV := $(VK_TYPES:%=mul_mat_%) $(VK_TYPES:%=mul_mm_%) $(VK_TYPES:%=get_rows_%) $(VK_PLAIN)
GLSL_DEPS := $(wildcard shaders/*.glsl)
GLSLC_FLAGS := --target-env=vulkan1.2 -Ishaders -O -mfmt=c

$(BUILD)/shaders/mul_mat_%.inc: shaders/mul_mat.comp $(GLSL_DEPS)
	@mkdir -p $(dir $@)
	$(GLSLC) $(GLSLC_FLAGS) -DQTYPE_$* $< -o $@
$(BUILD)/shaders/mul_mm_%.inc: shaders/mul_mm.comp $(GLSL_DEPS)
	@mkdir -p $(dir $@)
	$(GLSLC) $(GLSLC_FLAGS) -DQTYPE_$* $< -o $@
$(BUILD)/shaders/get_rows_%.inc: shaders/get_rows.comp $(GLSL_DEPS)
	@mkdir -p $(dir $@)
	$(GLSLC) $(GLSLC_FLAGS) -DQTYPE_$* $< -o $@
$(BUILD)/shaders/%.inc: shaders/%.comp $(GLSL_DEPS)
	@mkdir -p $(dir $@)
	$(GLSLC) $(GLSLC_FLAGS) $< -o $@

# Kernels whose shader source is absent embed {0}; vk.c refuses to run them by name.
VK_BUILT := $(VK_TYPES:%=mul_mat_%) $(VK_TYPES:%=mul_mm_%) $(VK_TYPES:%=get_rows_%) \
            $(patsubst shaders/%.comp,%,$(wildcard $(VK_PLAIN:%=shaders/%.comp)))
$(BUILD)/vk_spirv.h: $(VK_BUILT:%=$(BUILD)/shaders/%.inc)
	@for k in $(VK_SPV); do \
	    printf 'static const uint32_t spv_%s[] =\n' $$k; \
	    if [ -f $(BUILD)/shaders/$$k.inc ]; then cat $(BUILD)/shaders/$$k.inc; else echo '{0}'; fi; \
	    echo ';'; \
	done >$@.tmp && mv $@.tmp $@

ifeq ($(VK_ON),1)
$(BUILD)/vk.o: $(BUILD)/vk_spirv.h
endif

$(BUILD)/%.o: %.c | $(BUILD)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

$(BUILD)/tests/%: tests/%.c $(BUILD)/libmoerun.a | $(BUILD)
	@mkdir -p $(BUILD)/tests
	$(CC) $(CFLAGS_ALL) -o $@ $< $(BUILD)/libmoerun.a $(LDLIBS_ALL)

# mktiny: random-weight models of any architecture and shape (tests, benchmarks)
$(BUILD)/mktiny: tools/mktiny.c $(BUILD)/libmoerun.a | $(BUILD)
	$(CC) $(CFLAGS_ALL) -o $@ $< $(BUILD)/libmoerun.a $(LDLIBS_ALL)

# membw: memory read bandwidth for 1..N threads (the loop moerun bench's roofline uses)
$(BUILD)/membw: bench/membw.c $(BUILD)/libmoerun.a | $(BUILD)
	$(CC) $(CFLAGS_ALL) -o $@ $< $(BUILD)/libmoerun.a $(LDLIBS_ALL)

# tilebench: a type's int8 tile kernel against sgemm per batch size (qtype_tile_sgemm_crossover)
$(BUILD)/tilebench: bench/tilebench.c $(BUILD)/libmoerun.a | $(BUILD)
	$(CC) $(CFLAGS_ALL) -o $@ $< $(BUILD)/libmoerun.a $(LDLIBS_ALL)

$(BUILD):
	mkdir -p $(BUILD)

# the bench tools are built here so that they keep compiling
test: $(BUILD)/moerun $(BUILD)/mktiny $(BUILD)/membw $(BUILD)/tilebench $(TEST_BIN)
	@BIN=$(BUILD)/moerun TESTBIN=$(BUILD)/tests tests/run.sh

SAN := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
asan:
	$(MAKE) BUILD=build-asan OPT="-O1 -g" EXTRA_CFLAGS="$(SAN)" EXTRA_LDFLAGS="$(SAN)" test

# The malformed-input suites alone under ASan + UBSan (CI runs these; `make asan` runs all).
ASAN_SUITES := test_gguf test_malformed test_errors
asan-malformed:
	$(MAKE) BUILD=build-asan OPT="-O1 -g" EXTRA_CFLAGS="$(SAN)" EXTRA_LDFLAGS="$(SAN)" \
	    build-asan/moerun $(ASAN_SUITES:%=build-asan/tests/%)
	@for t in $(ASAN_SUITES); do \
	    BIN=build-asan/moerun build-asan/tests/$$t >build-asan/$$t.log 2>&1; rc=$$?; \
	    echo "$$t under ASan+UBSan: $$(grep -c '^ok ' build-asan/$$t.log) ok," \
	        "$$(grep -c '^FAIL ' build-asan/$$t.log) failed, exit $$rc"; \
	    grep '^FAIL ' build-asan/$$t.log; [ $$rc -eq 0 ] || exit 1; \
	done

run: moerun
	./moerun run -p "In the beginning" -n 64

# unicode_table.h is generated by tools/gen_unicode.py and kept as it writes it
format:
	clang-format -i $(filter-out unicode_table.h,$(wildcard *.c *.h)) tests/*.c tests/*.h tools/*.c

clean:
	rm -rf build build-asan moerun

-include $(LIB_OBJ:.o=.d) $(MAIN_OBJ:.o=.d)

# ---- fuzzing (clang + libFuzzer; Debian: libclang-rt-14-dev) ----
#   make fuzz        build the libFuzzer targets into build-fuzz/ (ASan + UBSan)
#   make fuzz-smoke  run each target FUZZ_TIME seconds (default 60) from its seed corpus in
#                    tests/fuzz/corpus/<target>; new inputs go to a temporary directory, a crash
#                    to build-fuzz/crash-* and a failed run
FUZZ_TARGETS := fuzz_gguf fuzz_tokenizer fuzz_chat fuzz_spm
FUZZ_CC ?= clang
FUZZ_TIME ?= 60
FUZZ_SAN := -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer \
            -fno-sanitize-recover=undefined
.PHONY: fuzz fuzz-bins fuzz-smoke
fuzz:
	$(MAKE) BUILD=build-fuzz CC=$(FUZZ_CC) BLAS=0 VULKAN=0 LIBEDIT=0 OPT="-O1 -g" \
	    EXTRA_CFLAGS="$(FUZZ_SAN)" EXTRA_LDFLAGS="$(FUZZ_SAN)" fuzz-bins

fuzz-bins: $(FUZZ_TARGETS:%=$(BUILD)/%)

$(BUILD)/fuzz_%: tests/fuzz_%.c $(BUILD)/libmoerun.a | $(BUILD)
	$(CC) $(CFLAGS_ALL) -fsanitize=fuzzer -o $@ $< $(BUILD)/libmoerun.a $(LDLIBS_ALL)

fuzz-smoke: fuzz
	@for t in $(FUZZ_TARGETS); do \
	    c=$$(mktemp -d); \
	    echo "fuzz-smoke: $$t for $(FUZZ_TIME) s"; \
	    build-fuzz/$$t -max_total_time=$(FUZZ_TIME) -timeout=10 -rss_limit_mb=2048 \
	        -close_fd_mask=3 -print_final_stats=1 -artifact_prefix=build-fuzz/$$t- \
	        "$$c" tests/fuzz/corpus/$${t#fuzz_} >build-fuzz/$$t-smoke.log 2>&1; \
	    rc=$$?; rm -rf "$$c"; \
	    grep -E '^(#[0-9]+.*(DONE|pulse)|stat::number_of_executed_units|==[0-9]+==ERROR|SUMMARY)' \
	        build-fuzz/$$t-smoke.log | tail -n 4; \
	    if [ $$rc -ne 0 ]; then \
	        tail -n 40 build-fuzz/$$t-smoke.log; \
	        echo "fuzz-smoke: $$t failed (exit $$rc; log build-fuzz/$$t-smoke.log)"; exit 1; \
	    fi; \
	done; echo "fuzz-smoke: all targets ran $(FUZZ_TIME) s without a finding"

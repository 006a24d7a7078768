# moerun: one binary from C11 (and GLSL once the Vulkan backend lands).
#   make            build ./moerun (OpenBLAS and Vulkan detected; BLAS=0 / VULKAN=0 force off)
#   make test       build and run every test; last line "N passed, N failed, N skipped"
#   make asan       the same suite under AddressSanitizer + UBSan (objects in build-asan/)
#   make format     clang-format every C file
CC ?= cc
BUILD ?= build
BLAS ?= auto
VULKAN ?= auto
OPT ?= -O2 -g
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

ifneq ($(VULKAN),0)
  VK_LIBS := $(shell $(PKG_CONFIG) --libs vulkan 2>/dev/null)
  ifeq ($(VK_LIBS),)
    ifeq ($(VULKAN),1)
      $(error VULKAN=1 but the Vulkan loader was not found (install libvulkan-dev))
    endif
    $(info moerun: building without Vulkan (loader not found); CPU backend only)
  else
    $(info moerun: Vulkan loader found, but the Vulkan backend is not part of this build yet)
  endif
else
  $(info moerun: building without Vulkan (VULKAN=0))
endif

LIB_SRC := util.c gguf.c quant.c cpu.c model.c tokenizer.c unicode.c sampler.c moe.c chat.c
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
MAIN_OBJ := $(BUILD)/main.o
TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)

.PHONY: all test asan format clean run check-build
all: moerun

moerun: $(BUILD)/moerun
	cp $< $@

$(BUILD)/moerun: $(MAIN_OBJ) $(BUILD)/libmoerun.a
	$(CC) $(CFLAGS_ALL) -o $@ $^ $(LDLIBS_ALL)

$(BUILD)/libmoerun.a: $(LIB_OBJ)
	rm -f $@
	ar rcs $@ $^

$(BUILD)/%.o: %.c | $(BUILD)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

$(BUILD)/tests/%: tests/%.c $(BUILD)/libmoerun.a | $(BUILD)
	@mkdir -p $(BUILD)/tests
	$(CC) $(CFLAGS_ALL) -o $@ $< $(BUILD)/libmoerun.a $(LDLIBS_ALL)

# mktiny: random-weight models of any architecture and shape (tests, benchmarks)
$(BUILD)/mktiny: tools/mktiny.c $(BUILD)/libmoerun.a | $(BUILD)
	$(CC) $(CFLAGS_ALL) -o $@ $< $(BUILD)/libmoerun.a $(LDLIBS_ALL)

$(BUILD):
	mkdir -p $(BUILD)

test: $(BUILD)/moerun $(BUILD)/mktiny $(TEST_BIN)
	@BIN=$(BUILD)/moerun TESTBIN=$(BUILD)/tests tests/run.sh

SAN := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
asan:
	$(MAKE) BUILD=build-asan OPT="-O1 -g" EXTRA_CFLAGS="$(SAN)" EXTRA_LDFLAGS="$(SAN)" test

run: moerun
	./moerun run -p "In the beginning" -n 64

format:
	clang-format -i *.c *.h tests/*.c tests/*.h

clean:
	rm -rf build build-asan moerun

-include $(LIB_OBJ:.o=.d) $(MAIN_OBJ:.o=.d)

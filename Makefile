# engram - one GNU Makefile.
#   make            library (static + shared) and the engram CLI, in build/
#   make test       the test suite (ends with "N passed, N failed")
#   make asan       the test suite under AddressSanitizer + UBSan (build-asan/)
#   make tsan       the threaded parts under ThreadSanitizer (build-tsan/, clang + libomp)
#   make bench      benchmarks, numbers against a peer in the same script
#   make bench-tier the row tier on a store larger than RAM (36 GiB of disk)
#   make fuzz       libFuzzer targets (clang), short runs
#   make format     clang-format the sources
#   make clean
# Options: CUDA=0/1 (default: 1 when nvcc exists), CI=true adds -Werror,
#          V=1 shows commands, BUILD=dir picks the output folder.

SHELL := /bin/bash
.DEFAULT_GOAL := all

BUILD ?= build
CC ?= cc
CXX ?= c++
NVCC ?= nvcc
PKG_CONFIG ?= pkg-config
PYTHON ?= /usr/bin/python3

ifeq ($(origin CC),default)
CC := cc
endif
ifeq ($(origin CXX),default)
CXX := c++
endif

Q := $(if $(V),,@)

# ---- dependency probes ------------------------------------------------------
# Each probe yields CFLAGS/LIBS for one dependency, or marks it missing.
pc_ok = $(shell $(PKG_CONFIG) --exists $(1) 2>/dev/null && echo yes)
pc_cflags = $(shell $(PKG_CONFIG) --cflags $(1) 2>/dev/null)
pc_libs = $(shell $(PKG_CONFIG) --libs $(1) 2>/dev/null)
# A trial compile and link for libraries without a .pc file.
try_link = $(shell printf '#include <$(1)>\nint main(void){return 0;}\n' | \
             $(CC) -x c - -o /dev/null $(2) >/dev/null 2>&1 && echo yes)

HAVE_ICU := $(call pc_ok,icu-uc icu-i18n)
ICU_CFLAGS := $(call pc_cflags,icu-uc icu-i18n)
ICU_LIBS := $(if $(HAVE_ICU),$(call pc_libs,icu-uc icu-i18n),)

HAVE_SPM := $(or $(call pc_ok,sentencepiece),$(shell printf '#include <sentencepiece_processor.h>\nint main(){return 0;}\n' | $(CXX) -x c++ - -o /dev/null -lsentencepiece >/dev/null 2>&1 && echo yes))
SPM_LIBS := $(if $(call pc_ok,sentencepiece),$(call pc_libs,sentencepiece),-lsentencepiece)

HAVE_LMDB := $(or $(call pc_ok,lmdb),$(call try_link,lmdb.h,-llmdb))
LMDB_LIBS := $(if $(call pc_ok,lmdb),$(call pc_libs,lmdb),-llmdb)

HAVE_ZLIB := $(or $(call pc_ok,zlib),$(call try_link,zlib.h,-lz))
ZLIB_LIBS := $(if $(call pc_ok,zlib),$(call pc_libs,zlib),-lz)

HAVE_ZSTD := $(or $(call pc_ok,libzstd),$(call try_link,zstd.h,-lzstd))
ZSTD_LIBS := $(if $(call pc_ok,libzstd),$(call pc_libs,libzstd),-lzstd)

HAVE_JANSSON := $(or $(call pc_ok,jansson),$(call try_link,jansson.h,-ljansson))
JSON_LIBS := $(if $(call pc_ok,jansson),$(call pc_libs,jansson),-ljansson)

HAVE_ONIG := $(or $(call pc_ok,oniguruma),$(call try_link,oniguruma.h,-lonig))
ONIG_LIBS := $(if $(call pc_ok,oniguruma),$(call pc_libs,oniguruma),-lonig)

HAVE_CRYPTO := $(call pc_ok,libcrypto)
CRYPTO_LIBS := $(if $(HAVE_CRYPTO),$(call pc_libs,libcrypto),-lcrypto)

HAVE_OPENMP := $(shell printf '#include <omp.h>\nint main(void){return omp_get_max_threads() < 0;}\n' | \
                 $(CC) -fopenmp -x c - -o /dev/null >/dev/null 2>&1 && echo yes)

# MPI (optional): `engram count --mpi` and `engram prep --mpi` when mpicc
# exists (OpenMPI's --showme, else MPICH's -show); only cli/mpi.c sees mpi.h.
# MPI=0 builds without it.
ifneq ($(MPI),0)
MPI_CFLAGS := $(shell mpicc --showme:compile 2>/dev/null)
MPI_LIBS := $(shell mpicc --showme:link 2>/dev/null)
ifeq ($(strip $(MPI_LIBS)),)
MPI_CFLAGS := $(filter -I%,$(shell mpicc -show 2>/dev/null))
MPI_LIBS := $(filter -L% -l% -Wl%,$(shell mpicc -show 2>/dev/null))
endif
HAVE_MPI := $(if $(strip $(MPI_LIBS)),$(shell printf '\043include <mpi.h>\nint main(void){return MPI_Init(0,0);}\n' | \
              $(CC) $(MPI_CFLAGS) -x c - -o /dev/null $(MPI_LIBS) >/dev/null 2>&1 && echo yes),)
endif
ifneq ($(HAVE_MPI),yes)
MPI_CFLAGS :=
MPI_LIBS :=
endif

HAVE_NVCC := $(shell command -v $(NVCC) >/dev/null 2>&1 && echo yes)
ifeq ($(origin CUDA),undefined)
CUDA := $(if $(HAVE_NVCC),1,0)
endif

# What this stage of the project links. Required ones stop the build when
# missing; the rest are reported for the stages that will need them.
REQUIRED := JANSSON OPENMP ICU SPM CRYPTO ONIG ZLIB ZSTD LMDB
MISSING := $(foreach d,$(REQUIRED),$(if $(HAVE_$(d)),,$(d)))

mark = $(if $(1),✓,✗)
DEP_LINE := deps: $(call mark,$(HAVE_ICU))ICU $(call mark,$(HAVE_SPM))sentencepiece \
  $(call mark,$(HAVE_LMDB))LMDB $(call mark,$(HAVE_ZLIB))zlib $(call mark,$(HAVE_ZSTD))zstd \
  $(call mark,$(HAVE_JANSSON))jansson $(call mark,$(HAVE_ONIG))oniguruma \
  $(call mark,$(HAVE_CRYPTO))libcrypto $(call mark,$(HAVE_OPENMP))OpenMP $(call mark,$(filter 1,$(CUDA)))CUDA$(if $(HAVE_NVCC),,(no nvcc)) \
  $(call mark,$(HAVE_MPI))MPI$(if $(HAVE_MPI),,(no mpicc))
ANY_MISSING := $(strip $(foreach d,ICU SPM LMDB ZLIB ZSTD JANSSON ONIG CRYPTO OPENMP,$(if $(HAVE_$(d)),,$(d))))

.PHONY: deps
deps:
	@echo "$(DEP_LINE)$(if $(ANY_MISSING),  (scripts/install-deps.sh installs what is missing),)"

# ---- flags ------------------------------------------------------------------
WARN := -Wall -Wextra -Wpedantic -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
        -Wformat=2 -Wvla -Wundef -Wpointer-arith -Wcast-qual -Wwrite-strings \
        -Wold-style-definition -Wnull-dereference -Wdouble-promotion
ifeq ($(CI),true)
WARN += -Werror
endif
OPT ?= -O2
# No fast-math anywhere: the reference paths are exact.
CFLAGS_ALL := -std=c11 -D_GNU_SOURCE $(OPT) -g -fPIC -fopenmp $(WARN) \
              -Iinclude -Ibase -Itests $(ICU_CFLAGS) $(CFLAGS) $(EXTRA_CFLAGS)
# The one C++ file (the SentencePiece shim) gets the same warnings that apply to C++.
CXXWARN := -Wall -Wextra -Wpedantic -Wshadow -Wformat=2 -Wundef -Wcast-qual
CXXFLAGS_ALL := -std=c++17 -D_GNU_SOURCE $(OPT) -g -fPIC $(CXXWARN) $(if $(filter true,$(CI)),-Werror,) \
                -Iinclude -Ibase $(CXXFLAGS) $(EXTRA_CFLAGS)
LDLIBS_ALL := $(LMDB_LIBS) $(JSON_LIBS) $(ZLIB_LIBS) $(ZSTD_LIBS) $(ONIG_LIBS) $(ICU_LIBS) $(SPM_LIBS) $(CRYPTO_LIBS) -lstdc++ -fopenmp -lm -ldl \
              $(LDLIBS) $(EXTRA_LDLIBS)

# ---- sources ----------------------------------------------------------------
LIB_SRC := $(wildcard base/*.c) $(wildcard store/*.c) $(wildcard tokenizer/*.c) $(wildcard tables/*.c) \
           $(wildcard runtime/*.c) $(wildcard prep/*.c)
LIB_CXX := $(wildcard tokenizer/*.cc)
CLI_SRC := $(wildcard cli/*.c)
TEST_SRC := $(wildcard tests/*.c) $(wildcard tests/fuzz/*.c)
BENCH_SRC := $(wildcard bench/*.c)
HDRS := $(wildcard include/engram/*.h base/*.h store/*.h cli/*.h tests/*.h tests/fuzz/*.h runtime/*.h tables/*.h \
          tokenizer/*.h)

LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/obj/%.o) $(LIB_CXX:%.cc=$(BUILD)/obj/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/obj/%.o)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/obj/%.o)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/%)

LIB_A := $(BUILD)/libengram.a
LIB_SO := $(BUILD)/libengram.so
ENGRAM := $(BUILD)/engram
TESTS := $(BUILD)/engram-tests

# CUDA: the backend is its own library, libengram_cuda.so, loaded by the
# runtime's backend table with dlopen (libengram never links CUDA). Built for
# Ampere and Hopper (plus PTX); --fmad=false keeps the arithmetic the CPU
# oracle's. The contract header is also compiled alone as device code.
NVCC_FLAGS ?= -std=c++17 -O2 -Iinclude --fmad=false \
              -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=[sm_90,compute_90]
CUDA_LIB := $(BUILD)/libengram_cuda.so
CUDA_OBJ := $(if $(filter 1,$(CUDA)),$(BUILD)/cuda/contract_check.o $(CUDA_LIB) $(BUILD)/bench_gpu,)

$(BUILD)/cuda/%.o: tests/cuda/%.cu include/engram/eg_contract.h
	@mkdir -p $(dir $@)
	$(if $(Q),@echo "  NVCC  $<")
	$(Q)$(NVCC) $(NVCC_FLAGS) -c $< -o $@

$(CUDA_LIB): $(wildcard runtime/cuda/*.cu runtime/cuda/*.cuh) runtime/eg_adam_rule.h $(HDRS) $(LIB_SO)
	@mkdir -p $(dir $@)
	$(if $(Q),@echo "  NVCC  $@")
	$(Q)$(NVCC) $(NVCC_FLAGS) -Xcompiler -fPIC -shared -Iruntime/cuda -Iruntime runtime/cuda/backend.cu \
	  -o $@ -L$(BUILD) -lengram -lcublas -Xlinker -rpath,'$$ORIGIN'

.PHONY: all check-deps test asan tsan bench fuzz format clean demo
all: deps check-deps $(LIB_A) $(LIB_SO) $(ENGRAM) $(CUDA_OBJ)

check-deps:
ifneq ($(strip $(MISSING)),)
	@echo "error: missing required dependencies: $(MISSING); run scripts/install-deps.sh" >&2
	@exit 1
endif

$(BUILD)/obj/%.o: %.c $(HDRS) Makefile
	@mkdir -p $(dir $@)
	$(if $(Q),@echo "  CC    $<")
	$(Q)$(CC) $(CFLAGS_ALL) -c $< -o $@

$(BUILD)/obj/cli/mpi.o: cli/mpi.c $(HDRS) Makefile
	@mkdir -p $(dir $@)
	$(if $(Q),@echo "  CC    $<")
	$(Q)$(CC) $(CFLAGS_ALL) $(MPI_CFLAGS) $(if $(HAVE_MPI),-DENGRAM_MPI,) -c $< -o $@

$(BUILD)/obj/%.o: %.cc $(HDRS) Makefile
	@mkdir -p $(dir $@)
	$(if $(Q),@echo "  CXX   $<")
	$(Q)$(CXX) $(CXXFLAGS_ALL) -c $< -o $@

$(LIB_A): $(LIB_OBJ)
	$(if $(Q),@echo "  AR    $@")
	$(Q)rm -f $@ && ar rcs $@ $^

$(LIB_SO): $(LIB_OBJ)
	$(if $(Q),@echo "  LD    $@")
	$(Q)$(CC) -shared -o $@ $^ $(LDLIBS_ALL)

$(ENGRAM): $(CLI_OBJ) $(LIB_A)
	$(if $(Q),@echo "  LD    $@")
	$(Q)$(CC) -o $@ $(CLI_OBJ) $(LIB_A) $(LDLIBS_ALL) $(MPI_LIBS) $(LDFLAGS)

$(TESTS): $(TEST_OBJ) $(LIB_A)
	$(if $(Q),@echo "  LD    $@")
	$(Q)$(CC) -o $@ $(TEST_OBJ) $(LIB_A) $(LDLIBS_ALL) $(LDFLAGS)

# The test runner finds the CLI through ENGRAM_BIN and ../shared through
# ENGRAM_SHARED (default: ../shared beside the checkout; skipped when absent).
# PY_TESTS=0 (the sanitizer build) skips the tests that load libengram.so
# into Python: an instrumented library cannot be loaded by an uninstrumented
# interpreter.
PY_TESTS ?= 1
test: all $(TESTS)
	$(Q)ENGRAM_BIN=$(ENGRAM) ENGRAM_MPI=$(if $(HAVE_MPI),1,0) ENGRAM_LIB=$(LIB_SO) ENGRAM_PY_TESTS=$(PY_TESTS) \
	  ENGRAM_CUDA_LIB=$(abspath $(CUDA_LIB)) ./$(TESTS) $(TEST_ARGS)

asan:
	$(Q)$(MAKE) --no-print-directory BUILD=build-asan OPT=-O1 PY_TESTS=0 CUDA=0 \
	  EXTRA_CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all -DEG_NO_CLONES" \
	  EXTRA_LDLIBS="-fsanitize=address,undefined" test

# ThreadSanitizer over the threaded parts (counting, prep, the runtime, the
# store build). Built with clang and LLVM's OpenMP runtime, whose Archer tool
# tells TSan about OpenMP's barriers and tasks (libgomp cannot).
ARCHER ?= $(firstword $(wildcard /usr/lib/llvm-*/lib/libarcher.so))
.PHONY: tsan
tsan:
	$(Q)$(MAKE) --no-print-directory BUILD=build-tsan OPT=-O1 PY_TESTS=0 CUDA=0 CC=clang CXX=clang++ \
	  EXTRA_CFLAGS="-fsanitize=thread -fno-omit-frame-pointer -DEG_NO_CLONES" \
	  EXTRA_LDLIBS="-fsanitize=thread" all build-tsan/engram-tests
	$(Q)OMP_TOOL_LIBRARIES=$(ARCHER) TSAN_OPTIONS="halt_on_error=1 ignore_noninstrumented_modules=1 suppressions=tests/tsan.supp" ENGRAM_BIN=build-tsan/engram \
	  ENGRAM_PY_TESTS=0 build-tsan/engram-tests count outfile prep rt_hash rt_gather rt_training layer_ store_build cli_count tier_rows tier_prefetch tier_read tier_file rt_tier store_verify

$(BUILD)/bench_%: $(BUILD)/obj/bench/bench_%.o $(LIB_A)
	$(if $(Q),@echo "  LD    $@")
	$(Q)$(CC) -o $@ $< $(LIB_A) $(LDLIBS_ALL) $(LDFLAGS)

bench: all $(BENCH_BIN)
	$(Q)$(PYTHON) scripts/bench_hash.py --engram $(ENGRAM) --bench-bin $(BUILD)/bench_hash
	$(Q)$(PYTHON) scripts/bench_vocab.py --engram $(ENGRAM)
	$(Q)$(PYTHON) scripts/bench_prep.py --engram $(ENGRAM)
	$(Q)$(PYTHON) scripts/bench_count.py --engram $(ENGRAM)
	$(Q)$(PYTHON) scripts/bench_store.py --engram $(ENGRAM)
	$(Q)test -s build/sample/kjv.model || scripts/demo.sh >/dev/null
	$(Q)mkdir -p build/bench && ENGRAM_LIB=$(LIB_SO) $(PYTHON) scripts/bench_train.py --json build/bench/train.json
	$(Q)mkdir -p build/bench && $(BUILD)/bench_runtime build/bench/demo-bf16.store

# The row tier on a store larger than RAM (scripts/bench_tier.py; about 36 GiB
# of disk and 20 minutes): build vs the disk's write rate, fio's random reads,
# gather rows/s (tier, map, resident), decoding tokens/s with and without prefetch.
.PHONY: bench-tier
bench-tier: all
	$(Q)test -s build/sample/kjv.bin || scripts/demo.sh >/dev/null
	$(Q)mkdir -p build/bench && $(PYTHON) scripts/bench_tier.py --json build/bench/tier.json

# On a machine with a GPU: bandwidths, hash, gather, resident vs host-resident.
$(BUILD)/bench_gpu: bench/gpu/bench_gpu.cu $(CUDA_LIB) $(LIB_SO)
	$(if $(Q),@echo "  NVCC  $@")
	$(Q)$(NVCC) $(NVCC_FLAGS) $< -o $@ -L$(BUILD) -lengram_cuda -lengram -lcublas -Xlinker -rpath,'$$ORIGIN'

.PHONY: bench-gpu
bench-gpu: all $(BUILD)/bench_gpu $(BUILD)/bench_runtime
	$(Q)mkdir -p build/bench && test -f build/bench/demo-bf16.store || \
	  $(BUILD)/bench_runtime build/bench/demo-bf16.store 1024 512 >/dev/null
	$(Q)$(BUILD)/bench_gpu build/bench/demo-bf16.store

# The paper's result in miniature (examples/train_lm.py; docs/TRAINING.md):
# the data, counts, plans and stores, then every arm, table size and seed.
.PHONY: train
train: all
	$(Q)test -s build/sample/kjv.model || scripts/demo.sh >/dev/null
	$(Q)ENGRAM_LIB=$(LIB_SO) $(PYTHON) examples/train_lm.py --prepare --sweep

fuzz:
	$(Q)scripts/fuzz.sh

demo: all
	$(Q)scripts/demo.sh

format:
	clang-format -i $(wildcard include/engram/*.h base/*.[ch] tokenizer/*.[ch] tables/*.[ch] \
	  runtime/*.[ch] store/*.[ch] prep/*.[ch] cli/*.[ch] tests/*.[ch] tests/fuzz/*.[ch] bench/*.c)

clean:
	rm -rf build build-asan build-tsan build-fuzz

.SECONDARY:

# fdpo build. GNU make; every src/<subsystem>/*.c goes into libfdpo.a, src/cli/*.c into
# the fdpo command. Tests: tests/c/test_*.c (Check), tests/py/test_*.py (pytest, PyTorch
# references), tests/harness/*.c (a test-only binary the Python tests drive).
#
#   make            build build/fdpo and build/libfdpo.a
#   make test       build, then run every C and Python test
#   make test-asan  the same under AddressSanitizer + UndefinedBehaviorSanitizer
#   make bench      benchmarks (fdpo vs PyTorch on the same threads)
#   make fuzz       libFuzzer harnesses (tests/fuzz/, clang), each for FUZZ_SECONDS (60),
#                   FUZZ_JOBS (1) at a time

BUILD   ?= build
CC      ?= cc
OPT     ?= -O3 -march=native
SAN     ?=
CFLAGS  ?= $(OPT) -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -fopenmp -Iinclude -Isrc $(SAN)
CFLAGS  += $(shell pkg-config --cflags libcjson libpcre2-8 icu-uc 2>/dev/null)
# ICU (icu-uc): NFC normalisation for tokenizer.json files that ask for it (src/text/tokenizer.c)
LDLIBS  += -lopenblas -ldnnl -lcjson -lpcre2-8 -linih $(shell pkg-config --libs icu-uc 2>/dev/null || echo -licuuc) -lm -fopenmp $(SAN)
# Open MPI (src/dist): on when pkg-config finds ompi-c; `make MPI=0` builds without it.
MPI     ?= $(shell pkg-config --exists ompi-c 2>/dev/null && echo 1 || echo 0)
ifeq ($(MPI),1)
CFLAGS  += -DFDPO_HAVE_MPI $(shell pkg-config --cflags ompi-c)
LDLIBS  += $(shell pkg-config --libs ompi-c)
endif
CHECK_LIBS := $(shell pkg-config --libs check 2>/dev/null || echo -lcheck)

LIB_SRC  := $(sort $(wildcard src/core/*.c src/text/*.c src/io/*.c src/model/*.c \
              src/objectives/*.c src/data/*.c src/dist/*.c src/train/*.c src/eval/*.c src/lab/*.c src/report/*.c))
CLI_SRC  := $(sort $(wildcard src/cli/*.c))
HAR_SRC  := $(sort $(wildcard tests/harness/*.c))
CTEST_SRC:= $(sort $(wildcard tests/c/test_*.c))
# C++ callers (the public headers' extern "C"): tests/c/test_*.cpp, built with $(CXX)
# (g++, from build-essential: scripts/deps.sh)
CXXTEST_SRC := $(sort $(wildcard tests/c/test_*.cpp))

LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/obj/%.o)
HAR_OBJ  := $(HAR_SRC:%.c=$(BUILD)/obj/%.o)
CTEST_BIN:= $(CTEST_SRC:tests/c/%.c=$(BUILD)/tests/%)
CXXTEST_BIN := $(CXXTEST_SRC:tests/c/%.cpp=$(BUILD)/tests/%)

.PHONY: all test test-c test-py test-asan asan bench clean deps demo fuzz fuzz-build fuzz-bins
all: $(BUILD)/fdpo $(BUILD)/fdpo-harness

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libfdpo.a: $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/fdpo: $(CLI_OBJ) $(BUILD)/libfdpo.a
	$(CC) -o $@ $(CLI_OBJ) $(BUILD)/libfdpo.a $(LDLIBS)

$(BUILD)/fdpo-harness: $(HAR_OBJ) $(BUILD)/libfdpo.a
	$(CC) -o $@ $(HAR_OBJ) $(BUILD)/libfdpo.a $(LDLIBS)

$(BUILD)/tests/%: tests/c/%.c $(BUILD)/libfdpo.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libfdpo.a $(CHECK_LIBS) $(LDLIBS)

CXXFLAGS ?= $(OPT) -g
CXXFLAGS += -std=c++17 -Wall -Wextra -Iinclude $(shell pkg-config --cflags libcjson 2>/dev/null) $(SAN)
$(BUILD)/tests/%: tests/c/%.cpp $(BUILD)/libfdpo.a
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -o $@ $< $(BUILD)/libfdpo.a $(CHECK_LIBS) $(LDLIBS)

# Tests read FDPO_BIN / FDPO_HARNESS, so the sanitizer build runs the same suite.
# deps first (not as a prerequisite: with -j it must finish before anything compiles,
# since fdpo report embeds Chart.js from node_modules).
test:
	@scripts/deps.sh
	@$(MAKE) --no-print-directory all $(CTEST_BIN) $(CXXTEST_BIN)
	@FDPO_BUILD=$(BUILD) scripts/run-tests.sh

test-asan:
	FDPO_SANITIZED=1 $(MAKE) BUILD=build-asan OPT=-O1 SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" test

bench: all
	scripts/run-bench.sh

deps:
	scripts/deps.sh

demo:
	@scripts/deps.sh
	@$(MAKE) --no-print-directory all
	examples/sentiment/run.sh

# Fuzzing: the library rebuilt by clang into build-fuzz/ with coverage instrumentation and
# ASan + UBSan, one libFuzzer binary per tests/fuzz/fuzz_NAME.c, each run for FUZZ_SECONDS
# from the committed seeds in tests/fuzz/corpus/NAME/ (new inputs go to build-fuzz/corpus/).
# -Wno-pass-failed: at -O1 clang declines some `omp simd` loops (the kernels' vector exp) and
# says so; an unvectorised loop is fine for fuzzing the parsers.
FUZZ_CC      ?= clang-14
FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_NAMES   := $(sort $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c)))

FUZZ_JOBS    ?= 1
fuzz: fuzz-build
	FUZZ_JOBS=$(FUZZ_JOBS) tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_NAMES)

fuzz-build:
	@$(MAKE) --no-print-directory BUILD=$(FUZZ_BUILD) CC=$(FUZZ_CC) OPT="-O1 -g -Wno-pass-failed" \
		SAN="$(FUZZ_SAN) -fsanitize=fuzzer-no-link" fuzz-bins

# The parsers live below train/ and report/ (dependencies point downwards), so the fuzz
# library leaves those two out: a shorter build in CI. The INI harness drives the CLI's
# flags.o (config files are read there, through inih).
FUZZ_LIB_OBJ := $(filter-out $(BUILD)/obj/src/train/% $(BUILD)/obj/src/report/%,$(LIB_OBJ))
$(BUILD)/libfdpo-fuzz.a: $(FUZZ_LIB_OBJ)
	rm -f $@ && ar rcs $@ $^
fuzz-bins: $(FUZZ_NAMES:%=$(BUILD)/fuzz/fuzz_%)
# The reward specs (lexicon:, words:) live in eval/reward.c, whose rm: spec calls train/rm.c:
# that harness links train/ too, as the training state's does; the report's links report/ too.
$(BUILD)/fuzz/fuzz_lexicon: $(filter $(BUILD)/obj/src/train/%,$(LIB_OBJ))
$(BUILD)/fuzz/fuzz_report: $(filter $(BUILD)/obj/src/train/% $(BUILD)/obj/src/report/%,$(LIB_OBJ))
$(BUILD)/fuzz/fuzz_state: $(filter $(BUILD)/obj/src/train/%,$(LIB_OBJ))
$(BUILD)/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(BUILD)/libfdpo-fuzz.a $(BUILD)/obj/src/cli/flags.o
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fsanitize=fuzzer -o $@ $< $(filter %.o,$^) $(BUILD)/libfdpo-fuzz.a $(LDLIBS)

clean:
	rm -rf build build-asan build-fuzz

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(HAR_OBJ:.o=.d)

# src/report/assets.c pulls these in with .incbin, which the compiler's .d files do not list.
$(BUILD)/obj/src/report/assets.o: src/report/report.js src/report/report.css $(wildcard node_modules/chart.js/dist/chart.umd.min.js)

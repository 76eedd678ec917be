# libFuzzer harnesses (clang): `make -f tests/fuzz/fuzz.mk` builds them into
# build/fuzz/, `make -f tests/fuzz/fuzz.mk run` (or `make fuzz`) runs each for
# FUZZ_SECONDS on a scratch corpus seeded from tests/fuzz/corpus/NAME.
# Any crash, sanitizer report or invariant abort fails the run.

CLANG        ?= clang
FUZZ_SECONDS ?= 60
FUZZ_BUILD   := build/fuzz
FUZZ_RUNDIR  := tests/fuzz/corpus-run
FUZZ_CFLAGS  := -std=c11 -Wall -Wextra -Wshadow -Werror -g -O1 \
	-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	-fno-omit-frame-pointer -D_GNU_SOURCE -Iinclude

HARNESSES := request response chunked h2
# The config harness is written alongside core/config.c; built when present.
ifneq ($(wildcard tests/fuzz/fuzz_config.c),)
HARNESSES += config
endif
FUZZ_BINS := $(HARNESSES:%=$(FUZZ_BUILD)/fuzz_%)

.PHONY: all run
all: $(FUZZ_BINS)

$(FUZZ_BUILD)/fuzz_request $(FUZZ_BUILD)/fuzz_response $(FUZZ_BUILD)/fuzz_chunked: \
		$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c proxy/http.c include/http.h
	@mkdir -p $(dir $@)
	$(CLANG) $(FUZZ_CFLAGS) -o $@ tests/fuzz/fuzz_$*.c proxy/http.c

# HTTP/2 frames through nghttp2 into h2req, whose heads go through http.c
H2_PKGS := libnghttp2 libevent_core
$(FUZZ_BUILD)/fuzz_h2: tests/fuzz/fuzz_h2.c proxy/h2req.c proxy/http.c $(wildcard include/*.h) proxy/proxy_int.h
	@mkdir -p $(dir $@)
	$(CLANG) $(FUZZ_CFLAGS) -Iproxy $(shell pkg-config --cflags $(H2_PKGS)) -o $@ \
		tests/fuzz/fuzz_h2.c proxy/h2req.c proxy/http.c $(shell pkg-config --libs $(H2_PKGS))

CONFIG_SRCS := core/config.c core/log.c
$(FUZZ_BUILD)/fuzz_config: tests/fuzz/fuzz_config.c $(CONFIG_SRCS) $(wildcard include/*.h)
	@mkdir -p $(dir $@)
	$(CLANG) $(FUZZ_CFLAGS) $(shell pkg-config --cflags inih) -o $@ \
		tests/fuzz/fuzz_config.c $(CONFIG_SRCS) $(shell pkg-config --libs inih)

# Each harness: new inputs go to the scratch corpus (git-ignored), the
# checked-in seeds are read too; the log of a run is build/fuzz/NAME.log.
run: all
	@for h in $(HARNESSES); do \
		mkdir -p $(FUZZ_RUNDIR)/$$h; \
		seeds=; [ -d tests/fuzz/corpus/$$h ] && seeds=tests/fuzz/corpus/$$h; \
		dict=; case $$h in request|response|chunked) dict=-dict=tests/fuzz/http.dict;; esac; \
		echo "fuzz $$h: $(FUZZ_SECONDS)s"; \
		if ! $(FUZZ_BUILD)/fuzz_$$h -max_total_time=$(FUZZ_SECONDS) \
			-print_final_stats=1 -artifact_prefix=$(FUZZ_BUILD)/$$h- \
			$$dict $(FUZZ_RUNDIR)/$$h $$seeds >$(FUZZ_BUILD)/$$h.log 2>&1; then \
			tail -n 40 $(FUZZ_BUILD)/$$h.log; \
			echo "fuzz $$h: FAILED (log: $(FUZZ_BUILD)/$$h.log)"; exit 1; \
		fi; \
		grep -aE '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' \
			$(FUZZ_BUILD)/$$h.log | tr '\n' ' '; echo; \
		echo "fuzz $$h: ok"; \
	done

# pmd — GNU make build. `make`, `make check`, `make check SANITIZE=1`,
# `make install PREFIX=/usr/local DESTDIR=`, `make deps`, `make fuzz`,
# `make deb` (a binary Debian package in build/deb/).

PREFIX  ?= /usr/local
DESTDIR ?=
CC      ?= gcc
PKGS    := libevent_core libevent_openssl libevent_pthreads openssl libcurl libcjson inih libnghttp2
# The oldest version of each library pmd builds and runs with: those of
# Ubuntu 22.04 LTS, the oldest supported system (README "Supported
# systems"). Checked before anything is compiled; `make deps`, `make clean`
# and `make dist` need no libraries and skip the check.
MIN_VERSIONS := libevent_core:2.1.12 libevent_openssl:2.1.12 libevent_pthreads:2.1.12 \
	openssl:3.0.2 libcurl:7.81.0 libcjson:1.7.15 inih:53 \
	libnghttp2:1.43.0

ifeq ($(SANITIZE),1)
BUILD   ?= build/san
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
OPT     := -O1 -g
else
BUILD   ?= build
SANFLAGS :=
OPT     := -O2 -g
endif

ifneq ($(filter-out deps clean dist,$(or $(MAKECMDGOALS),all)),)
lib_check = $(shell pkg-config --atleast-version=$(2) $(1) 2>/dev/null || \
	echo "$(1)>=$(2)(found:$$(pkg-config --modversion $(1) 2>/dev/null || echo none))")
LIB_PROBLEMS := $(strip $(foreach m,$(MIN_VERSIONS),$(call lib_check,$(word 1,$(subst :, ,$(m))),$(word 2,$(subst :, ,$(m))))))
ifneq ($(LIB_PROBLEMS),)
$(error libraries missing or too old: $(LIB_PROBLEMS). Install the -dev packages of tests/deps.sh (make deps); minimum versions: README "Supported systems")
endif
endif

VERSION := $(shell cat VERSION 2>/dev/null || echo 0.0.0)
WARN    := -std=c11 -Wall -Wextra -Wshadow -Wformat=2 -Werror
CPPFLAGS += -D_GNU_SOURCE -DPMD_VERSION='"$(VERSION)"' -Iinclude
CFLAGS  += $(WARN) $(OPT) $(SANFLAGS) -MMD -MP $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread
LDFLAGS += $(SANFLAGS)

# Every module of the daemon; main.c holds only main().
LIB_SRCS := $(filter-out core/main.c,$(wildcard core/*.c proxy/*.c supervisor/*.c acme/*.c))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/%.o)
PMD_OBJS := $(BUILD)/core/main.o $(LIB_OBJS)
PMCTL_SRCS := $(wildcard cli/*.c)
PMCTL_OBJS := $(PMCTL_SRCS:%.c=$(BUILD)/%.o)

UNIT_SRCS  := $(wildcard tests/unit/test_*.c)
UNIT_BINS  := $(UNIT_SRCS:%.c=$(BUILD)/%)

.PHONY: all clean install check unit integration deps fuzz dist demo deb
all: $(BUILD)/pmd $(BUILD)/pmctl

$(BUILD)/pmd: $(PMD_OBJS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/pmctl: $(PMCTL_OBJS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

# Unit tests link the library objects they need only: each test lists its
# modules in a line `// UNIT-DEPS: core/config.c core/log.c` near its top.
unit_deps = $(addprefix $(BUILD)/,$(addsuffix .o,$(basename $(shell sed -n 's|^// UNIT-DEPS:||p' tests/unit/$(1).c))))
.SECONDEXPANSION:
$(BUILD)/tests/unit/%: tests/unit/%.c $$(call unit_deps,$$*)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $< $(filter %.o,$^) $(LDLIBS) $(shell pkg-config --libs cmocka)

unit: $(UNIT_BINS)
	@bash tests/run-unit.sh $(UNIT_BINS)

integration: all
	@PMD_BUILD=$(abspath $(BUILD)) bash tests/run-integration.sh

check: all
	@PMD_BUILD=$(abspath $(BUILD)) PMD_CHECK_SANITIZED=$(SANITIZE) bash tests/check.sh $(UNIT_BINS)

deps:
	@bash tests/deps.sh

# pmd in the foreground on conf/demo.ini (http://127.0.0.1:8080,
# https://127.0.0.1:8443 self-signed).
demo: all
	@PMD_BUILD=$(BUILD) bash examples/demo/run.sh

fuzz:
	@$(MAKE) -s -f tests/fuzz/fuzz.mk run

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/sbin \
		$(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man5 \
		$(DESTDIR)$(PREFIX)/share/man/man8 $(DESTDIR)$(PREFIX)/lib/systemd/system \
		$(DESTDIR)$(PREFIX)/share/doc/pmd/examples
	install -m 0755 $(BUILD)/pmd $(DESTDIR)$(PREFIX)/sbin/pmd
	install -m 0755 $(BUILD)/pmctl $(DESTDIR)$(PREFIX)/bin/pmctl
	install -m 0644 man/pmctl.1 $(DESTDIR)$(PREFIX)/share/man/man1/pmctl.1
	install -m 0644 man/pmd.ini.5 $(DESTDIR)$(PREFIX)/share/man/man5/pmd.ini.5
	install -m 0644 man/pmd.8 $(DESTDIR)$(PREFIX)/share/man/man8/pmd.8
	sed 's|/usr/local/|$(PREFIX)/|g' conf/pmd.service > $(DESTDIR)$(PREFIX)/lib/systemd/system/pmd.service
	chmod 0644 $(DESTDIR)$(PREFIX)/lib/systemd/system/pmd.service
	install -m 0644 conf/pmd.socket $(DESTDIR)$(PREFIX)/lib/systemd/system/pmd.socket
	install -m 0644 conf/pmd.ini conf/uat.ini conf/dev.ini conf/cloud-init.yaml \
		conf/deploy.yml conf/release.yml conf/authorized_keys.example $(DESTDIR)$(PREFIX)/share/doc/pmd/examples/

# Source tarball of what git tracks at HEAD: builds with `make` on a fresh
# machine (after `make deps`).
dist:
	@mkdir -p build
	git archive --format=tar.gz --prefix=pmd-$(VERSION)/ -o build/pmd-$(VERSION).tar.gz HEAD
	@echo build/pmd-$(VERSION).tar.gz

# Binary Debian package (debian/, debhelper) of the tree as it is, built in
# a copy under build/deb/src so that nothing is written outside build/:
# build/deb/pmd_VERSION_ARCH.deb. Needs dpkg-dev, debhelper, fakeroot and
# the -dev packages (make deps). DEB_BUILD_OPTIONS etc. pass through.
DEB_DIR := build/deb
deb:
	rm -rf $(DEB_DIR) && mkdir -p $(DEB_DIR)/src
	tar --exclude=./build --exclude=./.git --exclude='__pycache__' -cf - . | tar -xf - -C $(DEB_DIR)/src
	cd $(DEB_DIR)/src && dpkg-buildpackage -b -us -uc -rfakeroot -j2
	@ls $(DEB_DIR)/*.deb

clean:
	rm -rf build

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

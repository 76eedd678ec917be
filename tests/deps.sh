#!/usr/bin/env bash
# Install every Debian package needed to build pmd and run all of its tests.
# Idempotent: apt is touched only when something is missing.
set -euo pipefail

PKGS=(
	# build
	gcc make pkg-config
	libevent-dev libssl-dev libcurl4-openssl-dev libcjson-dev libinih-dev libnghttp2-dev
	# unit tests and fuzzing
	libcmocka-dev clang libclang-rt-14-dev
	# integration tests and their peers
	python3 python3-pytest python3-pytest-xdist curl openssl
	docker.io docker-registry apache2-utils pebble
	busybox-static gunicorn
	# HTTP/2 clients (test_h2.py) and the h2 bench (bench/h2.sh)
	nghttp2-client python3-h2 chromium haproxy nginx-light
	# droplet files: systemd-analyze verify, cloud-init schema, man -l, make dist
	systemd cloud-init python3-yaml man-db groff-base git
	# make deb and its install test (test_package.py); the load balancer of
	# test_rolling.py
	dpkg-dev debhelper fakeroot lintian adduser haproxy
)

missing=()
for p in "${PKGS[@]}"; do
	st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
	[ "$st" = installed ] || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
	echo "deps: all ${#PKGS[@]} packages present"
	exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "deps: missing packages: ${missing[*]}" >&2
	echo "deps: run as root or: sudo make deps" >&2
	exit 1
fi

echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# No service is started here: there may be no init system, and the tests
# start dockerd, the registry and pebble themselves (tests/services.sh).
apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
echo "deps: done"

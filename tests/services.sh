#!/usr/bin/env bash
# Test peers for the integration tests, all on loopback, all state in one
# folder, every process tracked by PID:
#
#   tests/services.sh start DIR   start what is installed; write DIR/env
#   tests/services.sh stop DIR    stop them (by PID), remove DIR
#
# DIR/env is a shell file of `export NAME=value` lines the tests read:
#   PMD_TEST_DOCKER_SOCKET       path of our own dockerd's socket
#   DOCKER_CONFIG                docker CLI config holding the registry login
#   PMD_TEST_REGISTRY            host:port of a registry with htpasswd auth
#   PMD_TEST_REGISTRY_USER, PMD_TEST_REGISTRY_PASSWORD
#   PMD_TEST_REGISTRY_AUTH_FILE  docker config.json with that login (registry_auth_file)
#   PMD_TEST_IMAGE_BACKEND, PMD_TEST_IMAGE_BACKEND_V2, PMD_TEST_IMAGE_BACKEND_BROKEN,
#   PMD_TEST_IMAGE_FRONTEND      images pushed to that registry (tests/images/build.sh)
#   PMD_TEST_DOCKER_IMAGE        a local-only busybox image in the test dockerd
#   PMD_TEST_PEBBLE_DIR          ACME directory URL of Pebble
#   PMD_TEST_PEBBLE_CA           CA file that verifies Pebble's own HTTPS (acme_ca_file)
#   PMD_TEST_PEBBLE_MGMT         Pebble's management URL (/roots/0 = issuing root)
#   PMD_TEST_PEBBLE_HTTP_PORT    port Pebble validates http-01 on (pmd's http_listen)
#   PMD_TEST_PEBBLE_TLS_PORT     port Pebble validates tls-alpn-01 on
#   PMD_TEST_CHALLTESTSRV        challtestsrv management URL (all names resolve to 127.0.0.1)
#
# A service that is not installed is skipped (its tests skip). A service that
# is installed but fails to start fails `start`, unless
# PMD_TEST_SERVICES=optional. dockerd needs root; without root it is skipped.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)

say() { echo "services: $*" >&2; }

free_port() {
	/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_until SECONDS WHAT CMD...: poll CMD every 0.2 s, bounded.
wait_until() {
	local secs=$1 what=$2 i
	shift 2
	for ((i = 0; i < secs * 5; i++)); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.2
	done
	say "$what did not come up within ${secs}s"
	return 1
}

# spawn NAME LOG CMD...: start CMD in the background, detached from our
# stdin, record its PID in $dir/NAME.pid.
spawn() {
	local name=$1 logf=$2
	shift 2
	"$@" </dev/null >"$logf" 2>&1 &
	echo $! >"$dir/$name.pid"
}

alive() { [ -f "$dir/$1.pid" ] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }

# stop_pid NAME SECONDS: SIGTERM, then SIGKILL after SECONDS.
stop_pid() {
	local name=$1 secs=$2 pid i
	[ -f "$dir/$name.pid" ] || return 0
	pid=$(cat "$dir/$name.pid")
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < secs * 5; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.2
		done
		if kill -0 "$pid" 2>/dev/null; then
			say "$name (pid $pid) ignored SIGTERM for ${secs}s: SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	rm -f "$dir/$name.pid"
}

fail_or_skip() {
	say "$1"
	if [ "${PMD_TEST_SERVICES:-}" = optional ]; then return 0; fi
	say "(set PMD_TEST_SERVICES=optional to run without it)"
	exit 1
}

envline() { printf 'export %s=%q\n' "$1" "$2" >>"$dir/env"; }

start_docker() {
	if ! command -v dockerd >/dev/null; then say "dockerd not installed: docker tests will skip"; return 0; fi
	if [ "$(id -u)" -ne 0 ]; then say "not root: no dockerd, docker tests will skip"; return 0; fi
	local d=$dir/docker
	mkdir -p "$d/data" "$d/exec"
	echo '{}' >"$d/daemon.json"
	spawn dockerd "$d/dockerd.log" dockerd \
		--config-file "$d/daemon.json" \
		--host "unix://$d/docker.sock" \
		--data-root "$d/data" --exec-root "$d/exec" --pidfile "$d/dockerd.pid" \
		--bridge=none --iptables=false --ip6tables=false --ip-masq=false
	export DOCKER_HOST="unix://$d/docker.sock"
	if ! wait_until 60 dockerd docker version; then
		tail -n 20 "$d/dockerd.log" >&2 || true
		stop_pid dockerd 20
		unset DOCKER_HOST
		fail_or_skip "dockerd failed to start"
		return 0
	fi
	envline PMD_TEST_DOCKER_SOCKET "$d/docker.sock"
	say "dockerd up at $d/docker.sock"
}

start_registry() {
	if ! command -v docker-registry >/dev/null || ! command -v htpasswd >/dev/null; then
		say "docker-registry or htpasswd not installed: registry tests will skip"
		return 0
	fi
	local r=$dir/registry port user=pmdtest pass
	port=$(free_port)
	pass=$(openssl rand -hex 12)
	mkdir -p "$r/data"
	htpasswd -Bbn "$user" "$pass" >"$r/htpasswd" 2>/dev/null
	cat >"$r/config.yml" <<-EOF
	version: 0.1
	log:
	  level: warn
	storage:
	  filesystem:
	    rootdirectory: $r/data
	  delete:
	    enabled: true
	http:
	  addr: 127.0.0.1:$port
	auth:
	  htpasswd:
	    realm: pmd-test
	    path: $r/htpasswd
	EOF
	spawn registry "$r/registry.log" docker-registry serve "$r/config.yml"
	# 401 without credentials is the answer we wait for.
	if ! wait_until 30 registry curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v2/"; then
		tail -n 20 "$r/registry.log" >&2 || true
		stop_pid registry 5
		fail_or_skip "docker-registry failed to start"
		return 0
	fi
	# The docker CLI's login for the image builds, and the same login as a
	# file for pmd's registry_auth_file.
	mkdir -p "$dir/docker-config"
	printf '{"auths":{"127.0.0.1:%s":{"auth":"%s"}}}\n' "$port" \
		"$(printf '%s:%s' "$user" "$pass" | base64 -w0)" >"$dir/docker-config/config.json"
	export DOCKER_CONFIG=$dir/docker-config
	envline DOCKER_CONFIG "$dir/docker-config"
	envline PMD_TEST_REGISTRY "127.0.0.1:$port"
	envline PMD_TEST_REGISTRY_USER "$user"
	envline PMD_TEST_REGISTRY_PASSWORD "$pass"
	envline PMD_TEST_REGISTRY_AUTH_FILE "$dir/docker-config/config.json"
	say "registry up at 127.0.0.1:$port (user $user)"

	if [ -n "${DOCKER_HOST:-}" ]; then
		if ! PMD_TEST_REGISTRY=127.0.0.1:$port bash "$here/images/build.sh" >>"$dir/env" 2>"$dir/images.log"; then
			tail -n 20 "$dir/images.log" >&2 || true
			fail_or_skip "building the test images failed"
			return 0
		fi
		say "test images pushed to 127.0.0.1:$port"
	fi
}

start_pebble() {
	if ! command -v pebble >/dev/null || ! command -v pebble-challtestsrv >/dev/null; then
		say "pebble not installed: ACME tests will skip"
		return 0
	fi
	local p=$dir/pebble port mport dport cport hport tport
	port=$(free_port); mport=$(free_port); dport=$(free_port); cport=$(free_port)
	hport=$(free_port); tport=$(free_port)
	mkdir -p "$p"
	# A throwaway CA and a server certificate for Pebble's own HTTPS.
	openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=pmd-test-ca \
		-keyout "$p/ca.key" -out "$p/ca.pem" 2>/dev/null
	openssl req -newkey rsa:2048 -nodes -subj /CN=localhost \
		-keyout "$p/key.pem" -out "$p/cert.csr" 2>/dev/null
	printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$p/ext.cnf"
	openssl x509 -req -in "$p/cert.csr" -CA "$p/ca.pem" -CAkey "$p/ca.key" -CAcreateserial \
		-days 2 -extfile "$p/ext.cnf" -out "$p/cert.pem" 2>/dev/null
	cat >"$p/pebble.json" <<-EOF
	{"pebble": {
	  "listenAddress": "127.0.0.1:$port",
	  "managementListenAddress": "127.0.0.1:$mport",
	  "certificate": "$p/cert.pem",
	  "privateKey": "$p/key.pem",
	  "httpPort": $hport,
	  "tlsPort": $tport,
	  "ocspResponderURL": "",
	  "externalAccountBindingRequired": false
	}}
	EOF
	# Every name resolves to 127.0.0.1 (A only), so validations come back to
	# pmd on loopback.
	spawn challtestsrv "$p/challtestsrv.log" pebble-challtestsrv \
		-management "127.0.0.1:$cport" -dns01 "127.0.0.1:$dport" \
		-http01 "" -https01 "" -tlsalpn01 "" \
		-defaultIPv4 127.0.0.1 -defaultIPv6 ""
	spawn pebble "$p/pebble.log" env PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 \
		pebble -config "$p/pebble.json" -dnsserver "127.0.0.1:$dport"
	if ! wait_until 30 pebble curl -sf --cacert "$p/ca.pem" "https://127.0.0.1:$port/dir" ||
		! wait_until 10 challtestsrv curl -s -o /dev/null "http://127.0.0.1:$cport/"; then
		tail -n 20 "$p/pebble.log" "$p/challtestsrv.log" >&2 || true
		stop_pid pebble 5
		stop_pid challtestsrv 5
		fail_or_skip "pebble failed to start"
		return 0
	fi
	envline PMD_TEST_PEBBLE_DIR "https://127.0.0.1:$port/dir"
	envline PMD_TEST_PEBBLE_CA "$p/ca.pem"
	envline PMD_TEST_PEBBLE_MGMT "https://127.0.0.1:$mport"
	envline PMD_TEST_PEBBLE_HTTP_PORT "$hport"
	envline PMD_TEST_PEBBLE_TLS_PORT "$tport"
	envline PMD_TEST_CHALLTESTSRV "http://127.0.0.1:$cport"
	say "pebble up at https://127.0.0.1:$port/dir (http-01 port $hport)"
}

stop_all() {
	if alive dockerd; then
		local sock=$dir/docker/docker.sock ids
		# Everything in this engine was made by the tests.
		ids=$(DOCKER_HOST=unix://$sock timeout 30 docker ps -aq 2>/dev/null || true)
		if [ -n "$ids" ]; then
			# shellcheck disable=SC2086
			DOCKER_HOST=unix://$sock timeout 60 docker rm -f $ids >/dev/null 2>&1 || true
		fi
	fi
	stop_pid pebble 5
	stop_pid challtestsrv 5
	stop_pid registry 5
	stop_pid dockerd 30
	# dockerd unmounts its layers when it stops; a leftover mount under DIR
	# (after a SIGKILL) would make the removal fail.
	awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
		while read -r m; do umount -l "$m" 2>/dev/null || true; done
	rm -rf "$dir"
}

cmd=${1:-}
dir=${2:-}
if [ -z "$cmd" ] || [ -z "$dir" ]; then
	echo "usage: $0 start|stop DIR" >&2
	exit 2
fi
case $cmd in
start)
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	: >"$dir/env"
	envline PMD_TEST_SERVICES_DIR "$dir"
	start_docker
	start_registry
	start_pebble
	;;
stop)
	[ -d "$dir" ] || exit 0
	dir=$(cd "$dir" && pwd)
	stop_all
	;;
*)
	echo "usage: $0 start|stop DIR" >&2
	exit 2
	;;
esac

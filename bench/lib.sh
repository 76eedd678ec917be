# bench/lib.sh — what every bench/ script does the same way; sourced, after
# `cd` to the top folder and `set -euo pipefail`.
#
#   bench_need TOOL...         exit 2 naming the first tool not installed
#   bench_cap NAME MAX         exit 2 when $NAME is over MAX (loads stay bounded)
#   bench_tmp PREFIX           T=a new folder (nginx's workers may read it),
#                              PIDS=(); at exit every PID in PIDS is stopped
#                              (TERM, KILL after 5 s) and T removed
#   bench_cert [DAYS]          one ECDSA P-256 certificate for localhost and
#                              127.0.0.1: $T/cert.pem, $T/key.pem, $T/both.pem
#   bench_origin PORT          $T/www/{small,4k} and $T/origin.conf: one nginx
#                              worker serving them on 127.0.0.1:PORT
#   bench_pmd_ini HTTP HTTPS   the head of $T/pmd.ini (see below)
#   bench_proxies HTTP HTTPS ORIGIN  pmd, nginx, HAProxy and the origin started
#   wait_ok, cpu_ticks, rss_kib, med, lat_ms: measuring helpers (below)
# build/pmd is built when it is not there ($PMD).

bench_need() {
	local t
	for t in "$@"; do
		command -v "$t" >/dev/null || { echo "missing $t (make deps)" >&2; exit 2; }
	done
}

bench_cap() {
	local v=${!1}
	[ "$v" -le "$2" ] || { echo "$1 is capped at $2" >&2; exit 2; }
}

bench_stop_all() {
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$p" 2>/dev/null || true
	done
	rm -rf "$T"
}

bench_tmp() {
	T=$(mktemp -d "/tmp/$1.XXXXXX")
	chmod 755 "$T" # nginx workers (www-data) read the files
	PIDS=()
	trap bench_stop_all EXIT
}

bench_cert() {
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "${1:-2}" \
		-subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
		-keyout "$T/key.pem" -out "$T/cert.pem" 2>/dev/null
	cat "$T/cert.pem" "$T/key.pem" >"$T/both.pem"
}

bench_origin() {
	mkdir -p "$T/www"
	printf 'ok\n' >"$T/www/small"
	head -c 4096 /dev/zero | tr '\0' 'x' >"$T/www/4k"
	cat >"$T/origin.conf" <<NGX
daemon off; worker_processes 1; pid $T/origin.pid; error_log $T/origin.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$1 reuseport; root $T/www; location / { } } }
NGX
}

# bench_pmd_ini HTTP HTTPS: the [pmd], [proxy] and [tls] sections of
# $T/pmd.ini for a bench (2 workers, no access log, $T/cert.pem); the
# caller appends its services, routes or static sections.
bench_pmd_ini() {
	cat >"$T/pmd.ini" <<INI
[pmd]
state_dir = $T/pmd-state
control_socket = $T/pmd.sock
log_level = warn
[proxy]
http_listen = $1
https_listen = $2
workers = 2
access_log = false
redirect_https = false
hsts =
[tls]
mode = files
cert_file = $T/cert.pem
key_file = $T/key.pem
INI
}

# bench_proxies HTTP HTTPS ORIGIN_PORT: pmd routing everything to the origin
# ($T/pmd.ini), then the origin ($T/origin.conf), nginx ($T/nginx.conf),
# HAProxy ($T/haproxy.cfg) and pmd started; NGX_MASTER, HAP_PID, PMD_PID.
bench_proxies() {
	bench_pmd_ini "$1" "$2"
	cat >>"$T/pmd.ini" <<INI
[service origin]
runtime = external
address = 127.0.0.1:$3
health_path = /small
health_interval = 1s
healthy_threshold = 1
[route all]
prefix = /
service = origin
INI
	nginx -c "$T/origin.conf" & PIDS+=($!)
	nginx -c "$T/nginx.conf" & PIDS+=($!); NGX_MASTER=$!
	haproxy -f "$T/haproxy.cfg" -db >/dev/null 2>&1 & PIDS+=($!); HAP_PID=$!
	"$PMD" run -c "$T/pmd.ini" 2>"$T/pmd.log" & PIDS+=($!); PMD_PID=$!
}

wait_ok() { # url [curl option]: bounded wait for a 2xx
	for _ in $(seq 100); do
		curl -fsS ${2:-} -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1
	done
	echo "not answering: $1" >&2; exit 1
}

cpu_ticks() { local s=0; for p in $1; do s=$((s + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $s; }
rss_kib() { local s=0; for p in $1; do s=$((s + $(awk '/^VmRSS/{print $2}' /proc/$p/status))); done; echo $s; }
# median of the numbers on stdin ("-" when none)
med() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{if(NR==0){print "-"} else if(NR%2){print a[(NR+1)/2]} else {printf "%.2f\n",(a[NR/2]+a[NR/2+1])/2}}'; }
# median of wrk latencies (123us, 4.5ms, 1.2s) in ms
lat_ms() { tr ' ' '\n' | grep -v '^$' | awk '{v=$1; if(v~/us$/){sub("us","",v); v/=1000} else if(v~/ms$/){sub("ms","",v)} else if(v~/s$/){sub("s","",v); v*=1000}; print v}' | med; }

[ -x "${PMD:-build/pmd}" ] || make -s

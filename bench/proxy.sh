#!/usr/bin/env bash
# bench/proxy.sh — pmd side by side with HAProxy and nginx as reverse
# proxies in front of one fast static origin (nginx, one worker), on
# loopback, interleaved A/B/A/B. A benchmark, not a test: it prints figures
# and ratios, it asserts nothing.
#
#   bench/proxy.sh                 # 2 rounds of 10 s per target and size
#   ROUNDS=1 DURATION=5 bench/proxy.sh
#
# Needs: wrk, nginx, haproxy (make deps installs them), build/pmd.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
PMD=${PMD:-build/pmd}
BASE_PORT=${BASE_PORT:-18180}
ORIGIN=$BASE_PORT; P_PMD=$((BASE_PORT+1)); P_HAP=$((BASE_PORT+2)); P_NGX=$((BASE_PORT+3))
[ "$DURATION" -le 60 ] || { echo "DURATION is capped at 60 s" >&2; exit 2; }
[ "$ROUNDS" -le 5 ] || { echo "ROUNDS is capped at 5" >&2; exit 2; }
for t in wrk nginx haproxy python3; do command -v $t >/dev/null || { echo "missing $t (make deps)" >&2; exit 2; }; done
[ -x "$PMD" ] || make -s

T=$(mktemp -d /tmp/pmd-bench.XXXXXX)
chmod 755 "$T" # nginx workers (www-data) read the files
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$p" 2>/dev/null || true
	done
	rm -rf "$T"
}
trap cleanup EXIT

mkdir -p "$T/www"
printf 'ok\n' > "$T/www/small"
head -c 4096 /dev/zero | tr '\0' 'x' > "$T/www/4k"

cat > "$T/origin.conf" <<NGX
daemon off; worker_processes 1; pid $T/origin.pid; error_log $T/origin.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$ORIGIN reuseport; root $T/www; location / { } } }
NGX
cat > "$T/nginx.conf" <<NGX
daemon off; worker_processes 2; pid $T/nginx.pid; error_log $T/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream o { server 127.0.0.1:$ORIGIN; keepalive 128; }
  server { listen 127.0.0.1:$P_NGX; location / { proxy_pass http://o;
    proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGX
cat > "$T/haproxy.cfg" <<HAP
global
  nbthread 2
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend f
  bind 127.0.0.1:$P_HAP
  default_backend b
backend b
  http-reuse always
  server o 127.0.0.1:$ORIGIN
HAP
cat > "$T/pmd.ini" <<INI
[pmd]
state_dir = $T/pmd-state
control_socket = $T/pmd.sock
log_level = warn
[proxy]
http_listen = 127.0.0.1:$P_PMD
workers = 2
access_log = false
[tls]
mode = off
[service origin]
runtime = external
address = 127.0.0.1:$ORIGIN
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

wait_ok() { # url
	for _ in $(seq 100); do
		curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1
	done
	echo "not answering: $1" >&2; exit 1
}
wait_ok "http://127.0.0.1:$ORIGIN/small"
wait_ok "http://127.0.0.1:$P_NGX/small"
wait_ok "http://127.0.0.1:$P_HAP/small"
wait_ok "http://127.0.0.1:$P_PMD/small"

# pids of a server: nginx master + workers, or the single process
pids_of() { case $1 in nginx) echo "$NGX_MASTER $(pgrep -P "$NGX_MASTER" | tr '\n' ' ')";; haproxy) echo $HAP_PID;; pmd) echo $PMD_PID;; direct) echo "";; esac; }
cpu_ticks() { local s=0; for p in $1; do s=$((s + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $s; }
rss_kib() { local s=0; for p in $1; do s=$((s + $(awk '/^VmRSS/{print $2}' /proc/$p/status))); done; echo $s; }
port_of() { case $1 in direct) echo $ORIGIN;; pmd) echo $P_PMD;; haproxy) echo $P_HAP;; nginx) echo $P_NGX;; esac; }
HZ=$(getconf CLK_TCK)

declare -A RPS P50 P99 CPU
run_one() { # target size
	local tgt=$1 size=$2 port pids t0 t1 out rps reqs
	port=$(port_of "$tgt"); pids=$(pids_of "$tgt")
	t0=$(cpu_ticks "$pids")
	out=$(timeout $((DURATION + 30)) wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$port/$size")
	t1=$(cpu_ticks "$pids")
	rps=$(awk '/^Requests\/sec/{print $2}' <<<"$out")
	reqs=$(awk '/requests in/{print $1}' <<<"$out")
	RPS[$tgt,$size]="${RPS[$tgt,$size]:-} $rps"
	P50[$tgt,$size]="${P50[$tgt,$size]:-} $(awk '$1=="50%"{print $2}' <<<"$out")"
	P99[$tgt,$size]="${P99[$tgt,$size]:-} $(awk '$1=="99%"{print $2}' <<<"$out")"
	if [ -n "$pids" ]; then
		CPU[$tgt,$size]="${CPU[$tgt,$size]:-} $(awk -v d=$((t1 - t0)) -v hz="$HZ" -v n="$reqs" 'BEGIN{printf "%.2f", d*1e6/hz/n}')"
	fi
}

declare -A RSS_IDLE RSS_LOAD RSS_1K
for tgt in pmd haproxy nginx; do RSS_IDLE[$tgt]=$(rss_kib "$(pids_of $tgt)"); done

echo "# pmd bench: wrk -t2 -c$CONNS -d${DURATION}s, $ROUNDS round(s), interleaved; origin nginx (1 worker)" >&2
for r in $(seq "$ROUNDS"); do
	for size in small 4k; do
		for tgt in direct pmd haproxy nginx; do
			echo "  round $r $size $tgt" >&2
			run_one "$tgt" "$size"
		done
	done
done
for tgt in pmd haproxy nginx; do RSS_LOAD[$tgt]=$(rss_kib "$(pids_of $tgt)"); done

# 1,000 idle keep-alive connections (each made one request), RSS delta
for tgt in pmd haproxy nginx; do
	before=$(rss_kib "$(pids_of $tgt)")
	python3 - "$(port_of $tgt)" 1000 <<'PY' &
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
conns = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n")
    s.recv(4096)
    conns.append(s)
time.sleep(4)
PY
	holder=$!
	sleep 3
	after=$(rss_kib "$(pids_of $tgt)")
	RSS_1K[$tgt]=$((after - before))
	wait $holder || true
done

med() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{if(NR==0){print "-"} else if(NR%2){print a[(NR+1)/2]} else {printf "%.2f\n",(a[NR/2]+a[NR/2+1])/2}}'; }
lat_ms() { tr ' ' '\n' | grep -v '^$' | awk '{v=$1; if(v~/us$/){sub("us","",v); v/=1000} else if(v~/ms$/){sub("ms","",v)} else if(v~/s$/){sub("s","",v); v*=1000}; print v}' | med; }

printf '\n%-8s %-6s %10s %9s %9s %12s\n' target size "req/s" "p50 ms" "p99 ms" "cpu us/req"
for size in small 4k; do
	for tgt in direct pmd haproxy nginx; do
		printf '%-8s %-6s %10s %9s %9s %12s\n' "$tgt" "$size" \
			"$(med <<<"${RPS[$tgt,$size]}")" "$(lat_ms <<<"${P50[$tgt,$size]}")" \
			"$(lat_ms <<<"${P99[$tgt,$size]}")" "$(med <<<"${CPU[$tgt,$size]:-}")"
	done
done
printf '\n%-8s %12s %14s %22s\n' proxy "RSS idle KiB" "RSS load KiB" "+1000 idle conns KiB"
for tgt in pmd haproxy nginx; do
	printf '%-8s %12s %14s %22s\n' "$tgt" "${RSS_IDLE[$tgt]}" "${RSS_LOAD[$tgt]}" "${RSS_1K[$tgt]}"
done
echo
for size in small 4k; do
	p=$(med <<<"${RPS[pmd,$size]}"); h=$(med <<<"${RPS[haproxy,$size]}"); n=$(med <<<"${RPS[nginx,$size]}")
	pc=$(med <<<"${CPU[pmd,$size]}"); hc=$(med <<<"${CPU[haproxy,$size]}"); nc=$(med <<<"${CPU[nginx,$size]}")
	awk -v s=$size -v p="$p" -v h="$h" -v n="$n" -v pc="$pc" -v hc="$hc" -v nc="$nc" 'BEGIN{
		printf "ratio %-5s req/s pmd/haproxy %.2f  pmd/nginx %.2f   cpu/req pmd/haproxy %.2f  pmd/nginx %.2f\n", s, p/h, p/n, pc/hc, pc/nc }'
done

#!/usr/bin/env bash
# bench/h2.sh — HTTP/2 termination: pmd, HAProxy and nginx each terminate
# h2 (TLS 1.3, one ECDSA P-256 certificate) in front of the same origin
# (nginx, one worker, HTTP/1.1 keep-alive), on loopback, driven by h2load
# (nghttp2-client), interleaved pmd/haproxy/nginx per round. A benchmark,
# not a test: it prints figures and ratios, it asserts nothing.
#
#   bench/h2.sh                        # 2 rounds of 10 s per target and size
#   ROUNDS=1 DURATION=5 bench/h2.sh
#
# Figures: req/s, p99 from h2load's per-request log, CPU µs per request of
# the proxy's processes (utime+stime over the run), and the RSS one idle
# h2 connection costs (IDLE h2 connections, one request each, held open).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-32}
STREAMS=${STREAMS:-10}
IDLE=${IDLE:-500}
PMD=${PMD:-build/pmd}
BASE_PORT=${BASE_PORT:-18280}
ORIGIN=$BASE_PORT; S_PMD=$((BASE_PORT+1)); S_HAP=$((BASE_PORT+2)); S_NGX=$((BASE_PORT+3))
[ "$DURATION" -le 60 ] || { echo "DURATION is capped at 60 s" >&2; exit 2; }
[ "$ROUNDS" -le 5 ] || { echo "ROUNDS is capped at 5" >&2; exit 2; }
[ "$IDLE" -le 2000 ] || { echo "IDLE is capped at 2000" >&2; exit 2; }
for t in h2load nginx haproxy openssl /usr/bin/python3; do
	command -v $t >/dev/null || { echo "missing $t (make deps)" >&2; exit 2; }
done
[ -x "$PMD" ] || make -s

T=$(mktemp -d /tmp/pmd-h2bench.XXXXXX)
chmod 755 "$T"               # nginx workers (www-data) read the files
PIDS=()
stop_all() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$p" 2>/dev/null || true
	done
	rm -rf "$T"
}
trap stop_all EXIT

mkdir -p "$T/www"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
	-subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
	-keyout "$T/key.pem" -out "$T/cert.pem" 2>/dev/null
cat "$T/cert.pem" "$T/key.pem" > "$T/both.pem"
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
  server { listen 127.0.0.1:$S_NGX ssl http2;
    ssl_certificate $T/cert.pem; ssl_certificate_key $T/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://o;
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
  bind 127.0.0.1:$S_HAP ssl crt $T/both.pem alpn h2,http/1.1
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
http_listen =
https_listen = 127.0.0.1:$S_PMD
workers = 2
access_log = false
redirect_https = false
hsts =
[tls]
mode = files
cert_file = $T/cert.pem
key_file = $T/key.pem
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

port_of() { case $1 in pmd) echo $S_PMD;; haproxy) echo $S_HAP;; nginx) echo $S_NGX;; esac; }
pids_of() { case $1 in nginx) echo "$NGX_MASTER $(pgrep -P "$NGX_MASTER" | tr '\n' ' ')";; haproxy) echo $HAP_PID;; pmd) echo $PMD_PID;; esac; }
ticks() { local s=0; for p in $1; do s=$((s + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $s; }
rss() { local s=0; for p in $1; do s=$((s + $(awk '/^VmRSS/{print $2}' /proc/$p/status))); done; echo $s; }
HZ=$(getconf CLK_TCK)

for tgt in pmd haproxy nginx; do
	url="https://127.0.0.1:$(port_of $tgt)/small"
	for _ in $(seq 100); do
		curl -fsSk --http2 -o /dev/null "$url" 2>/dev/null && break; sleep 0.1
	done
	[ "$(curl -sk --http2 -o /dev/null -w '%{http_version}' "$url")" = 2 ] ||
		{ echo "$tgt does not answer h2 on $url" >&2; exit 1; }
done

declare -A RPS P99 CPU
run_one() { # target size
	local tgt=$1 size=$2 pids t0 t1 out key=$1,$2
	pids=$(pids_of "$tgt")
	rm -f "$T/h2load.log"
	t0=$(ticks "$pids")
	out=$(timeout $((DURATION + 30)) h2load -t 2 -c "$CLIENTS" -m "$STREAMS" -D "$DURATION" \
		--log-file="$T/h2load.log" "https://127.0.0.1:$(port_of "$tgt")/$size" 2>&1)
	t1=$(ticks "$pids")
	local reqs rps
	reqs=$(awk '/^requests:/{print $8}' <<<"$out")      # succeeded
	rps=$(awk '/^finished in/{gsub(",","",$4); print $4}' <<<"$out")
	RPS[$key]="${RPS[$key]:-} $rps"
	# the log: start time, status, elapsed µs per request
	P99[$key]="${P99[$key]:-} $(awk '{print $3}' "$T/h2load.log" | sort -n |
		awk '{a[NR]=$1} END{if(NR) printf "%.2f", a[int(NR*0.99)]/1000; else print "-"}')"
	CPU[$key]="${CPU[$key]:-} $(awk -v d=$((t1 - t0)) -v hz="$HZ" -v n="${reqs:-0}" \
		'BEGIN{if(n>0) printf "%.2f", d*1e6/hz/n; else print "-"}')"
}

# RSS per idle h2 connection, on fresh processes (before any load: memory a
# run freed would hide it): IDLE connections that each made one request
declare -A PERCONN
for tgt in pmd haproxy nginx; do
	before=$(rss "$(pids_of $tgt)")
	/usr/bin/python3 - "$(port_of $tgt)" "$IDLE" "$T/held.$tgt" <<'PY' &
import socket, ssl, sys, time
import h2.config, h2.connection, h2.events
port, n, flag = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"])
held = []
for _ in range(n):
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost")
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    c.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", "b"), (":path", "/small")], end_stream=True)
    s.sendall(c.data_to_send())
    done = False
    while not done:
        for e in c.receive_data(s.recv(65536)):
            done = done or isinstance(e, h2.events.StreamEnded)
        s.sendall(c.data_to_send())
    held.append((s, c))
open(flag, "w").close()
time.sleep(6)
PY
	holder=$!
	for _ in $(seq 600); do [ -e "$T/held.$tgt" ] && break; sleep 0.1; done
	sleep 2
	after=$(rss "$(pids_of $tgt)")
	PERCONN[$tgt]=$(awk -v a="$after" -v b="$before" -v n="$IDLE" 'BEGIN{printf "%.1f", (a-b)/n}')
	wait $holder || true
	sleep 1
done

echo "# h2 bench: h2load -t2 -c$CLIENTS -m$STREAMS -D${DURATION}s, $ROUNDS round(s), interleaved" >&2
for r in $(seq "$ROUNDS"); do
	for size in small 4k; do
		for tgt in pmd haproxy nginx; do
			echo "  round $r $size $tgt" >&2
			run_one "$tgt" "$size"
		done
	done
done

med() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{if(NR==0){print "-"} else if(NR%2){print a[(NR+1)/2]} else {printf "%.2f\n",(a[NR/2]+a[NR/2+1])/2}}'; }
printf '\n%-8s %-6s %10s %9s %12s\n' target size "req/s" "p99 ms" "cpu us/req"
for size in small 4k; do
	for tgt in pmd haproxy nginx; do
		printf '%-8s %-6s %10s %9s %12s\n' "$tgt" "$size" "$(med <<<"${RPS[$tgt,$size]}")" \
			"$(med <<<"${P99[$tgt,$size]}")" "$(med <<<"${CPU[$tgt,$size]}")"
	done
done
printf '\n%-8s %22s\n' proxy "KiB per idle h2 conn"
for tgt in pmd haproxy nginx; do printf '%-8s %22s\n' "$tgt" "${PERCONN[$tgt]}"; done
echo
for size in small 4k; do
	for other in haproxy nginx; do
		awk -v s=$size -v o=$other -v p="$(med <<<"${RPS[pmd,$size]}")" -v h="$(med <<<"${RPS[$other,$size]}")" \
			-v pl="$(med <<<"${P99[pmd,$size]}")" -v hl="$(med <<<"${P99[$other,$size]}")" \
			-v pc="$(med <<<"${CPU[pmd,$size]}")" -v hc="$(med <<<"${CPU[$other,$size]}")" 'BEGIN{
			printf "ratio %-6s pmd/%-8s req/s %.2f  cpu/req %.2f  p99 %.2f\n", s, o, p/h, pc/hc, pl/hl }'
	done
done

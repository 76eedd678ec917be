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
. bench/lib.sh
bench_cap DURATION 60
bench_cap ROUNDS 5
bench_cap IDLE 2000
bench_need h2load nginx haproxy openssl /usr/bin/python3
bench_tmp pmd-h2bench
bench_cert
bench_origin "$ORIGIN"
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
bench_proxies "" "127.0.0.1:$S_PMD" "$ORIGIN"

port_of() { case $1 in pmd) echo $S_PMD;; haproxy) echo $S_HAP;; nginx) echo $S_NGX;; esac; }
pids_of() { case $1 in nginx) echo "$NGX_MASTER $(pgrep -P "$NGX_MASTER" | tr '\n' ' ')";; haproxy) echo $HAP_PID;; pmd) echo $PMD_PID;; esac; }
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
	t0=$(cpu_ticks "$pids")
	out=$(timeout $((DURATION + 30)) h2load -t 2 -c "$CLIENTS" -m "$STREAMS" -D "$DURATION" \
		--log-file="$T/h2load.log" "https://127.0.0.1:$(port_of "$tgt")/$size" 2>&1)
	t1=$(cpu_ticks "$pids")
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
	before=$(rss_kib "$(pids_of $tgt)")
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
	after=$(rss_kib "$(pids_of $tgt)")
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

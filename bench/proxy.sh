#!/usr/bin/env bash
# bench/proxy.sh — pmd side by side with HAProxy and nginx as reverse
# proxies in front of one fast static origin (nginx, one worker), on
# loopback, interleaved A/B/A/B. A benchmark, not a test: it prints figures
# and ratios, it asserts nothing.
#
#   bench/proxy.sh                 # 2 rounds of 10 s per target and size
#   ROUNDS=1 DURATION=5 bench/proxy.sh
#
# Needs: wrk, nginx, haproxy, openssl (make deps installs them), build/pmd.
# Plain HTTP rows, then TLS rows on one ECDSA P-256 certificate: keep-alive
# over TLS, and full handshakes (Connection: close; tickets and session
# caches off in HAProxy and nginx, wrk does not resume sessions).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
PMD=${PMD:-build/pmd}
BASE_PORT=${BASE_PORT:-18180}
ORIGIN=$BASE_PORT; P_PMD=$((BASE_PORT+1)); P_HAP=$((BASE_PORT+2)); P_NGX=$((BASE_PORT+3))
S_PMD=$((BASE_PORT+4)); S_HAP=$((BASE_PORT+5)); S_NGX=$((BASE_PORT+6))
. bench/lib.sh
bench_cap DURATION 60
bench_cap ROUNDS 5
bench_need wrk nginx haproxy python3
bench_tmp pmd-bench
bench_cert # one certificate for all three proxies
bench_origin "$ORIGIN"
cat > "$T/nginx.conf" <<NGX
daemon off; worker_processes 2; pid $T/nginx.pid; error_log $T/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream o { server 127.0.0.1:$ORIGIN; keepalive 128; }
  server { listen 127.0.0.1:$P_NGX; listen 127.0.0.1:$S_NGX ssl;
    ssl_certificate $T/cert.pem; ssl_certificate_key $T/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_tickets off; ssl_session_cache off;
    location / { proxy_pass http://o;
    proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGX
cat > "$T/haproxy.cfg" <<HAP
global
  nbthread 2
  maxconn 8000
  tune.ssl.cachesize 0
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend f
  bind 127.0.0.1:$P_HAP
  bind 127.0.0.1:$S_HAP ssl crt $T/both.pem alpn http/1.1 no-tls-tickets
  default_backend b
backend b
  http-reuse always
  server o 127.0.0.1:$ORIGIN
HAP
bench_proxies "127.0.0.1:$P_PMD" "127.0.0.1:$S_PMD" "$ORIGIN"

wait_ok "http://127.0.0.1:$ORIGIN/small"
wait_ok "http://127.0.0.1:$P_NGX/small"
wait_ok "http://127.0.0.1:$P_HAP/small"
wait_ok "http://127.0.0.1:$P_PMD/small"
for p in $S_PMD $S_HAP $S_NGX; do wait_ok "https://127.0.0.1:$p/small" -k; done

# pids of a server: nginx master + workers, or the single process
pids_of() { case $1 in nginx) echo "$NGX_MASTER $(pgrep -P "$NGX_MASTER" | tr '\n' ' ')";; haproxy) echo $HAP_PID;; pmd) echo $PMD_PID;; direct) echo "";; esac; }
port_of() { case $1 in direct) echo $ORIGIN;; pmd) echo $P_PMD;; haproxy) echo $P_HAP;; nginx) echo $P_NGX;; esac; }
tls_port_of() { case $1 in pmd) echo $S_PMD;; haproxy) echo $S_HAP;; nginx) echo $S_NGX;; esac; }
HZ=$(getconf CLK_TCK)

declare -A RPS P50 P99 CPU
run_one() { # target size [plain|tls|hs]
	local tgt=$1 size=$2 mode=${3:-plain} port pids t0 t1 out rps reqs url key extra=()
	key=$tgt,$size; pids=$(pids_of "$tgt")
	case $mode in
	plain) url="http://127.0.0.1:$(port_of "$tgt")/$size" ;;
	tls) url="https://127.0.0.1:$(tls_port_of "$tgt")/$size"; key=$tgt,tls-$size ;;
	hs) url="https://127.0.0.1:$(tls_port_of "$tgt")/$size"; key=$tgt,handshake
	    extra=(-H "Connection: close") ;;
	esac
	t0=$(cpu_ticks "$pids")
	out=$(timeout $((DURATION + 30)) wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "${extra[@]}" "$url")
	t1=$(cpu_ticks "$pids")
	rps=$(awk '/^Requests\/sec/{print $2}' <<<"$out")
	reqs=$(awk '/requests in/{print $1}' <<<"$out")
	RPS[$key]="${RPS[$key]:-} $rps"
	P50[$key]="${P50[$key]:-} $(awk '$1=="50%"{print $2}' <<<"$out")"
	P99[$key]="${P99[$key]:-} $(awk '$1=="99%"{print $2}' <<<"$out")"
	if [ -n "$pids" ]; then
		CPU[$key]="${CPU[$key]:-} $(awk -v d=$((t1 - t0)) -v hz="$HZ" -v n="$reqs" 'BEGIN{printf "%.2f", d*1e6/hz/n}')"
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
	for tgt in pmd haproxy nginx; do
		echo "  round $r tls keep-alive $tgt" >&2
		run_one "$tgt" small tls
		echo "  round $r tls handshakes $tgt" >&2
		run_one "$tgt" small hs
	done
done
for tgt in pmd haproxy nginx; do RSS_LOAD[$tgt]=$(rss_kib "$(pids_of $tgt)"); done

# 1,000 idle keep-alive connections (each made one request), RSS delta;
# plain and over TLS
idle_conns() { # port tls
	python3 - "$1" 1000 "$2" <<'PY' &
import socket, ssl, sys, time
port, n, tls = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
conns = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if tls:
        s = ctx.wrap_socket(s, server_hostname="localhost")
    s.sendall(b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n")
    s.recv(4096)
    conns.append(s)
time.sleep(4)
PY
}
declare -A RSS_1KTLS
for tgt in pmd haproxy nginx; do
	for tls in 0 1; do
		before=$(rss_kib "$(pids_of $tgt)")
		if [ $tls = 1 ]; then idle_conns "$(tls_port_of $tgt)" 1; else idle_conns "$(port_of $tgt)" 0; fi
		holder=$!
		sleep 3
		after=$(rss_kib "$(pids_of $tgt)")
		if [ $tls = 1 ]; then RSS_1KTLS[$tgt]=$((after - before)); else RSS_1K[$tgt]=$((after - before)); fi
		wait $holder || true
		sleep 1
	done
done


printf '\n%-8s %-6s %10s %9s %9s %12s\n' target size "req/s" "p50 ms" "p99 ms" "cpu us/req"
for size in small 4k; do
	for tgt in direct pmd haproxy nginx; do
		printf '%-8s %-9s %10s %9s %9s %12s\n' "$tgt" "$size" \
			"$(med <<<"${RPS[$tgt,$size]}")" "$(lat_ms <<<"${P50[$tgt,$size]}")" \
			"$(lat_ms <<<"${P99[$tgt,$size]}")" "$(med <<<"${CPU[$tgt,$size]:-}")"
	done
done
for k in tls-small handshake; do
	for tgt in pmd haproxy nginx; do
		printf '%-8s %-9s %10s %9s %9s %12s\n' "$tgt" "$k" \
			"$(med <<<"${RPS[$tgt,$k]}")" "$(lat_ms <<<"${P50[$tgt,$k]}")" \
			"$(lat_ms <<<"${P99[$tgt,$k]}")" "$(med <<<"${CPU[$tgt,$k]:-}")"
	done
done
printf '(tls-small: keep-alive over TLS 1.3; handshake: a new TLS connection per request, full handshakes, cpu us/req = per handshake)\n'
printf '\n%-8s %12s %14s %22s %22s\n' proxy "RSS idle KiB" "RSS load KiB" "+1000 idle conns KiB" "+1000 idle TLS KiB"
for tgt in pmd haproxy nginx; do
	printf '%-8s %12s %14s %22s %22s\n' "$tgt" "${RSS_IDLE[$tgt]}" "${RSS_LOAD[$tgt]}" "${RSS_1K[$tgt]}" "${RSS_1KTLS[$tgt]}"
done
echo
for size in small 4k; do
	p=$(med <<<"${RPS[pmd,$size]}"); h=$(med <<<"${RPS[haproxy,$size]}"); n=$(med <<<"${RPS[nginx,$size]}")
	pc=$(med <<<"${CPU[pmd,$size]}"); hc=$(med <<<"${CPU[haproxy,$size]}"); nc=$(med <<<"${CPU[nginx,$size]}")
	awk -v s=$size -v p="$p" -v h="$h" -v n="$n" -v pc="$pc" -v hc="$hc" -v nc="$nc" 'BEGIN{
		printf "ratio %-9s req/s pmd/haproxy %.2f  pmd/nginx %.2f   cpu/req pmd/haproxy %.2f  pmd/nginx %.2f\n", s, p/h, p/n, pc/hc, pc/nc }'
done
for k in tls-small handshake; do
	p=$(med <<<"${RPS[pmd,$k]}"); h=$(med <<<"${RPS[haproxy,$k]}"); n=$(med <<<"${RPS[nginx,$k]}")
	pc=$(med <<<"${CPU[pmd,$k]}"); hc=$(med <<<"${CPU[haproxy,$k]}"); nc=$(med <<<"${CPU[nginx,$k]}")
	awk -v s=$k -v p="$p" -v h="$h" -v n="$n" -v pc="$pc" -v hc="$hc" -v nc="$nc" 'BEGIN{
		printf "ratio %-9s req/s pmd/haproxy %.2f  pmd/nginx %.2f   cpu/req pmd/haproxy %.2f  pmd/nginx %.2f\n", s, p/h, p/n, pc/hc, pc/nc }'
done

#!/usr/bin/env bash
# bench/static.sh — pmd's [static] folder side by side with nginx serving
# the same folder, on loopback, interleaved pmd/nginx/pmd/nginx. A
# benchmark, not a test: it prints figures and ratios, it asserts nothing.
#
#   bench/static.sh                # 2 rounds of 10 s per target, size, scheme
#   ROUNDS=1 DURATION=5 bench/static.sh
#
# Needs: wrk, nginx, openssl, curl (make deps installs them), build/pmd.
# A 4 KiB and a 1 MiB file; plain HTTP (pmd and nginx both sendfile(2))
# and keep-alive TLS 1.3 on one ECDSA P-256 certificate (both read the file
# into TLS records). Both run 2 workers, no access log; nginx with
# `sendfile on` and `open_file_cache` (pmd caches open files per worker).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
PMD=${PMD:-build/pmd}
BASE_PORT=${BASE_PORT:-18280}
P_PMD=$BASE_PORT; P_NGX=$((BASE_PORT+1)); S_PMD=$((BASE_PORT+2)); S_NGX=$((BASE_PORT+3))
. bench/lib.sh
bench_cap DURATION 60
bench_cap ROUNDS 5
bench_need wrk nginx openssl curl
bench_tmp pmd-bench-static

mkdir -p "$T/www/static/css" "$T/www/static/media"
head -c 4096 /dev/urandom > "$T/www/static/css/app.0123456789ab.css"
head -c 1048576 /dev/urandom > "$T/www/static/media/video.bin"
chmod -R a+rX "$T/www"
declare -A FILE=([4k]=/static/css/app.0123456789ab.css [1m]=/static/media/video.bin)
bench_cert

cat > "$T/nginx.conf" <<NGX
daemon off; worker_processes 2; pid $T/nginx.pid; error_log $T/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; sendfile on;
  open_file_cache max=1000 inactive=20s; open_file_cache_valid 2s;
  types { text/css css; application/octet-stream bin; }
  server { listen 127.0.0.1:$P_NGX; listen 127.0.0.1:$S_NGX ssl;
    ssl_certificate $T/cert.pem; ssl_certificate_key $T/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    root $T/www; location /static/ { } } }
NGX
bench_pmd_ini "127.0.0.1:$P_PMD" "127.0.0.1:$S_PMD"
cat >> "$T/pmd.ini" <<INI
[static www]
path = /static/
dir = $T/www/static
INI

nginx -c "$T/nginx.conf" & PIDS+=($!); NGX_MASTER=$!
"$PMD" run -c "$T/pmd.ini" 2>"$T/pmd.log" & PIDS+=($!); PMD_PID=$!

for u in "http://127.0.0.1:$P_PMD" "http://127.0.0.1:$P_NGX" "https://127.0.0.1:$S_PMD" "https://127.0.0.1:$S_NGX"; do
	wait_ok "$u${FILE[4k]}" -k
done
# same bytes from both
for s in 4k 1m; do
	cmp <(curl -fsS "http://127.0.0.1:$P_PMD${FILE[$s]}") <(curl -fsS "http://127.0.0.1:$P_NGX${FILE[$s]}")
done

pids_of() { case $1 in nginx) echo "$NGX_MASTER $(pgrep -P "$NGX_MASTER" | tr '\n' ' ')";; pmd) echo $PMD_PID;; esac; }
HZ=$(getconf CLK_TCK)

declare -A RPS P50 P99 CPU MBS ERR
run_one() { # target size plain|tls
	local tgt=$1 size=$2 mode=$3 port key=$1,$2,$3 pids t0 t1 out reqs
	case $tgt,$mode in pmd,plain) port=$P_PMD;; nginx,plain) port=$P_NGX;; pmd,tls) port=$S_PMD;; nginx,tls) port=$S_NGX;; esac
	local url="http://127.0.0.1:$port${FILE[$size]}"
	[ "$mode" = tls ] && url="https://127.0.0.1:$port${FILE[$size]}"
	pids=$(pids_of "$tgt")
	t0=$(cpu_ticks "$pids")
	out=$(timeout $((DURATION + 30)) wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "$url")
	t1=$(cpu_ticks "$pids")
	reqs=$(awk '/requests in/{print $1}' <<<"$out")
	RPS[$key]="${RPS[$key]:-} $(awk '/^Requests\/sec/{print $2}' <<<"$out")"
	MBS[$key]="${MBS[$key]:-} $(awk '/^Transfer\/sec/{v=$2; if(v~/GB$/){sub("GB","",v); v*=1024} else if(v~/KB$/){sub("KB","",v); v/=1024} else {sub("MB","",v)}; printf "%.0f", v}' <<<"$out")"
	P50[$key]="${P50[$key]:-} $(awk '$1=="50%"{print $2}' <<<"$out")"
	P99[$key]="${P99[$key]:-} $(awk '$1=="99%"{print $2}' <<<"$out")"
	CPU[$key]="${CPU[$key]:-} $(awk -v d=$((t1 - t0)) -v hz="$HZ" -v n="$reqs" 'BEGIN{printf "%.2f", d*1e6/hz/n}')"
	# socket errors and non-2xx answers, summed over the rounds
	ERR[$key]=$(( ${ERR[$key]:-0} + $(awk '/Socket errors/{gsub(",",""); s+=$4+$6+$8+$10} /Non-2xx/{s+=$NF} END{print s+0}' <<<"$out") ))
}

echo "# pmd static bench: wrk -t2 -c$CONNS -d${DURATION}s, $ROUNDS round(s), interleaved" >&2
for r in $(seq "$ROUNDS"); do
	for size in 4k 1m; do
		for mode in plain tls; do
			for tgt in pmd nginx; do
				echo "  round $r $size $mode $tgt" >&2
				run_one "$tgt" "$size" "$mode"
			done
		done
	done
done


printf '\n%-6s %-4s %-6s %10s %8s %9s %9s %12s %7s\n' target size scheme "req/s" "MB/s" "p50 ms" "p99 ms" "cpu us/req" errors
for size in 4k 1m; do
	for mode in plain tls; do
		for tgt in pmd nginx; do
			k=$tgt,$size,$mode
			printf '%-6s %-4s %-6s %10s %8s %9s %9s %12s %7s\n' "$tgt" "$size" "$mode" "$(med <<<"${RPS[$k]}")" \
				"$(med <<<"${MBS[$k]}")" "$(lat_ms <<<"${P50[$k]}")" "$(lat_ms <<<"${P99[$k]}")" "$(med <<<"${CPU[$k]}")" "${ERR[$k]}"
		done
	done
done
echo
for size in 4k 1m; do
	for mode in plain tls; do
		p=$(med <<<"${RPS[pmd,$size,$mode]}"); n=$(med <<<"${RPS[nginx,$size,$mode]}")
		pc=$(med <<<"${CPU[pmd,$size,$mode]}"); nc=$(med <<<"${CPU[nginx,$size,$mode]}")
		awk -v s="$size $mode" -v p="$p" -v n="$n" -v pc="$pc" -v nc="$nc" 'BEGIN{
			printf "ratio %-9s req/s pmd/nginx %.2f   cpu/req pmd/nginx %.2f\n", s, p/n, pc/nc }'
	done
done

#!/usr/bin/env bash
# bench/acme.sh — time of one certificate issuance (two names, HTTP-01)
# against Pebble with its validation sleep off, for pmd and, when installed,
# Debian's lego, side by side. A benchmark, not a test: it prints figures.
#
#   bench/acme.sh            # 5 issuances each
#   RUNS=10 bench/acme.sh
#
# pmd's figure is taken from its own log: from leaving idle (the directory
# request) to "acme certificate issued", so process start-up is excluded;
# lego's is the wall time of `lego run`.
# Needs: pebble, pebble-challtestsrv, openssl, python3, build/pmd (lego optional).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
PMD=${PMD:-build/pmd}
. bench/lib.sh
bench_cap RUNS 50
bench_need pebble pebble-challtestsrv openssl python3

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

bench_tmp pmd-bench-acme
ACME=$(free_port); MGMT=$(free_port); DNS=$(free_port); CHM=$(free_port); HTTP=$(free_port)
bench_cert 1
cat > "$T/pebble.json" <<JSON
{"pebble": {"listenAddress": "127.0.0.1:$ACME", "managementListenAddress": "127.0.0.1:$MGMT",
 "certificate": "$T/cert.pem", "privateKey": "$T/key.pem", "httpPort": $HTTP,
 "tlsPort": $(free_port), "ocspResponderURL": "", "externalAccountBindingRequired": false}}
JSON
pebble-challtestsrv -management "127.0.0.1:$CHM" -dns01 "127.0.0.1:$DNS" -http01 "" -https01 "" \
	-tlsalpn01 "" -defaultIPv4 127.0.0.1 -defaultIPv6 "" >"$T/chall.log" 2>&1 &
PIDS+=($!)
PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 pebble -config "$T/pebble.json" \
	-dnsserver "127.0.0.1:$DNS" >"$T/pebble.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
	curl -sf --cacert "$T/cert.pem" "https://127.0.0.1:$ACME/dir" >/dev/null && break
	sleep 0.1
done
DIR=https://127.0.0.1:$ACME/dir

# ms between two logfmt timestamps of the pmd log
span_ms() {
	python3 - "$1" <<'PY'
import re, sys, datetime
log = open(sys.argv[1]).read()
def ts(pat):
    m = re.search(r'ts=(\S+) level=\w+ msg=' + pat, log)
    return datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ")
print(round((ts(r'"acme certificate issued"') - ts(r'"acme state" from=idle to=directory')).total_seconds() * 1000))
PY
}

pmd_times=()
for i in $(seq "$RUNS"); do
	d=$T/pmd$i
	mkdir -p "$d"
	cat > "$d/pmd.ini" <<INI
[pmd]
state_dir = $d/state
control_socket = $d/control.sock
control_group = root
[proxy]
http_listen = 127.0.0.1:$HTTP
https_listen = 127.0.0.1:$(free_port)
workers = 1
access_log = false
[tls]
mode = acme
domains = run$i.bench.test, www.run$i.bench.test
acme_directory = $DIR
acme_email = bench@bench.test
acme_ca_file = $T/cert.pem
INI
	"$PMD" run -c "$d/pmd.ini" >"$d/pmd.log" 2>&1 &
	pid=$!
	for _ in $(seq 300); do grep -q '"acme certificate issued"' "$d/pmd.log" && break; sleep 0.05; done
	kill "$pid"; wait "$pid" 2>/dev/null || true
	grep -q '"acme certificate issued"' "$d/pmd.log" || { echo "pmd run $i did not issue:" >&2; tail -5 "$d/pmd.log" >&2; exit 1; }
	pmd_times+=("$(span_ms "$d/pmd.log")")
done

lego_times=()
if command -v lego >/dev/null; then
	for i in $(seq "$RUNS"); do
		s=$(date +%s%N)
		LEGO_CA_CERTIFICATES=$T/cert.pem lego --server "$DIR" --email bench@bench.test --accept-tos \
			--path "$T/lego$i" --http --http.port "127.0.0.1:$HTTP" \
			-d "lego$i.bench.test" -d "www.lego$i.bench.test" run >"$T/lego$i.log" 2>&1 ||
			{ echo "lego run $i failed:" >&2; tail -5 "$T/lego$i.log" >&2; exit 1; }
		lego_times+=($(( ($(date +%s%N) - s) / 1000000 )))
	done
fi

summary() {
	python3 -c 'import sys, statistics as st; v=[int(x) for x in sys.argv[2:]]; print(f"{sys.argv[1]:<6} runs={len(v):<3} median={st.median(v):>7.0f} ms  min={min(v):>6} ms  max={max(v):>6} ms")' "$@"
}
echo "ACME issuance, two names, HTTP-01, Pebble (validation sleep off)"
summary pmd "${pmd_times[@]}"
if [ ${#lego_times[@]} -gt 0 ]; then summary lego "${lego_times[@]}"; else echo "lego   not installed"; fi

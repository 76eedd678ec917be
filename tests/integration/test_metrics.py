"""GET /metrics on the control socket: Prometheus text format 0.0.4 that
parses line by line, requests by route and status class after known
requests, the request duration histogram (cumulative buckets, +Inf ==
_count == requests of the route, a slow request in the right bucket),
in-flight requests while one waits on its upstream, connections, upstream
health by service/colour, swaps, restarts, certificate expiry."""
import re
import socket
import threading
import time

from pmdtest import http_request, wait_for
from test_tls_data import start

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"'
                    r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*\})? (-?[0-9.e+-]+|NaN|[+-]Inf)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"')


def parse(text):
    """{family: type}, [(name, {label: value}, float)]; asserts the format:
    every sample line well formed, after its family's # TYPE, families not
    split, histogram/counter suffixes on their family."""
    types, samples, done, current = {}, [], set(), None
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, fam, typ = line.split(" ", 3)
            assert typ in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert fam not in types, f"family typed twice: {fam}"
            if current:
                done.add(current)
            types[fam], current = typ, fam
            continue
        assert not line.startswith("#") and line, f"stray line {line!r}"
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name = m.group(1)
        fam = name
        if types.get(current) == "histogram":
            fam = re.sub(r"_(bucket|sum|count)$", "", name)
        assert fam == current and fam not in done, f"sample outside its family: {line!r}"
        labels = dict(LABEL.findall(m.group(2) or ""))
        samples.append((name, labels, float(m.group(3))))
    return types, samples


def get(samples, name, **labels):
    found = [v for n, l, v in samples if n == name and l == labels]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


def metrics(p):
    r = p.control("GET", "/metrics")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(r.text)


def check_histogram(samples, route):
    buckets = [(l["le"], v) for n, l, v in samples
               if n == "pmd_http_request_duration_seconds_bucket" and l["route"] == route]
    les = [le for le, _ in buckets]
    assert les[-1] == "+Inf"
    bounds = [float(le) for le in les[:-1]]
    assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds)
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), f"buckets of {route} not cumulative: {buckets}"
    count = get(samples, "pmd_http_request_duration_seconds_count", route=route)
    assert counts[-1] == count
    return dict(buckets), count, get(samples, "pmd_http_request_duration_seconds_sum", route=route)


def test_metrics_after_known_requests(pmd_factory, backend_server):
    release = threading.Event()

    def slow(rec):
        time.sleep(0.3)
        return 200, {"slow": True}

    def hang(rec):
        release.wait(20)
        return 200, {"hang": True}

    backend_server.routes["/api/fail"] = lambda rec: (500, {"error": "boom"})
    backend_server.routes["/api/missing"] = lambda rec: (404, {"error": "none"})
    backend_server.routes["/web/slow"] = slow
    backend_server.routes["/web/hang"] = hang
    p = start(pmd_factory, backend_server, routes=(("api", "/api/"), ("web", "/web/")))
    _, before = metrics(p)
    base = {(n, tuple(sorted(l.items()))): v for n, l, v in before}

    def delta(name, **labels):
        return get(samples, name, **labels) - base.get((name, tuple(sorted(labels.items()))), 0)

    for _ in range(5):
        assert http_request(p.http_port, "/api/ok").status == 200
    for _ in range(2):
        assert http_request(p.http_port, "/api/fail").status == 500
    assert http_request(p.http_port, "/api/missing").status == 404
    for _ in range(3):
        assert http_request(p.http_port, "/web/x").status == 200
    assert http_request(p.http_port, "/web/slow", timeout=10).status == 200
    assert http_request(p.http_port, "/elsewhere").status == 404      # no route
    with socket.create_connection(("127.0.0.1", p.http_port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")       # 400, before routing
        assert s.recv(100).startswith(b"HTTP/1.1 400")

    types, samples = metrics(p)
    assert types["pmd_http_requests_total"] == "counter"
    assert types["pmd_http_request_duration_seconds"] == "histogram"
    assert types["pmd_http_requests_in_flight"] == "gauge"
    assert delta("pmd_http_requests_total", route="api", code="2xx") == 5
    assert delta("pmd_http_requests_total", route="api", code="5xx") == 2
    assert delta("pmd_http_requests_total", route="api", code="4xx") == 1
    assert delta("pmd_http_requests_total", route="api", code="3xx") == 0
    assert delta("pmd_http_requests_total", route="web", code="2xx") == 4
    assert delta("pmd_http_requests_total", route="-", code="4xx") == 2
    for route, n in (("api", 8), ("web", 4), ("-", 2)):
        buckets, count, total = check_histogram(samples, route)
        per_code = sum(get(samples, "pmd_http_requests_total", route=route, code=f"{k}xx")
                       for k in range(1, 6))
        assert count == per_code
        assert delta("pmd_http_request_duration_seconds_count", route=route) == n
    buckets, count, total = check_histogram(samples, "web")
    # the slow request took >= 0.3 s: not in le=0.25, counted in +Inf and the sum
    assert buckets["0.25"] <= count - 1 and buckets["+Inf"] == count
    assert total >= 0.3
    assert get(samples, "pmd_http_requests_in_flight") == 0

    # one request waiting on its upstream is in flight, then it is not
    got = {}
    t = threading.Thread(target=lambda: got.setdefault(
        "r", http_request(p.http_port, "/web/hang", timeout=25)))
    t.start()
    try:
        wait_for(lambda: get(metrics(p)[1], "pmd_http_requests_in_flight") == 1, timeout=10,
                 what="in_flight 1")
        assert get(metrics(p)[1], "pmd_proxy_connections") >= 1
    finally:
        release.set()
        t.join(25)
    assert got["r"].status == 200
    wait_for(lambda: get(metrics(p)[1], "pmd_http_requests_in_flight") == 0, timeout=10,
             what="in_flight 0")

    _, samples = metrics(p)
    assert get(samples, "pmd_proxy_connections_total") >= 13
    assert get(samples, "pmd_service_up", service="backend", color="blue") == 1
    assert get(samples, "pmd_swaps_total", service="backend", result="ok") == 0
    assert get(samples, "pmd_restarts_total", service="backend") == 0
    expiry = [v for n, l, v in samples if n == "pmd_certificate_expiry_timestamp_seconds"]
    assert expiry and all(v > time.time() for v in expiry)

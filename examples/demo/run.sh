#!/usr/bin/env bash
# `make demo`: run pmd in the foreground on conf/demo.ini (from the
# repository root, so the config's relative paths resolve), state and
# control socket under build/demo. Ctrl-C stops it and its two services.
set -euo pipefail
cd "$(dirname "$0")/../.."

build=${PMD_BUILD:-build}
mkdir -p build/demo
if [ ! -x "$build/pmd" ]; then
	echo "demo: $build/pmd is not built; run: make demo" >&2
	exit 1
fi
"$build/pmd" check -c conf/demo.ini

cat <<MSG
demo: pmd is starting on http://127.0.0.1:8080 and https://127.0.0.1:8443
(self-signed certificate; Ctrl-C stops it). Try:
  curl -i http://127.0.0.1:8080/api/v1/health/
  curl -ik https://127.0.0.1:8443/api/v1/hello     (HTTPS, HSTS header)
  curl http://127.0.0.1:8080/api/v1/hello
  curl http://127.0.0.1:8080/api/v1/time
  curl http://127.0.0.1:8080/env-config.js        (served by pmd itself)
  open http://127.0.0.1:8080/ in a browser          (the frontend)
  $build/pmctl -s build/demo/control.sock status
  $build/pmctl -s build/demo/control.sock logs backend --tail 20
  curl --unix-socket build/demo/control.sock http://pmd/status
  kill the backend process and watch pmd restart it (restarts in status)
MSG
exec "$build/pmd" run -c conf/demo.ini

#!/usr/bin/env bash
# Build the integration tests' images offline and push them to the test
# registry. Needs DOCKER_HOST (our dockerd), DOCKER_CONFIG (registry login)
# and PMD_TEST_REGISTRY. Prints `export NAME=IMAGE` lines on stdout.
#
#   frontend   busybox-static httpd serving /www on 127.0.0.1:$PORT (every
#              busybox applet on PATH); also tagged pmdtest-busybox:1 locally
#              only (PMD_TEST_DOCKER_IMAGE)
#              /www/version.txt says "frontend 1"; :2 is the same with "frontend 2"
#   backend    Debian's python3 + gunicorn running app.py on 127.0.0.1:$PORT;
#              :1 (APP_VERSION=1), :2 (APP_VERSION=2), :broken (health 503)
#   zd         the same rootfs running zdapp.py (streaming, WebSocket echo;
#              for the zero-downtime tests): :1, :2, :unhealthy (health 500),
#              :crash (exits at start), :relfail (release command exits 1)
#
# The rootfs are made from files of this host (no network): busybox-static
# for a shell, and for the backend python3, its standard library, the
# gunicorn package and the shared libraries ldd names.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
: "${PMD_TEST_REGISTRY:?}" "${DOCKER_HOST:?}"
reg=$PMD_TEST_REGISTRY/pmd-test
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Copy files into the rootfs under their canonical folders (the host is
# merged-/usr: /lib -> usr/lib), keeping symlinks and the files they name.
put() {
	local f paths=()
	for f in "$@"; do
		paths+=("$(readlink -f "$(dirname "$f")")/$(basename "$f")" "$(readlink -f "$f")")
	done
	tar -C / -cf - "${paths[@]#/}" | tar -C "$root" -xf -
}

# A merged-/usr skeleton with busybox as /bin/sh.
skeleton() {
	mkdir -p "$root/usr/bin" "$root/usr/lib" "$root/usr/lib64" "$root/tmp"
	chmod 1777 "$root/tmp"
	ln -s usr/bin "$root/bin"
	ln -s usr/lib "$root/lib"
	ln -s usr/lib64 "$root/lib64"
	cp /bin/busybox "$root/usr/bin/busybox"
	local a
	for a in $(/bin/busybox --list); do
		[ -e "$root/usr/bin/$a" ] || ln -s busybox "$root/usr/bin/$a"
	done
}

# ---- frontend -------------------------------------------------------------
root=$work/frontend
skeleton
mkdir -p "$root/www"
cp "$here/index.html" "$root/www/index.html"
echo 'window.ENV = {"source": "image"};' >"$root/www/env-config.js"
for v in 1 2; do
	echo "frontend $v" >"$root/www/version.txt"
	tar -C "$root" -cf "$work/frontend.tar" .
	# httpd as PID 1 would ignore SIGTERM (no handler): the shell stays PID 1
	# and exits on it, so `docker stop` is quick.
	# shellcheck disable=SC2016 # ${PORT} is expanded by the container's shell
	docker import \
		-c 'ENV PORT=80' \
		-c 'CMD ["/bin/sh", "-c", "trap \"exit 0\" TERM INT; /bin/busybox httpd -f -p 127.0.0.1:${PORT} -h /www & wait"]' \
		"$work/frontend.tar" "$reg/frontend:$v" >/dev/null
done

# ---- backend --------------------------------------------------------------
root=$work/backend
skeleton
mkdir -p "$root/app"
cp "$here/app.py" "$here/zdapp.py" "$root/app/"
py=$(readlink -f /usr/bin/python3)
pyver=$(/usr/bin/python3 -c 'import sys; print("python%d.%d" % sys.version_info[:2])')
put /usr/bin/python3
# The standard library without its tests, idle and tkinter.
tar -C / -cf - --exclude="usr/lib/$pyver/test" --exclude="usr/lib/$pyver/idlelib" \
	--exclude="usr/lib/$pyver/tkinter" --exclude="usr/lib/$pyver/ensurepip" \
	--exclude="usr/lib/$pyver/lib2to3" --exclude='*/__pycache__/*.opt-*.pyc' \
	"usr/lib/$pyver" | tar -C "$root" -xf -
dp=/usr/lib/python3/dist-packages
put $dp/gunicorn $dp/gunicorn-*.egg-info $dp/pkg_resources
# Shared libraries of the interpreter and its extension modules.
for lib in $( { ldd "$py"; find "/usr/lib/$pyver/lib-dynload" -name '*.so' -exec ldd {} \; ; } 2>/dev/null |
	awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u); do
	put "$lib"
done
tar -C "$root" -cf "$work/backend.tar" .
# shellcheck disable=SC2016 # ${PORT} is expanded by the container's shell
cmd='CMD ["/bin/sh", "-c", "exec /usr/bin/python3 -m gunicorn --bind 127.0.0.1:${PORT} --workers 2 --chdir /app --access-logfile - app:app"]'
docker import -c 'ENV PORT=8000' -c 'ENV APP_VERSION=1' -c "$cmd" \
	"$work/backend.tar" "$reg/backend:1" >/dev/null
docker import -c 'ENV PORT=8000' -c 'ENV APP_VERSION=2' -c "$cmd" \
	"$work/backend.tar" "$reg/backend:2" >/dev/null
docker import -c 'ENV PORT=8000' -c 'ENV APP_VERSION=broken' -c 'ENV APP_HEALTHY=0' -c "$cmd" \
	"$work/backend.tar" "$reg/backend:broken" >/dev/null

zd='CMD ["/usr/bin/python3", "/app/zdapp.py"]'
for v in 1 2; do
	docker import -c 'ENV PORT=8000' -c "ENV APP_VERSION=$v" -c "$zd" \
		"$work/backend.tar" "$reg/zd:$v" >/dev/null
done
docker import -c 'ENV PORT=8000' -c 'ENV APP_VERSION=unhealthy' -c 'ENV APP_HEALTH_STATUS=500' \
	-c "$zd" "$work/backend.tar" "$reg/zd:unhealthy" >/dev/null
docker import -c 'ENV PORT=8000' -c 'ENV APP_VERSION=crash' -c 'ENV APP_CRASH=1' \
	-c "$zd" "$work/backend.tar" "$reg/zd:crash" >/dev/null
docker import -c 'ENV PORT=8000' -c 'ENV APP_VERSION=relfail' -c 'ENV APP_RELEASE_EXIT=1' \
	-c "$zd" "$work/backend.tar" "$reg/zd:relfail" >/dev/null

# A local-only busybox image (never pushed: no pull needed) for the docker
# runtime's live unit test.
docker tag "$reg/frontend:1" pmdtest-busybox:1

# Push, then drop the local copies so that pmd's pulls go to the registry.
for img in frontend:1 frontend:2 backend:1 backend:2 backend:broken \
	zd:1 zd:2 zd:unhealthy zd:crash zd:relfail; do
	docker push -q "$reg/$img" >/dev/null
	docker rmi "$reg/$img" >/dev/null
done

echo "export PMD_TEST_DOCKER_IMAGE=pmdtest-busybox:1"
echo "export PMD_TEST_IMAGE_FRONTEND=$reg/frontend:1"
echo "export PMD_TEST_IMAGE_FRONTEND_V2=$reg/frontend:2"
echo "export PMD_TEST_IMAGE_ZD=$reg/zd"
echo "export PMD_TEST_IMAGE_BACKEND=$reg/backend:1"
echo "export PMD_TEST_IMAGE_BACKEND_V2=$reg/backend:2"
echo "export PMD_TEST_IMAGE_BACKEND_BROKEN=$reg/backend:broken"

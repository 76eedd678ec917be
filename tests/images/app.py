"""The test backend image's WSGI app (run by gunicorn inside the image).

/api/v1/health/  200 {"ok": true, "version": APP_VERSION}, or 503 when
                 APP_HEALTHY=0 (the "broken" image, for failed health gates)
/api/v1/version  {"version": APP_VERSION}
/api/v1/env      the environment, for tests of env/env_file/required_env
anything else    200 {"path": ..., "version": ...}
"""
import json
import os


def app(environ, start_response):
    version = os.environ.get("APP_VERSION", "0")
    path = environ.get("PATH_INFO", "/")
    status = "200 OK"
    if path == "/api/v1/health/":
        if os.environ.get("APP_HEALTHY", "1") == "0":
            status, doc = "503 Service Unavailable", {"ok": False, "version": version}
        else:
            doc = {"ok": True, "version": version}
    elif path == "/api/v1/version":
        doc = {"version": version}
    elif path == "/api/v1/env":
        doc = dict(os.environ)
    else:
        doc = {"path": path, "version": version}
    body = json.dumps(doc).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]

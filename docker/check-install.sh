#!/usr/bin/env bash
# Without a Docker engine (as on the dev machines), check what the image does:
# the Dockerfile's install commands in a plain venv (the same pins: docker/requirements.lock),
# then the service starts from that install and answers /healthz, the status page, the
# offline docs and their assets (package data that only a non-editable install can lose).
# The CUDA build of torch is swapped for the CPU one (the same version family; the CUDA
# wheel is several GB). tests/test_packaging.py runs this script.
set -euo pipefail
cd "$(dirname "$0")/.."
# The image installs bubblewrap with apt-get (the build jail); so does this check.
if ! command -v bwrap >/dev/null; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends bubblewrap
fi
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
venv=$work/venv
python3 -m venv "$venv"
"$venv/bin/pip" install -q -c docker/requirements.lock --upgrade pip
"$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q -c docker/requirements.lock ".[service]" "triton==3.6.0" "numpy<2.4"
"$venv/bin/pip" check >/dev/null
port=$("$venv/bin/python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
mkdir "$work/data"
cd "$work/data"
FLEXSN_SERVICE_STORE=disk:$work/data/store FLEXSN_SERVICE_PORT=$port "$venv/bin/flexsn-cache" serve &
pid=$!
for _ in $(seq 90); do
  if "$venv/bin/python" - "$port" <<'PY' 2>/dev/null
import sys, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
def get(path):
    with urllib.request.urlopen(base + path, timeout=5) as answer:
        return answer.read().decode(errors="replace")
get("/healthz")
assert "Hit rate" in get("/")                            # the status page's template is installed
assert "swagger-ui-bundle.js" in get("/docs")
assert len(get("/docs-assets/swagger-ui-bundle.js")) > 100_000  # fastapi-offline's assets
assert '"codegen"' in get("/v1/version")
PY
  then
    echo "image install check: ok (pinned install; the jail's self test passed; /healthz, /, /docs and its assets answered)"
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then break; fi
  sleep 1
done
echo "image install check: the service did not come up" >&2
exit 1

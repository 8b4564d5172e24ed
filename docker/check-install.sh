#!/usr/bin/env bash
# Without a Docker engine (as on the dev machines), check what the image does:
# the Dockerfile's install commands in a plain venv, then the service starts
# and answers /healthz. The CUDA build of torch is swapped for the CPU one
# (the same version family; the CUDA wheel is several GB).
set -euo pipefail
cd "$(dirname "$0")/.."
# The image installs bubblewrap with apt-get (the build jail); so does this check.
if ! command -v bwrap >/dev/null; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends bubblewrap
fi
venv=$(mktemp -d)/venv
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q ".[service]" "triton==3.6.0" "numpy<2.4"
data=$(mktemp -d)
cd "$data"
FLEXSN_SERVICE_STORE=disk:$data/store "$venv/bin/flexsn-cache" serve --port 18765 &
pid=$!
trap 'kill $pid' EXIT
for _ in $(seq 60); do
  if "$venv/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:18765/healthz', timeout=2)" 2>/dev/null; then
    echo "image install check: ok (the jail's self test passed and the service answered /healthz)"
    exit 0
  fi
  sleep 1
done
echo "image install check: the service did not come up" >&2
exit 1

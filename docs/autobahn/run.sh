#!/usr/bin/env bash
# Run Autobahn|Testsuite's fuzzingclient (the server cases) against chatroom's WebSocket.
#
#   docs/autobahn/run.sh [PYTHON2]      (from the repository root, after scripts/_setup.sh)
#
# Autobahn|Testsuite is Python 2.7 software (PyPI `autobahntestsuite`, Twisted 19,
# autobahn 0.10.9); PYTHON2 is a Python 2.7 interpreter with pip (default: python2.7).
# It is installed once into $WORK/site. The testee (testee.py) is the real server
# echoing; the reports land in $WORK/reports, and index.json is copied next to this file.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python2="${1:-python2.7}"
work="${AUTOBAHN_WORK:-/tmp/chatroom-autobahn}"
mkdir -p "$work"

if [ ! -e "$work/site/autobahntestsuite/__init__.py" ]; then
    "$python2" -m pip install --no-cache-dir --target "$work/site" autobahntestsuite==25.10.1
fi

port="$("$root/.venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
rm -f "$work/cookie"
"$root/.venv/bin/python" "$here/testee.py" "$port" "$work/cookie" > "$work/testee.log" 2>&1 &
testee=$!
trap 'kill "$testee" 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -s "$work/cookie" ] && break; sleep 0.2; done
[ -s "$work/cookie" ] || { cat "$work/testee.log"; exit 1; }

# 9.* (performance: messages up to 16 MiB) is left out: past 16 KiB chatroom closes 1009
# by design, as 1.1.6-1.1.8 and 10.1.1 show; 12.* and 13.* need permessage-deflate,
# which chatroom does not offer.
sed -e "s|@PORT@|$port|g" -e "s|@COOKIE@|$(cat "$work/cookie")|g" -e "s|@OUTDIR@|$work/reports|g" \
    "$here/fuzzingclient.json" > "$work/fuzzingclient.json"
"$python2" "$here/wstest_with_cookie.py" "$work/site" -m fuzzingclient -s "$work/fuzzingclient.json"
# kept beside this file: the summary, and the full record of every case not plainly OK
cp "$work/reports/index.json" "$here/index.json"
rm -rf "$here/cases" && mkdir "$here/cases"
"$root/.venv/bin/python" - "$work/reports" "$here/cases" <<'PY'
import json, shutil, sys
reports, cases = sys.argv[1:]
for case in json.load(open(f"{reports}/index.json"))["chatroom"].values():
    if (case["behavior"], case["behaviorClose"]) != ("OK", "OK"):
        shutil.copy(f"{reports}/{case['reportfile']}", cases)
PY
echo "report: $work/reports/index.html (summary and cases not OK copied to $here)"

# Python 2.7: Autobahn|Testsuite's wstest, whose fuzzingclient also sends the HTTP
# headers a spec's server entry lists under "headers" (chatroom needs its session cookie).
#
#   python2.7 wstest_with_cookie.py SITE_DIR -m fuzzingclient -s fuzzingclient.json
#
# SITE_DIR is where `pip install --target SITE_DIR autobahntestsuite` put it.
import site
import sys

site.addsitedir(sys.argv.pop(1))

from autobahntestsuite import fuzzing
from autobahntestsuite.wstest import run

_next_server = fuzzing.FuzzingClientFactory.nextServer


def next_server(self):
    more = _next_server(self)
    if more:
        self.headers = self.spec["servers"][self.currServer].get("headers", {})
    return more


fuzzing.FuzzingClientFactory.nextServer = next_server
sys.exit(run())

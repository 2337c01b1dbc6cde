"""`chatroom serve` with a presence TTL the command line does not offer (tests only).

The cluster tests run real nodes with `python -m chatroom serve`. Only the test that
SIGKILLs a node needs its members to expire in seconds rather than the default 30,
and no flag sets Settings.presence_ttl: this runs the very same serving code with
that one setting replaced, taken from CHATROOM_TEST_PRESENCE_TTL.

    python tests/cluster/_node.py serve --host ... --port ... --backend ... --secret ...
"""

from __future__ import annotations

import dataclasses
import os
import sys

from chatroom import cli


def main() -> int:
    args = cli.build_parser().parse_args(sys.argv[1:])
    settings = cli.settings_from(args)
    ttl = os.environ.get("CHATROOM_TEST_PRESENCE_TTL")
    if ttl:
        settings = dataclasses.replace(settings, presence_ttl=float(ttl))
    cli._run_one(settings, False, str(args.log_level))
    return 0


if __name__ == "__main__":
    sys.exit(main())

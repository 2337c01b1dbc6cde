"""The soak: hundreds of clients on every technique, faults injected, a ledger checked.

Run it with `python -m tests.soak` (see tests/soak/run.py); tests/soak/test_soak.py
runs its short mode.
"""

"""`python -m bench [scenario...]`: performance scenarios, reported beside baselines.

Each scenario measures on loopback against the stack of AGORA_PROFILE (dev or
test), starting the processes it needs, and returns tables of percentiles; the
runner writes them to reports/bench-<timestamp>.md and .json.
"""

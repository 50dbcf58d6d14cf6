"""One hypothesis profile for the property tests: reproducible in CI, bounded in time.

`derandomize` makes every run draw the same examples (a failure in CI is a failure
on a laptop), `database=None` keeps no example store in the work tree, and no
per-example deadline: two shared cores make timings meaningless.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

PROPERTY = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# For properties whose every example costs a database round trip or more.
SLOW_PROPERTY = settings(PROPERTY, max_examples=40)

"""SIGKILL at random points, then --resume, for all seven methods and `haq compare`
(issue 12): no duplicate or missing trial beyond the one in flight, nothing written before
the kill lost, and the identical final policy. 2 kill points per method here; 10 with
``HAQ_FUZZ=full`` (benchmarks/reliability.py prints the table)."""

from __future__ import annotations

import os
import random

import pytest

from tests.kill_resume import COMMANDS, kill_and_resume, reference

KILLS = 10 if os.environ.get("HAQ_FUZZ", "") == "full" else 2


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_search_killed_at_random_points_resumes_to_the_identical_result(tmp_path, name):
    ref = reference(name, tmp_path)
    rng = random.Random(f"{name}-kills")
    for k in range(KILLS):
        o = kill_and_resume(ref, tmp_path, rng, k)
        assert o.resumed, (k, o.detail)
        assert o.rows_lost == 0, (k, o)
        assert o.identical, (k, o.detail)

"""The benchmark's scenarios when wrk itself dies: the run is made again and the row says so."""

from __future__ import annotations

import pytest

from bench.scenarios import Row, _again_if_wrk_crashed
from bench.wrk import WrkCrashed


class FakeTarget:
    def __init__(self) -> None:
        self.settled = 0

    def settle(self) -> None:
        self.settled += 1


def test_a_run_wrk_died_in_is_made_once_more_and_the_row_says_so():
    runs = []

    @_again_if_wrk_crashed
    def scenario(target, seconds):
        runs.append(seconds)
        if len(runs) == 1:
            raise WrkCrashed("wrk died of signal 11 (checkout)")
        return Row(scenario="checkout", system="app", notes="p99 reserve 12.0 ms")

    target = FakeTarget()
    row = scenario(target, 10)
    assert runs == [10, 10] and target.settled == 1
    assert row.notes == "run again: wrk crashed in the first run; p99 reserve 12.0 ms"


def test_a_second_crash_is_not_hidden():
    @_again_if_wrk_crashed
    def scenario(target):
        raise WrkCrashed("wrk died of signal 11 (checkout)")

    with pytest.raises(WrkCrashed):
        scenario(FakeTarget())

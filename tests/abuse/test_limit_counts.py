"""The shared count table by itself: two views of one file stand for two acceptor processes."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from appliance.abuse.counts import CONNECTIONS, MESSAGES, CountTable
from appliance.abuse.limits import IP, NETWORK, key_of

WINDOW = 60.0
A = key_of(bytes([192, 0, 2, 1]), IP, 32)
B = key_of(bytes([192, 0, 2, 2]), IP, 32)
NET = key_of(bytes([192, 0, 2, 0]), NETWORK, 24)


def two_processes(tmp_path: Path, slots: int = 4096) -> tuple[CountTable, CountTable]:
    path = tmp_path / "smtp-limits"
    CountTable.allocate(path, 2, slots)
    return CountTable.shared(path, 2, 0), CountTable.shared(path, 2, 1)


def test_sessions_and_rates_are_summed_over_every_process(tmp_path: Path) -> None:
    first, second = two_processes(tmp_path)
    assert first.hit(A, CONNECTIONS, 10.0, WINDOW) == (0, 1.0)
    first.add_session(A, 1)
    assert second.hit(A, CONNECTIONS, 11.0, WINDOW) == (1, 2.0)
    second.add_session(A, 1)
    assert first.totals(A, CONNECTIONS, 12.0, WINDOW) == (2, 2.0)
    assert first.totals(B, CONNECTIONS, 12.0, WINDOW) == (0, 0.0)
    assert first.totals(A, MESSAGES, 12.0, WINDOW) == (2, 0.0)
    second.add_session(A, -1)
    assert first.totals(A, CONNECTIONS, 13.0, WINDOW)[0] == 1


def test_the_rate_slides_over_the_window_before(tmp_path: Path) -> None:
    first, _ = two_processes(tmp_path)
    for _ in range(6):
        first.hit(A, MESSAGES, 50.0, WINDOW)  # window 0
    # 15 s into window 1: three quarters of window 0's six still count, and the new one.
    assert first.hit(A, MESSAGES, 75.0, WINDOW) == (0, 1 + 6 * 0.75)
    assert first.totals(A, MESSAGES, 119.0, WINDOW)[1] > 1.0
    assert first.totals(A, MESSAGES, 120.0, WINDOW)[1] == 1.0  # window 2: only window 1's one, at full weight
    assert first.totals(A, MESSAGES, 180.0, WINDOW)[1] == 0.0


def test_a_cleared_region_counts_nothing(tmp_path: Path) -> None:
    first, second = two_processes(tmp_path)
    second.hit(A, CONNECTIONS, 1.0, WINDOW)
    second.add_session(A, 1)
    assert first.totals(A, CONNECTIONS, 2.0, WINDOW) == (1, 1.0)
    CountTable.clear(tmp_path / "smtp-limits", 2, 1)  # its process died
    assert first.totals(A, CONNECTIONS, 2.0, WINDOW) == (0, 0.0)
    replacement = CountTable.shared(tmp_path / "smtp-limits", 2, 1)
    assert replacement.hit(A, CONNECTIONS, 3.0, WINDOW) == (0, 1.0)


def test_a_full_neighbourhood_refuses_new_keys_but_reuses_stale_ones(tmp_path: Path) -> None:
    """Keys that hash near each other fill the probe window; one with a session is never evicted, one whose
    counts are two windows old is reused."""
    table = CountTable.private(1)  # one slot: every key lands on it
    assert table.hit(A, CONNECTIONS, 1.0, WINDOW) is not None
    table.add_session(A, 1)
    assert table.hit(B, CONNECTIONS, 200.0, WINDOW) is None  # A holds a session
    table.add_session(A, -1)
    assert table.hit(B, CONNECTIONS, 61.0, WINDOW) is None  # A's counts still count in window 1
    assert table.hit(B, CONNECTIONS, 200.0, WINDOW) == (0, 1.0)
    assert table.totals(A, CONNECTIONS, 200.0, WINDOW) == (0, 0.0)


Operation = st.tuples(st.integers(0, 1), st.sampled_from([A, B, NET]), st.sampled_from([1, -1]))


@given(st.lists(Operation, max_size=60))
def test_the_sessions_seen_are_what_the_processes_hold(tmp_path_factory, operations) -> None:
    views = two_processes(tmp_path_factory.mktemp("counts"), slots=8)
    held: dict[tuple[int, bytes], int] = {}
    for process, key, delta in operations:
        views[process].hit(key, CONNECTIONS, 5.0, WINDOW)
        views[process].add_session(key, delta)
        held[process, key] = max(0, held.get((process, key), 0) + delta)
    for key in (A, B, NET):
        expected = sum(count for (_, k), count in held.items() if k == key)
        assert views[0].totals(key, CONNECTIONS, 5.0, WINDOW)[0] == expected
        assert views[1].totals(key, CONNECTIONS, 5.0, WINDOW)[0] == expected

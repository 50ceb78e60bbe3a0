"""The soak's (``bench/soak.py``) read-back arithmetic on made-up posts and rows: lost,
duplicated, unacknowledged and recovered turns are counted. The soak run itself:
tests/ops/test_soak.py."""

from __future__ import annotations

from bench.soak import (
    Fault,
    Post,
    Row,
    analyse,
    failures,
)


def _row(tag: str, tid: str, status: str = "succeeded", finished: float | None = 10.0) -> Row:
    return Row(tid, tag, status, 8, 1, finished, 1000, 8 * 32 * 2, 32)


def test_read_back_counts_lost_duplicated_unacknowledged_and_recovery() -> None:
    posts = [
        Post("c0-t0", "a", sent=1.0, outcome="accepted", turn_id="t0"),  # done before the fault
        Post("c0-t1", "a", sent=4.0, outcome="accepted", turn_id="t1"),  # in flight at 5
        Post("c0-t2", "a", sent=6.0, outcome="unacknowledged"),  # stored anyway
        Post("c0-t3", "a", sent=7.0, outcome="accepted", turn_id="t3"),  # first new one done
        Post("c1-t0", "b", sent=8.0, outcome="accepted", turn_id="u0"),  # stored twice
        Post("c1-t1", "b", sent=9.0, outcome="accepted", turn_id="u1"),  # never finished: lost
        Post("c1-t2", "b", sent=9.5, outcome="rejected"),
    ]
    rows = [
        _row("c0-t0", "t0", finished=2.0),
        _row("c0-t1", "t1", finished=12.0),
        _row("c0-t2", "t2", finished=11.0),
        _row("c0-t3", "t3", finished=9.0),
        _row("c1-t0", "u0", finished=10.0),
        _row("c1-t0", "u0b", finished=10.5),
        _row("c1-t1", "u1", status="queued", finished=None),
    ]
    faults = [Fault("worker-kill", at=5.0), Fault("api-kill", at=9.2)]
    result = analyse(posts, rows, faults)
    t = result["turns"]
    assert (t["posted"], t["accepted"], t["completed"], t["lost"]) == (7, 5, 4, 1)
    assert (t["duplicated"], t["damaged"], t["rejected"], t["rejected_but_stored"]) == (1, 0, 1, 0)
    assert (t["unacknowledged"], t["unacknowledged_stored"]) == (1, 1)
    assert result["lost_tags"] == ["c1-t1"]
    # Fault at 5: the first turn posted after it succeeded at 9 (4 s); the one in flight at it
    # finished at 12 (7 s): recovered in 7 s.
    kill = result["faults"][0]
    assert kill["recovered"] and kill["in_flight"] == 1
    assert (kill["new_turn_s"], kill["in_flight_s"], kill["recover_s"]) == (4.0, 7.0, 7.0)
    # Fault at 9.2: a turn in flight at it never finished, and nothing posted after it did.
    assert not result["faults"][1]["recovered"]
    assert result["by_kind"]["worker-kill"]["recover_s"] == {"median": 7.0, "worst": 7.0}
    assert result["by_kind"]["api-kill"]["recovered"] == 0
    result["ready_at_end"] = result["parley_up_alive_at_end"] = True
    assert failures(result) == [
        "1 lost",
        "1 duplicated",
        "faults not recovered from: {'api-kill': 1}",
    ]
    # A succeeded turn whose codes are two attempts' is damaged.
    twice = _row("c0-t0", "t0")
    twice.codes_bytes = 2 * 8 * 32 * 2
    assert analyse(posts[:1], [twice], [])["turns"]["damaged"] == 1

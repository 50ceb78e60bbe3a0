"""The soak (``bench/soak.py``): a short real run with every fault kind in turn (worker killed,
worker frozen, Redis killed and restarted empty and with its data, API killed): nothing lost,
nothing duplicated, every fault recovered from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.soak import (
    KINDS,
    SoakConfig,
    failures,
    soak,
)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_soak_loses_nothing_and_recovers_from_every_fault(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = SoakConfig(
        minutes=0.9,
        fault_every_s=6.0,
        seed=7,
        round_robin=True,
        conversations=3,
        quiet_s=12.0,
        drain_s=90.0,
        model=str(tiny_model_dir),
    )
    result = soak(config)
    (tmp_path / "soak.json").write_text(json.dumps(result, indent=2))
    about = f"logs in {result['logs']}; faults {result['faults']}"
    assert result["model"].startswith("tiny random test checkpoint")
    t = result["turns"]
    assert t["accepted"] > 0 and t["completed"] > 0, t
    assert t["lost"] == 0, f"{t}; lost {result['lost_tags']}; {about}"
    assert t["duplicated"] == 0 and t["damaged"] == 0 and t["untagged_rows"] == 0, t
    # Round-robin over five kinds, a fault every 6 s for 42 s: each kind at least once.
    assert set(result["by_kind"]) == set(KINDS), about
    for kind, k in result["by_kind"].items():
        assert k["injected"] == k["count"] >= 1, (kind, k, about)
        assert k["recovered"] == k["count"], (kind, k, about)
    assert result["ready_at_end"], about
    assert failures(result) == []

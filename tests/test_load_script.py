"""`bench/load.py --quick` end to end: the load test's scenarios (flood, burst, slowloris,
disconnect) against two live `infire serve` processes on the CPU, so the script cannot rot.
Asserts its invariants from the figures it writes (limits held, nothing lost, normal clients
served, the engine drained); never its timings, which belong to bench/RESULTS.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "load.py"


def test_quick_load_run_keeps_every_invariant(default_model_path, tmp_path):
    out = tmp_path / "load.json"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--model", default_model_path]
    run = subprocess.run(
        [*cmd, "--out", str(out)], capture_output=True, text=True, timeout=300, check=False
    )
    assert out.exists(), run.stdout + run.stderr
    r = json.loads(out.read_text())

    flood, burst = r["flood"], r["burst"]
    assert flood["huge_statuses"] == [400]
    assert not flood["other_statuses"]
    assert flood["admitted"] + flood["refused_429"] == flood["small_requests"]
    assert flood["refused_429"] > 0, "the flood must go past max-waiting"
    assert flood["admitted"] <= flood["max_waiting"] + flood["max_num_seqs"]
    assert flood["max_waiting_seen"] <= flood["max_waiting"]
    assert flood["admitted_complete"]
    assert flood["normal"]["served"]

    assert burst["lost"] == 0 and not burst["errors"]
    assert burst["refused_429"] > 0, "the burst must go past max-waiting"
    assert burst["admitted"] <= burst["max_waiting"] + burst["max_num_seqs"]
    assert burst["max_waiting_seen"] <= burst["max_waiting"]
    assert burst["refused_with_retry_after"] == burst["refused_429"]
    assert burst["admitted_complete"]

    slow = r["slowloris"]
    assert all(kind["all_cut"] for kind in slow["by_kind"].values()), slow["by_kind"]
    assert slow["by_kind"]["body"]["statuses"] == [408]
    assert slow["over_limit_statuses"] == [503]
    assert slow["normal"]["served"]

    gone = r["disconnect"]
    assert gone["vanishing_got_events"]
    assert gone["aborted_within_ms"] is not None, "vanished streams were never aborted"
    assert gone["keepers_complete"]

    for scenario in ("flood", "burst", "disconnect"):
        after = r[scenario]["after"]
        assert after["drained"], (scenario, after)
        assert after["running"] == after["waiting"] == after["kv_blocks_used"] == 0

    assert all(r["invariants"].values()), r["invariants"]
    assert run.returncode == 0, run.stdout + run.stderr

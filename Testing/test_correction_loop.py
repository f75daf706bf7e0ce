"""benchmarks/correction_loop.py --quick: the correction loop runs end to end (real phantoms, real training, fine-tuning
and prediction) and its JSON line holds every round, every arm and seed, with finite Dice in [0, 1]."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "correction_loop.py"
ARMS = {"finetune", "scratch", "finetune_long"}


def _dice_ok(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0


@pytest.mark.slow
def test_quick_correction_loop_reports_every_round_arm_and_seed(tmp_path):
    out = tmp_path / "result.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, "stdout must hold only the JSON line"          # progress goes to stderr
    result = json.loads(lines[0])
    assert result == json.loads(out.read_text())
    assert result["quick"] is True and result["seeds"] == [0, 1]
    schedules = result["schedules"]
    # the fine-tune arm: the shipped defaults scaled as the scratch run is (a quarter of its epochs, a tenth of its lr)
    assert schedules["finetune"]["epochs"] == max(1, round(schedules["scratch"]["epochs"] * 25 / 100))
    assert schedules["finetune"]["lr"] == pytest.approx(schedules["scratch"]["lr"] / 10)
    assert [r["round"] for r in result["rounds"]] == [0, 1, 2]
    assert set(result["rounds"][0]["arms"]) == {"scratch"}
    for entry in result["rounds"]:
        arms = entry["arms"] if entry["round"] == 0 else ARMS
        assert set(entry["arms"]) == set(arms)
        for arm in arms:
            summary = entry["arms"][arm]
            assert len(summary["seconds"]) == 2 and all(s > 0 for s in summary["seconds"])
            parts = ["held_out"] + (["before_correction"] if entry["round"] > 0 else [])
            for part in parts:
                for cls in ("rectum", "tumour"):
                    assert len(summary[part][cls]["seeds"]) == 2
                    assert all(_dice_ok(v) for v in summary[part][cls]["seeds"]), (entry["round"], arm, part)
                    assert _dice_ok(summary[part][cls]["mean"])
        if entry["round"] > 0:
            assert set(entry["verdict"]) == {"finetune", "finetune_long"}
            assert all(v["time_ratio"] > 0 for v in entry["verdict"].values())
    for seed in ("0", "1"):
        records = result["per_seed"][seed]
        assert [r["cases"] for r in records] == [3, 5, 7]                  # N, then k new cases per round
        assert records[1]["new_cases"] != records[2]["new_cases"]
        held = set(result["held_out"])
        assert not held & {c for r in records[1:] for c in r["new_cases"]}  # held-out cases never trained on

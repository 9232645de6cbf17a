"""The benchmark stays runnable: a quick run end to end, judged on correctness, never on speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_quick_bench_runs_and_every_byte_arrives(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--scenarios", "ttft-1,relay-8", "--no-chart", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    names = [s["scenario"]["name"] for s in results["scenarios"]]
    assert names == ["ttft-1", "relay-8"]
    for scenario in results["scenarios"]:
        for side in ("direct", "gateway"):
            overall = scenario[side]["overall"]
            assert overall["errors"] == 0, (scenario["scenario"]["name"], side, overall)
            assert overall["exact"] == overall["requests"] > 0
    assert (out / "results.md").read_text().startswith("# ds2a streaming bench")

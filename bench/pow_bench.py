"""Proof-of-work benchmark: how long a full scan of a 144000-difficulty challenge takes.

    python bench/pow_bench.py [--json PATH] [--repeat N]

Times two worst cases, a challenge whose answer is the last in range (143999) and
one with no answer in range, through the public ``ds2a.deepseek.pow.solve`` with
the kernel picked for this CPU, then each kernel the CPU supports, then the
pure-Python hash over a short sample. The target is a full scan in <= 40 ms on
one core (DeepSeek's own wasm solver takes about 76 ms).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ds2a.deepseek import pow as pow_mod
from ds2a.deepseek.pow import Challenge, PowError, py_deepseek_hash_v1

DIFFICULTY = 144_000
TARGET_MS = 40.0
PYTHON_SAMPLE = 300  # hashes; enough for a stable rate without waiting seconds


def make_challenge(answer: int) -> Challenge:
    """A real-shaped challenge (20-hex salt, ms expire_at) whose digest is hash(answer).

    The digest comes from the pure-Python reference, so the native scan cannot
    agree with itself by accident. ``answer`` = DIFFICULTY gives no answer in range.
    """
    salt, expire_at = "5eed0fb0a7c3d1e2f405", 1772967221890
    digest = py_deepseek_hash_v1(f"{salt}_{expire_at}_{answer}".encode()).hex()
    return Challenge.from_json({
        "algorithm": pow_mod.ALGORITHM,
        "challenge": digest,
        "salt": salt,
        "signature": "0" * 64,
        "difficulty": DIFFICULTY,
        "expire_at": expire_at,
    })


def time_runs(run: Callable[[], None], repeat: int) -> list[float]:
    run()  # warm-up: page faults, CPU frequency ramp
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> dict[str, float]:
    median = statistics.median(times)
    return {
        "median_ms": median * 1e3,
        "best_ms": min(times) * 1e3,
        "hashes_per_s": DIFFICULTY / median,
    }


def bench_public_solve(repeat: int) -> dict[str, dict[str, float]]:
    last = make_challenge(DIFFICULTY - 1)
    missing = make_challenge(DIFFICULTY)

    def solve_last() -> None:
        if pow_mod.solve(last) != DIFFICULTY - 1:
            raise SystemExit("wrong answer: the native solver is broken")

    def solve_missing() -> None:
        try:
            pow_mod.solve(missing)
        except PowError:
            return
        raise SystemExit("found an answer where there is none: the native solver is broken")

    return {
        "answer_143999": summary(time_runs(solve_last, repeat)),
        "no_answer": summary(time_runs(solve_missing, repeat)),
    }


def bench_kernels(repeat: int) -> dict[str, dict[str, float]]:
    from ds2a.deepseek import _pow  # type: ignore[attr-defined]

    missing = make_challenge(DIFFICULTY)
    target = bytes.fromhex(missing.challenge)
    results = {}
    for kernel in _pow.impls():
        def scan(kernel: str = kernel) -> None:
            _pow.solve(target, missing.prefix, DIFFICULTY, impl=kernel)

        results[kernel] = summary(time_runs(scan, repeat))
    return results


def bench_python() -> dict[str, float]:
    prefix = make_challenge(0).prefix
    start = time.perf_counter()
    for n in range(PYTHON_SAMPLE):
        py_deepseek_hash_v1(prefix + str(n).encode())
    elapsed = time.perf_counter() - start
    rate = PYTHON_SAMPLE / elapsed
    return {"hashes_per_s": rate, "full_scan_estimate_s": DIFFICULTY / rate}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--repeat", type=int, default=21, help="timed runs per case (default 21)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")

    report: dict[str, Any] = {
        "implementation": pow_mod.IMPL,
        "native": pow_mod.NATIVE,
        "difficulty": DIFFICULTY,
        "repeat": args.repeat,
        "target_ms": TARGET_MS,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
    }
    print(f"implementation: {pow_mod.IMPL}  (python {report['python']}, {report['machine']})")
    print(f"full scan of difficulty {DIFFICULTY}, {args.repeat} runs each:")

    if pow_mod.NATIVE:
        report["solve"] = bench_public_solve(args.repeat)
        for case, fig in report["solve"].items():
            print(f"  {case:<14} median {fig['median_ms']:7.2f} ms  best {fig['best_ms']:7.2f} ms  "
                  f"{fig['hashes_per_s'] / 1e6:6.2f} Mhash/s")
        report["kernels"] = bench_kernels(args.repeat)
        print("per kernel (no answer in range):")
        for kernel, fig in report["kernels"].items():
            print(f"  {kernel:<14} median {fig['median_ms']:7.2f} ms  best {fig['best_ms']:7.2f} ms  "
                  f"{fig['hashes_per_s'] / 1e6:6.2f} Mhash/s")
        worst = max(fig["median_ms"] for fig in report["solve"].values())
        report["within_target"] = worst <= TARGET_MS
        print(f"target <= {TARGET_MS:.0f} ms: {'met' if report['within_target'] else 'MISSED'} "
              f"(worst median {worst:.2f} ms)")
    else:
        print("  C extension not built: skipping native timings (pure Python below)")

    report["pure_python"] = bench_python()
    py = report["pure_python"]
    print(f"pure Python: {py['hashes_per_s']:.0f} hash/s over {PYTHON_SAMPLE} hashes "
          f"(full scan about {py['full_scan_estimate_s']:.1f} s)")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

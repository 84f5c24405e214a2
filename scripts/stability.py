"""Runs test tiers several times in a row and reports each run's failures.

    python scripts/stability.py --runs 10 -m "e2e or faults"

Each run is a pytest process of its own (under scripts/with_services.py, in the slot of
PGCELERY_TEST_SLOT); the report gives each run's counts and time, and every test that failed
with the runs it failed in.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_once(markers: str, report: Path) -> tuple[dict[str, int], list[str], float]:
    """One pytest run of the tiers ``markers``: its counts, failed tests and seconds."""
    started = time.monotonic()
    subprocess.call([sys.executable, "scripts/with_services.py", sys.executable, "-m", "pytest",
                     "-q", "-m", markers, f"--junitxml={report}"], cwd=ROOT,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.monotonic() - started
    suite = ElementTree.parse(report).getroot().find("testsuite")
    assert suite is not None, f"no test suite in {report}"
    counts = {key: int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped")}
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    return counts, failed, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("-m", dest="markers", default="e2e or faults")
    options = parser.parse_args()
    failures: dict[str, list[int]] = collections.defaultdict(list)
    print("| run | tests | failed | errors | skipped | seconds |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as directory:
        for run in range(1, options.runs + 1):
            counts, failed, seconds = run_once(options.markers, Path(directory) / f"{run}.xml")
            for test in failed:
                failures[test].append(run)
            print(f"| {run} | {counts['tests']} | {counts['failures']} | {counts['errors']} | "
                  f"{counts['skipped']} | {seconds:.0f} |", flush=True)
    print("\nFailed:" if failures else "\nNo test failed.")
    for test, runs in sorted(failures.items()):
        print(f"- {test}: run(s) {', '.join(map(str, runs))}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

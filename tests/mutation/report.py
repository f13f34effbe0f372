"""`make mutate`'s summary: how many mutants the tests killed, per file, and which survived.

    .venv/bin/python -m tests.mutation.report

Reads mutmut's results (mutants/backend/*.meta) and cosmic-ray's session
(mutants/cosmic/session.sqlite, through `cosmic-ray dump`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MUTMUT_SURVIVED, MUTMUT_NO_TESTS = 0, 33  # mutmut's exit codes for a mutant's test run
TIMEOUTS = {24, 36, 152, -24, 255}


def _mutmut() -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = {}
    for meta in sorted((ROOT / "mutants" / "backend").rglob("*.py.meta")):
        tally: Counter[str] = Counter()
        for code in json.loads(meta.read_text())["exit_code_by_key"].values():
            if code is None:
                tally["not run"] += 1
            elif code == MUTMUT_SURVIVED:
                tally["survived"] += 1
            elif code == MUTMUT_NO_TESTS:
                tally["no tests"] += 1
            elif code in TIMEOUTS:
                tally["timeout"] += 1
            else:
                tally["killed"] += 1
        counts[str(meta.relative_to(ROOT / "mutants")).removesuffix(".meta")] = tally
    return counts


def _cosmic_ray() -> dict[str, Counter[str]]:
    session = ROOT / "mutants" / "cosmic" / "session.sqlite"
    if not session.exists():
        return {}
    dump = subprocess.run(  # noqa: S603
        [str(Path(sys.executable).parent / "cosmic-ray"), "dump", str(session)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    tallies: dict[str, Counter[str]] = {}
    for line in dump.splitlines():
        job, result = json.loads(line)
        mutation = job["mutations"][0]
        module = f"{mutation['module_path']} (cosmic-ray)"
        outcome = str((result or {}).get("test_outcome"))
        tally = tallies.setdefault(module, Counter())
        tally[{"killed": "killed", "survived": "survived"}.get(outcome, "not run")] += 1
        if outcome == "survived":
            print(
                f"  survived: {mutation['module_path']} line {mutation['start_pos'][0]} "
                f"{mutation['operator_name']} #{mutation['occurrence']}"
            )
    return tallies


def main() -> None:
    for path, tally in {**_mutmut(), **_cosmic_ray()}.items():
        tested = tally["killed"] + tally["survived"] + tally["timeout"]
        rate = (tally["killed"] + tally["timeout"]) / tested if tested else 0.0
        print(f"{path:40} {rate:6.1%} killed of {tested:4} tested  {dict(tally)}")


if __name__ == "__main__":
    main()

"""Per-module mutation score from what `mutmut run` left in mutants/ (its .meta files), for docs/testing.md.

    python scripts/mutation_score.py [--survivors]

killed = the tests failed; timeout = the mutant made them hang past mutmut's limit (counted as caught, as mutmut
does); survived / no tests (no fast test calls the function) / segfault / not checked are not caught.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# mutmut's exit codes (mutmut/stats.py)
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", -11: "segfault", -9: "segfault",
          None: "not checked"}
CAUGHT = ("killed", "timeout")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survivors", action="store_true", help="list every mutant not caught")
    args = parser.parse_args(argv)
    metas = sorted((REPO / "mutants").rglob("*.py.meta"))
    if not metas:
        print("no mutants/: run `make mutate` first", file=sys.stderr)
        return 2
    total_caught = total = 0
    print(f"{'module':<40} {'caught':>12}  details")
    for meta in metas:
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
        if not codes:
            continue
        statuses = {name: STATUS.get(code, "suspicious") for name, code in codes.items()}
        counts = Counter(statuses.values())
        caught = sum(counts[s] for s in CAUGHT)
        total_caught, total = total_caught + caught, total + len(codes)
        module = str(meta.relative_to(REPO / "mutants"))[: -len(".meta")]
        details = ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
        print(f"{module:<40} {caught:>5}/{len(codes):<5} {100 * caught / len(codes):3.0f}%  {details}")
        if args.survivors:
            for name, status in sorted(statuses.items()):
                if status not in CAUGHT:
                    print(f"    {status}: {name}")
    print(f"{'all':<40} {total_caught:>5}/{total:<5} {100 * total_caught / max(total, 1):3.0f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

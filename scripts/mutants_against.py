"""Run a few fast test files against every mutant mutmut generated for one module, in one process: a quick check
of new tests, or a score when a full `mutmut run` does not fit (docs/testing.md says which rows came from here).

    cd mutants && ../.venv/bin/python ../scripts/mutants_against.py RESULTS.json ddlc.checkpoint.storage \\
        tests/checkpoint/test_store_paths.py tests/checkpoint/test_manifest_format.py

    mutants/src/<module>.py (mutmut's trampolines) --MUTANT_UNDER_TEST=<mutant>, read at every call-->
        pytest.main(files, -x) --> exit 0: survived, else killed --> RESULTS.json {mutant: exit code} (resumable)

Run it from mutants/ after `mutmut run` generated it (or stopped it). A mutant these files miss may still be
killed by the rest of mutmut's test selection, so the score is a lower bound of mutmut's.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    out, module, files = Path(argv[0]), argv[1], argv[2:]
    source = Path("src", *module.split(".")).with_suffix(".py").read_text()
    names = [f"{module}.{name}" for name in re.findall(r"^\s*def (x\S*?__mutmut_\d+)\(", source, re.M)]
    results = json.loads(out.read_text()) if out.exists() else {}
    args = [*files, "-x", "-q", "-p", "no:cacheprovider", "--timeout=30"]  # a hang counts as caught, as in mutmut
    os.environ["MUTANT_UNDER_TEST"] = ""
    if pytest.main(args) != 0:
        print("the tests fail with no mutant active; fix that first", file=sys.stderr)
        return 1
    for name in names:
        if name in results:
            continue
        os.environ["MUTANT_UNDER_TEST"] = name
        results[name] = int(pytest.main(args))
        out.write_text(json.dumps(results, indent=0))
        print("RESULT", name, "survived" if results[name] == 0 else "killed", flush=True)
    survivors = [name for name in names if results.get(name) == 0]
    print(f"{module}: {len(names) - len(survivors)}/{len(names)} killed")
    for name in survivors:
        print(f"  survived: {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

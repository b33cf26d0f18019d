"""Mutation testing for the alert rules (YAML, which mutmut does not mutate): plant one small change at a time in
src/ddlc/monitor/rules/ddlc-alerts.yml and check that its promtool tests (tests/monitor/data/ddlc-alerts.test.yml)
fail on it.

    python scripts/mutate_rules.py [--list]

    rules text --(one mutant: a threshold, a comparison, a `for:` window, a range window)--> temp dir
               --> `promtool test rules` --> exit != 0: killed; 0: survived (printed with its line)

Mutants, in every alert's `expr:` line and `for:` line (recording rules are left alone: the alerts that read them
are the ones under test):
- a comparison flipped to its non-strict / strict twin and to its opposite (`<` -> `<=`, `<` -> `>`);
- a numeric threshold nudged up and down by 10% (a zero becomes 0.5 / -0.5);
- a `for:` window halved and doubled, and removed;
- a range selector `[10m]` halved and doubled.
The file on disk is never changed. `make mutate` runs this after mutmut; promtool takes a second per mutant.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "src/ddlc/monitor/rules/ddlc-alerts.yml"
TESTS = REPO / "tests/monitor/data/ddlc-alerts.test.yml"

_COMPARISON = re.compile(r"(?<![=!<>])(<=|>=|==|!=|<|>)(?!=)")
_NUMBER = re.compile(r"(?<![\w.\[{\"'])(\d+(?:\.\d+)?)(?![\w.\]])")
_RANGE = re.compile(r"\[(\d+)([smh])\]")
_FOR = re.compile(r"^(\s*for:\s*)(\d+)([smh])\s*$")
_FLIPS = {"<": ("<=", ">"), "<=": ("<", ">="), ">": (">=", "<"), ">=": (">", "<="), "==": ("!=",), "!=": ("==",)}


@dataclass
class Mutant:
    line: int  # 1-based
    what: str
    text: str  # the whole mutated file


def _number(value: float) -> str:
    return f"{value:g}"


def _strip_quoted(expr: str) -> str:
    """Label matchers ({type="uncorrected"}) hold no thresholds: blank them out so their digits are not found."""
    return re.sub(r"\{[^}]*\}", lambda m: " " * len(m.group(0)), expr)


def find_mutants(text: str) -> list[Mutant]:
    lines = text.splitlines(keepends=True)
    found: list[Mutant] = []
    in_alert = False

    def replaced(index: int, start: int, end: int, new: str, what: str) -> None:
        line = lines[index]
        mutated = lines[:index] + [line[:start] + new + line[end:]] + lines[index + 1:]
        found.append(Mutant(index + 1, f"col {start + 1}: {what}", "".join(mutated)))

    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("- alert:"):
            in_alert = True
        elif stripped.startswith("- record:"):
            in_alert = False
        if not in_alert:
            continue
        if stripped.startswith("expr:"):
            offset = line.index("expr:") + len("expr:")
            expr = _strip_quoted(line[offset:])
            for match in _COMPARISON.finditer(expr):
                for other in _FLIPS[match.group(1)]:
                    replaced(index, offset + match.start(), offset + match.end(), other,
                             f"{match.group(1)} -> {other}")
            for match in _RANGE.finditer(expr):
                value, unit = int(match.group(1)), match.group(2)
                for new in sorted({max(value // 2, 1), value * 2} - {value}):
                    replaced(index, offset + match.start(), offset + match.end(), f"[{new}{unit}]",
                             f"[{value}{unit}] -> [{new}{unit}]")
            ranges = [m.span() for m in _RANGE.finditer(expr)]
            for match in _NUMBER.finditer(expr):
                if any(a <= match.start() < b for a, b in ranges):
                    continue
                value = float(match.group(1))
                for new in ((value * 1.1, value * 0.9) if value else (0.5, -0.5)):
                    replaced(index, offset + match.start(), offset + match.end(), _number(new),
                             f"{match.group(1)} -> {_number(new)}")
        match = _FOR.match(line.rstrip("\n"))
        if match:
            value, unit = int(match.group(2)), match.group(3)
            for new in sorted({max(value // 2, 1), value * 2} - {value}):
                found.append(Mutant(index + 1, f"for: {value}{unit} -> {new}{unit}", "".join(
                    lines[:index] + [f"{match.group(1)}{new}{unit}\n"] + lines[index + 1:])))
            found.append(Mutant(index + 1, f"for: {value}{unit} removed",
                                "".join(lines[:index] + lines[index + 1:])))
    return found


def killed(promtool: str, text: str, work: Path) -> bool:
    (work / RULES.name).write_text(text)
    proc = subprocess.run([promtool, "test", "rules", TESTS.name], cwd=work, capture_output=True, text=True,
                          timeout=120)
    return proc.returncode != 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)
    original = RULES.read_text()
    mutants = find_mutants(original)
    if args.list:
        for mutant in mutants:
            print(f"{RULES.name}:{mutant.line} {mutant.what}")
        return 0
    promtool = shutil.which("promtool")
    if promtool is None:
        print("promtool not found (make sysdeps installs it)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ddlc-mutate-rules-") as tmp:
        work = Path(tmp)
        shutil.copy(TESTS, work / TESTS.name)
        if killed(promtool, original, work):
            print("the rule tests fail without any mutant; fix that first", file=sys.stderr)
            return 1
        survivors = [m for m in mutants if not killed(promtool, m.text, work)]
    print(f"alert rules: {len(mutants) - len(survivors)}/{len(mutants)} mutants killed")
    for mutant in survivors:
        print(f"  survived: {RULES.name}:{mutant.line} {mutant.what}")
    return 0 if not survivors else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

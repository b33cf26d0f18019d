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
_BLOCK = re.compile(r"^\s*[>|][+-]?\d?\s*(#.*)?$")  # a YAML block scalar's header: `>-`, `|`, `>2+`
_FOR = re.compile(r"^(\s*for:\s*)(\d+)([smh])\s*$")
_FLIPS = {"<": ("<=", ">"), "<=": ("<", ">="), ">": (">=", "<"), ">=": (">", "<="), "==": ("!=",), "!=": ("==",)}


@dataclass
class Mutant:
    line: int  # 1-based
    what: str
    text: str  # the whole mutated file
    alert: str = ""  # the alert whose rule it changes


def _number(value: float) -> str:
    return f"{value:g}"


def _strip_quoted(expr: str) -> str:
    """Label matchers ({type="uncorrected"}) hold no thresholds: blank them out so their digits are not found."""
    return re.sub(r"\{[^}]*\}", lambda m: " " * len(m.group(0)), expr)


def find_mutants(text: str) -> list[Mutant]:
    lines = text.splitlines(keepends=True)
    found: list[Mutant] = []
    in_alert = False
    alert = ""

    def replaced(index: int, start: int, end: int, new: str, what: str) -> None:
        line = lines[index]
        mutated = lines[:index] + [line[:start] + new + line[end:]] + lines[index + 1:]
        found.append(Mutant(index + 1, f"col {start + 1}: {what}", "".join(mutated), alert))

    def mutate_expr(index: int, offset: int) -> None:
        """Every mutant of the PromQL text of lines[index] from column `offset` on."""
        expr = _strip_quoted(lines[index][offset:])
        for match in _COMPARISON.finditer(expr):
            for other in _FLIPS[match.group(1)]:
                replaced(index, offset + match.start(), offset + match.end(), other, f"{match.group(1)} -> {other}")
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

    block_indent: int | None = None  # set while inside a multi-line `expr: >-` block: the `expr:` key's indent
    for index, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if block_indent is not None:
            if not stripped or (indent > block_indent and not stripped.startswith("#")):
                if stripped:
                    mutate_expr(index, indent)
                continue
            block_indent = None
        if stripped.startswith("- alert:"):
            in_alert, alert = True, stripped[len("- alert:"):].strip()
        elif stripped.startswith("- record:"):
            in_alert = False
        if not in_alert:
            continue
        if stripped.startswith("expr:"):
            offset = line.index("expr:") + len("expr:")
            if _BLOCK.match(line[offset:]):
                # A YAML block scalar: the PromQL is on the lines below, indented deeper than `expr:`; the
                # indicator itself (`>-`) is YAML, not a comparison.
                block_indent = indent
            else:
                mutate_expr(index, offset)
        match = _FOR.match(line.rstrip("\n"))
        if match:
            value, unit = int(match.group(2)), match.group(3)
            for new in sorted({max(value // 2, 1), value * 2} - {value}):
                found.append(Mutant(index + 1, f"for: {value}{unit} -> {new}{unit}", "".join(
                    lines[:index] + [f"{match.group(1)}{new}{unit}\n"] + lines[index + 1:]), alert))
            found.append(Mutant(index + 1, f"for: {value}{unit} removed",
                                "".join(lines[:index] + lines[index + 1:]), alert))
    return found


def tests_for(alert: str, tests_text: str) -> str:
    """The promtool test file cut down to the cases that check `alert` (a mutant of one alert's rule can change only
    the outcome of `alert_rule_test` entries naming that alert), so that each mutant costs one alert's cases."""
    import yaml  # in the venv (pydantic config); only needed to run, not to list

    spec = yaml.safe_load(tests_text)
    spec["tests"] = [case for case in spec["tests"]
                     if any(check.get("alertname") == alert for check in case.get("alert_rule_test", []))]
    return yaml.safe_dump(spec, sort_keys=False)


def verdict(promtool: str, text: str, work: Path, timeout: float = 120, tests: str = TESTS.name) -> str:
    """killed (the tests failed), timeout (promtool ran past `timeout`: caught, as mutmut counts it) or survived."""
    (work / RULES.name).write_text(text)
    try:
        proc = subprocess.run([promtool, "test", "rules", tests], cwd=work, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout"
    return "killed" if proc.returncode != 0 else "survived"


def killed(promtool: str, text: str, work: Path) -> bool:
    return verdict(promtool, text, work) != "survived"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--line", type=int, action="append", help="only the mutants of this line (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each mutant's verdict as it comes")
    args = parser.parse_args(argv)
    original = RULES.read_text()
    mutants = find_mutants(original)
    if args.line:
        mutants = [m for m in mutants if m.line in args.line]
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
        survivors, timeouts = [], 0
        tests_text = TESTS.read_text()
        for alert in sorted({m.alert for m in mutants}):
            (work / f"{alert}.test.yml").write_text(tests_for(alert, tests_text))
        for mutant in mutants:
            result = verdict(promtool, mutant.text, work, tests=f"{mutant.alert}.test.yml")
            survivors += [mutant] if result == "survived" else []
            timeouts += result == "timeout"
            if args.verbose:
                print(f"{result:>8}: {RULES.name}:{mutant.line} {mutant.what}", flush=True)
    print(f"alert rules: {len(mutants) - len(survivors)}/{len(mutants)} mutants killed"
          + (f" ({timeouts} of them by promtool running past its limit)" if timeouts else ""))
    for mutant in survivors:
        print(f"  survived: {RULES.name}:{mutant.line} {mutant.what}")
    return 0 if not survivors else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

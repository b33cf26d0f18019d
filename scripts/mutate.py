"""Mutation testing for ddlc's core code: plant one small bug at a time and check that the tests catch it.

    python scripts/mutate.py [--only NAME] [--max N] [--seed S] [--list]

For each target below (a core module and the tests that guard it), every mutable point of the module is found
with `ast` (a comparison flipped, `and`/`or` swapped, a `not` dropped, a boolean or small integer constant changed,
a `return` made to return None), a sample of at most --max of them is applied one at a time to the file on disk,
and the target's tests run with `-x`. A mutant the tests fail on is "caught"; one they pass with "survived", and
is printed with its line so a person can add the missing test (or note why the mutant is equivalent). The file
is always restored, also on Ctrl-C. `make mutate` runs it; it is not part of `make test` (minutes per target).
"""

from __future__ import annotations

import argparse
import ast
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# module -> the tests that must catch a bug planted in it (fast ones: each mutant reruns them)
TARGETS = {
    "manifest": ("src/ddlc/checkpoint/manifest.py",
                 ["tests/checkpoint/test_verify_paths.py", "tests/checkpoint/test_units.py"]),
    "retention": ("src/ddlc/checkpoint/retention.py",
                  ["tests/checkpoint/test_retention_plan.py", "tests/checkpoint/test_units.py"]),
    "catalog": ("src/ddlc/checkpoint/catalog.py",
                ["tests/checkpoint/test_data_loss.py", "tests/checkpoint/test_verify_paths.py",
                 "tests/checkpoint/test_store_readers.py"]),
    "config": ("src/ddlc/config/loader.py", ["tests/config"]),
    "hostfile": ("src/ddlc/launch/multinode.py", ["tests/launch/test_launch_input.py",
                                                  "tests/launch/test_launch_numeric_input.py"]),
}

_FLIP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
         ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}


@dataclass
class Mutant:
    line: int
    what: str
    apply: object  # callable(tree) -> None, applied to a fresh parse


def find_mutants(source: str) -> list[Mutant]:
    tree = ast.parse(source)
    found: list[Mutant] = []
    for index, node in enumerate(ast.walk(tree)):
        def at(i=index):
            return lambda t: list(ast.walk(t))[i]
        if isinstance(node, ast.Compare) and type(node.ops[0]) in _FLIP:
            op = type(node.ops[0])
            found.append(Mutant(node.lineno, f"{op.__name__} -> {_FLIP[op].__name__}",
                                lambda t, g=at(), f=_FLIP[op]: g(t).ops.__setitem__(0, f())))
        elif isinstance(node, ast.BoolOp):
            other = ast.Or if isinstance(node.op, ast.And) else ast.And
            found.append(Mutant(node.lineno, f"{type(node.op).__name__} -> {other.__name__}",
                                lambda t, g=at(), o=other: setattr(g(t), "op", o())))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            found.append(Mutant(node.lineno, "drop `not`",
                                lambda t, g=at(): setattr(g(t), "op", ast.UAdd())))
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            found.append(Mutant(node.lineno, f"{node.value} -> {not node.value}",
                                lambda t, g=at(): setattr(g(t), "value", not g(t).value)))
        elif isinstance(node, ast.Constant) and type(node.value) is int and 0 <= node.value <= 1024:
            found.append(Mutant(node.lineno, f"{node.value} -> {node.value + 1}",
                                lambda t, g=at(): setattr(g(t), "value", g(t).value + 1)))
        elif isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            found.append(Mutant(node.lineno, "return None", lambda t, g=at(): setattr(g(t), "value", None)))
    return found


def mutated(source: str, mutant: Mutant) -> str:
    tree = ast.parse(source)
    mutant.apply(tree)
    return ast.unparse(ast.fix_missing_locations(tree))


def run_target(name: str, max_mutants: int, seed: int) -> tuple[int, int, list[str]]:
    relpath, tests = TARGETS[name]
    path = REPO / relpath
    original = path.read_text()
    mutants = find_mutants(original)
    random.Random(seed).shuffle(mutants)
    mutants = sorted(mutants[:max_mutants], key=lambda m: m.line)
    baseline = _run_tests(tests)
    if baseline != 0:
        raise SystemExit(f"{name}: the tests fail without any mutant (exit {baseline}); fix that first")
    caught, survived = 0, []
    try:
        for number, mutant in enumerate(mutants, 1):
            try:
                path.write_text(mutated(original, mutant))
            except (SyntaxError, ValueError):
                continue
            started = time.monotonic()
            code = _run_tests(tests)
            verdict = "caught" if code != 0 else "SURVIVED"
            print(f"  [{number}/{len(mutants)}] {relpath}:{mutant.line} {mutant.what}: {verdict} "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
            if code != 0:
                caught += 1
            else:
                survived.append(f"{relpath}:{mutant.line} {mutant.what}")
    finally:
        path.write_text(original)
    return caught, len(mutants), survived


def _run_tests(tests: list[str]) -> int:
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--timeout=300", *tests]
    return subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(TARGETS), action="append", help="one target (repeatable)")
    parser.add_argument("--max", type=int, default=25, help="mutants per target (a seeded sample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--list", action="store_true", help="list the mutable points and exit")
    args = parser.parse_args(argv)
    # SIGTERM (a timeout, a CI cancel) must unwind through run_target's `finally`, which puts the file back.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    names = args.only or sorted(TARGETS)
    if args.list:
        for name in names:
            for mutant in find_mutants((REPO / TARGETS[name][0]).read_text()):
                print(f"{TARGETS[name][0]}:{mutant.line} {mutant.what}")
        return 0
    total_caught = total = 0
    all_survivors = []
    for name in names:
        print(f"{name}: {TARGETS[name][0]} against {' '.join(TARGETS[name][1])}", flush=True)
        caught, count, survivors = run_target(name, args.max, args.seed)
        total_caught, total = total_caught + caught, total + count
        all_survivors += survivors
        print(f"{name}: {caught}/{count} caught", flush=True)
    print(f"mutation score: {total_caught}/{total} caught")
    for line in all_survivors:
        print(f"  survived: {line}")
    return 0 if not all_survivors else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

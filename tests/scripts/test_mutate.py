"""scripts/mutate.py finds the mutable points of a module and rewrites exactly one of them at a time."""

import ast
import importlib.util
import sys

from tests.support import REPO

spec = importlib.util.spec_from_file_location("mutate", REPO / "scripts" / "mutate.py")
mutate = importlib.util.module_from_spec(spec)
sys.modules["mutate"] = mutate  # dataclasses look their module up there
spec.loader.exec_module(mutate)

SOURCE = "def keep(a, b):\n    if not a:\n        return a < 3 and b >= 1\n    return True\n"


def test_every_kind_of_mutant_is_found_and_each_changes_one_thing():
    found = {m.what for m in mutate.find_mutants(SOURCE)}
    assert {"drop `not`", "Lt -> LtE", "GtE -> Gt", "And -> Or", "3 -> 4", "1 -> 2", "True -> False",
            "return None"} <= found
    namespace = {}
    originals = []
    for mutant in mutate.find_mutants(SOURCE):
        text = mutate.mutated(SOURCE, mutant)
        assert text != ast.unparse(ast.parse(SOURCE)), mutant.what
        exec(compile(text, "<mutant>", "exec"), namespace)
        originals.append((mutant.what, [namespace["keep"](a, b) for a in (0, 2, 5) for b in (0, 1)]))
    exec(compile(SOURCE, "<original>", "exec"), namespace)
    reference = [namespace["keep"](a, b) for a in (0, 2, 5) for b in (0, 1)]
    changed = [what for what, results in originals if results != reference]
    # a mutant may be equivalent on these few inputs; nearly all must change what the function returns
    assert len(changed) >= len(originals) - 2, (changed, originals)


def test_every_target_names_files_that_exist():
    for module, tests in mutate.TARGETS.values():
        assert (REPO / module).is_file(), module
        for test in tests:
            assert (REPO / test).exists(), test

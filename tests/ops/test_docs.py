"""docs/troubleshooting.md and docs/runbook.md: doctor's links resolve, entries have their parts, links work."""

from __future__ import annotations

import re

import pytest

from ddlc.ops import doctor
from tests.support import REPO

DOCS = REPO / "docs"
TROUBLESHOOTING = DOCS / "troubleshooting.md"


def github_anchor(heading: str) -> str:
    """GitHub's heading slug: lower case, punctuation dropped (except - and _), spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_fence = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        if in_fence:
            continue
        match = re.match(r"^#{1,6} (.+)$", line)
        if match:
            slug = github_anchor(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def test_github_anchor_rules():
    assert github_anchor("EFA not used (falls back to TCP)") == "efa-not-used-falls-back-to-tcp"
    assert github_anchor("Xid 48, 79 and 94 errors") == "xid-48-79-and-94-errors"
    assert github_anchor("`ddlc launch` — coming with issue #5") == "ddlc-launch--coming-with-issue-5"


def test_every_doctor_anchor_is_a_heading():
    headings = anchors(TROUBLESHOOTING)
    constants = {name: value for name, value in vars(doctor).items() if name.startswith("ANCHOR_")}
    assert len(constants) >= 8
    for name, anchor in constants.items():
        assert anchor in headings, f"doctor.{name} = {anchor!r} is not a heading of {TROUBLESHOOTING.name}"


def test_doctor_output_links_resolve_in_practice(tmp_path):
    """The links doctor actually prints (from failing checks) resolve."""
    (tmp_path / "f").write_text("a file where a directory is needed")
    results = [
        doctor.check_gpus([], doctor.TorchFacts("2", None, False, 0, False, None), 8, {}),
        doctor.check_efa([], None, expect_efa=True),
        doctor.check_nccl_env({"NCCL_SOCKET_IFNAME": "nope"}, ["lo"], False),
        doctor.check_memlock(1024, efa_present=True),
        doctor.check_checkpoint_write(str(tmp_path / "f" / "x")),
        doctor.check_clock_skew([doctor.HostFacts("h", error="down")]),
    ]
    headings = anchors(TROUBLESHOOTING)
    for result in results:
        assert result.status is not doctor.Status.PASS
        path, anchor = result.doc.split("#")
        assert path == "docs/troubleshooting.md" and (REPO / path).is_file() and anchor in headings


ISSUE_TOPICS = [
    "nccl-timeouts-and-hangs", "efa-not-used-falls-back-to-tcp", "cannot-allocate-memory-in-data-loader-workers-with-efa",
    "cuda-out-of-memory", "xid-48-79-and-94-errors", "stragglers", "slow-data-loading",
    "corrupt-or-incomplete-checkpoints", "s3-throttling-503-slow-down",
    "insufficient-capacity-and-placement-group-conflicts", "ssm-session-failures", "gpu-quota-vcpu-limit-exceeded",
]


def sections(path) -> dict[str, str]:
    text = path.read_text()
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return {github_anchor(parts[i]): parts[i + 1] for i in range(1, len(parts), 2)}


def test_troubleshooting_covers_the_common_failures_with_symptom_cause_fix_and_a_revealing_signal():
    entries = sections(TROUBLESHOOTING)
    for topic in ISSUE_TOPICS:
        assert topic in entries, f"missing troubleshooting entry {topic}"
    for slug, body in entries.items():
        for part in ("**Symptom.**", "**Cause.**", "**Fix.**", "**Revealed by.**"):
            assert part in body, f"{slug}: no {part}"
        revealed = body.split("**Revealed by.**", 1)[1]
        assert re.search(r"`ddlc [a-z]|ddlc_[a-z]|DDLC[A-Z]", revealed), f"{slug}: names no ddlc command or metric"


@pytest.mark.parametrize("doc", ["runbook.md", "troubleshooting.md", "infrastructure.md"])
def test_relative_links_resolve(doc):
    text = (DOCS / doc).read_text()
    for target, anchor in re.findall(r"\]\(([^)#:\s]*)(?:#([^)\s]+))?\)", text):
        path = DOCS / target if target else DOCS / doc
        assert path.is_file(), f"{doc}: link to missing {target}"
        if anchor:
            assert anchor in anchors(path), f"{doc}: {target}#{anchor} is not a heading"

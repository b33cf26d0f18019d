"""Slurm's compressed host lists, shared by the runtime (master address) and `ddlc launch` (hosts). No torch here."""

from __future__ import annotations

import re

from ddlc.errors import UserError


def expand_nodelist(nodelist: str) -> list[str]:
    """Slurm's compressed list: `gpu-[1-3,7],login1` -> gpu-1 gpu-2 gpu-3 gpu-7 login1 (keeps zero padding)."""
    names: list[str] = []
    for match in re.finditer(r"([^,\[]+)(\[([^\]]*)\])?", nodelist):
        prefix, ranges = match.group(1), match.group(3)
        if ranges is None:
            names.append(prefix)
            continue
        for part in ranges.split(","):
            low, _, high = part.partition("-")
            if not high:
                names.append(prefix + low)
                continue
            if not (low.isdigit() and high.isdigit()):
                raise UserError(f"SLURM_JOB_NODELIST={nodelist!r}: cannot read range {part!r}")
            for index in range(int(low), int(high) + 1):
                names.append(prefix + str(index).zfill(len(low)))
    return [name.strip() for name in names if name.strip(",").strip()]

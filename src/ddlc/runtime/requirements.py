"""What the runtime needs from its environment, checked before anything else runs (one line and exit 2 if not).

The nodes install ddlc into the Deep Learning AMI's own torch, so pyproject's floor alone does not protect them.
"""

from __future__ import annotations

import re

from ddlc.errors import UserError

# The oldest torch the checkpoint code is tested with (DefaultStager/StagingOptions, DCP state-dict APIs).
TORCH_FLOOR = (2, 9)


def check_torch_version(version: str) -> None:
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        return  # a source build with an unusual version string: let it run
    if (int(match.group(1)), int(match.group(2))) < TORCH_FLOOR:
        floor = ".".join(map(str, TORCH_FLOOR))
        raise UserError(f"torch {version} is too old: ddlc needs torch>={floor} (its async checkpoint staging and "
                        f"DCP state-dict APIs); upgrade with pip install 'torch>={floor}' (or a newer Deep Learning AMI)")

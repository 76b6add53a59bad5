"""`python -m skillweave.sweep <artifacts_root> [domain]`: the dev-split table of a tuning sweep.

Every complete `stage=dev` artifact under the root (one per sweep point), best paired gain first:
the DPO settings, pairs, relative weight change, dev score before -> after, the paired gain ± its
standard error, pass rates, answers changed and truncation (skillweave/stages/dev.py).
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    from .stages.dev import sweep_table

    if len(argv) not in (1, 2) or not Path(argv[0]).is_dir():
        sys.exit("usage: python -m skillweave.sweep <artifacts_root> [domain]   (the root stage=dev wrote to)")
    print(sweep_table(Path(argv[0]), argv[1] if len(argv) == 2 else None), end="")


if __name__ == "__main__":
    main(sys.argv[1:])

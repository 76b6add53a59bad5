"""`skillweave-verify <artifacts_root>` (or `python -m skillweave.verify`): check every complete artifact's
files against the sha256 its manifest recorded, and say how to redo each damaged one.

Stages check their inputs the same way before reading them; this checks the whole store at once,
e.g. after copying it between machines. Exit status 1 when anything is damaged.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .core.artifacts import stored_artifacts


def verify(root: Path) -> list[tuple[str, list[str], str]]:
    """(artifact, its problems, how to redo it) for every damaged artifact under `root`."""
    return [(str(ref), problems, ref.redo) for ref in stored_artifacts(root) if (problems := ref.problems())]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        sys.exit("usage: skillweave-verify <artifacts_root>   (the artifacts_root the runs wrote to)")
    checked = len(stored_artifacts(Path(argv[0])))
    damaged = verify(Path(argv[0]))
    for name, problems, redo in damaged:
        print(f"DAMAGED {name}: {'; '.join(problems)}\n  to redo it: {redo}")
    print(f"{checked} artifacts checked, {len(damaged)} damaged")
    if damaged:
        sys.exit(1)


if __name__ == "__main__":
    main()

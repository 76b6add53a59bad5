"""Where the user-editable folders (conf/, recipes/, rules/) live.

In a source checkout they are the top-level folders of the repository; an installed wheel carries
copies under `skillweave/_resources/` (see `force-include` in pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_root() -> Path:
    bundled = _PACKAGE / "_resources"
    if (bundled / "conf").is_dir():
        return bundled
    source = _PACKAGE.parent
    if (source / "conf").is_dir():
        return source
    raise FileNotFoundError(
        f"skillweave's conf/ folder was found neither in {bundled} nor in {source}: "
        "reinstall the package (pip install .) or run from a source checkout"
    )


def resource_path(*parts: str) -> Path:
    return resource_root().joinpath(*parts)

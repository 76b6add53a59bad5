"""Code verifier: the model's function passes the task's unit tests, run in the sandbox."""

from __future__ import annotations

import ast
import re
import secrets

from skillweave.rules.common import RuleResult, Sample, rule
from skillweave.sandbox import run_python

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)

# Runs inside the sandbox. The solution executes under a non-"__main__" name so its own demo block
# (`if __name__ == "__main__": print(f(input()))`) does not run. Each test prints one marker line
# tagged with a per-run nonce, so a timeout or crash still leaves the verdicts of the tests before it.
_HARNESS = """
def _skillweave_run(source, units, nonce):
    namespace = {"__name__": "__solution__"}

    def report(verdict, index, error):
        message = ": ".join(filter(None, [type(error).__name__, str(error)])) if error else ""
        message = message.replace("\\n", " ")[:200]
        print(nonce, verdict, index, message, flush=True)

    try:
        exec(compile(source, "<solution>", "exec"), namespace)
    except BaseException as e:
        report("solution-error", -1, e)
        return
    for index, (is_test, statement) in enumerate(units):
        try:
            exec(compile(statement, "<tests>", "exec"), namespace)
        except BaseException as e:
            report("fail" if is_test else "setup-error", index, e)
            if not is_test:
                return
        else:
            if is_test:
                report("pass", index, None)
"""


def extract_code(response: str, entry_point: str | None = None) -> str:
    """The program in a response: the first fenced block that defines `entry_point`, else the first
    ```python block, else the first fenced block, else the whole text. An unclosed fence (a
    truncated response) counts up to the end.

    >>> extract_code("Sure:\\n```python\\ndef f(x):\\n    return x\\n```\\nDone.")
    'def f(x):\\n    return x\\n'
    """
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(response)]
    if not blocks:
        return response
    if entry_point:
        defines = re.compile(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.MULTILINE)
        for _, body in blocks:
            if defines.search(body):
                return body
    for lang, body in blocks:
        if lang in ("python", "py", "python3"):
            return body
    return blocks[0][1]


def split_tests(tests: str) -> list[tuple[bool, str]]:
    """Top-level statements of a test script as (is_test, source): asserts and bare expressions
    (e.g. `check(candidate)`) are tests, imports/defs/assignments are setup run in order.

    Raises:
        ValueError: the tests do not parse or contain no test (a data bug).
    """
    try:
        module = ast.parse(tests)
    except SyntaxError as e:
        raise ValueError(f"unit_tests_pass: meta['tests'] does not parse: {e}") from None
    units = [(isinstance(node, (ast.Assert, ast.Expr)), ast.unparse(node)) for node in module.body]
    if not any(is_test for is_test, _ in units):
        raise ValueError("unit_tests_pass: meta['tests'] holds no assert or check call")
    return units


@rule("unit_tests_pass")
def unit_tests_pass(sample: Sample, *, timeout_s: float = 10.0, memory_mb: int = 1024) -> RuleResult:
    """Run the extracted code and each test of `meta["tests"]` in one sandbox call.

    score = fraction of tests passed; passed = all of them. A solution that fails to even load
    (syntax error, exception at import time) or a setup statement that raises scores 0 on the rest.
    """
    meta = sample["meta"]
    units = split_tests(meta["tests"])
    code = extract_code(sample["response"], meta.get("entry_point"))
    nonce = secrets.token_hex(8)
    script = _HARNESS + f"\n_skillweave_run({code!r}, {units!r}, {nonce!r})\n"
    result = run_python(script, timeout_s, memory_mb)
    passed, failures, load_error = 0, [], None
    for line in result.stdout.splitlines():
        tag, _, rest = line.partition(" ")
        if tag != nonce:
            continue
        verdict, index, message = (rest.split(" ", 2) + [""])[:3]
        if verdict == "pass":
            passed += 1
        elif verdict == "fail":
            failures.append(f"{units[int(index)][1]} ({message})")
        else:
            load_error = f"{verdict}: {message}"
    total = sum(is_test for is_test, _ in units)
    score = passed / total
    summary = f"{passed}/{total} tests passed"
    if load_error:
        summary += f"; {load_error}"
    if failures:
        summary += "; failed: " + "; ".join(failures[:3]) + (" ..." if len(failures) > 3 else "")
    if not result.ok:
        summary += f"; sandbox: {result.reason}"
    return RuleResult(passed == total and result.ok, score, summary[:500])

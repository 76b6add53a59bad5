"""Offline, seeded prompt sources for the self-specialization domains (math, code, instructions, dialogue).

Every source is `fn(n, seed, **kwargs) -> list[dict]` with rows
`{"id": content hash of the prompt, "prompt": the user message (no chat template), "meta": dict}`:
the same seed gives the same rows, prompts are distinct, and a source that cannot produce `n`
distinct prompts raises ValueError. `meta` holds what the domain's rules need (rules/<domain>.yaml).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import os
import random
import string
import textwrap
from dataclasses import dataclass
from functools import cache
from typing import Any, Callable

from skillweave.registry import Registry

PROMPT_SOURCES: Registry[Callable[..., list[dict]]] = Registry("prompt source")


def prompt_id(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def _row(prompt: str, meta: dict) -> dict:
    return {"id": prompt_id(prompt), "prompt": prompt, "meta": meta}


def _check_n(n: int, source: str) -> None:
    if n <= 0:
        raise ValueError(f"{source}: n must be positive, got {n}")


def _take(rows: list[dict], n: int, source: str) -> list[dict]:
    if len(rows) < n:
        raise ValueError(f"{source}: could produce only {len(rows)} distinct prompts, {n} were asked for")
    return rows[:n]


# ---------------------------------------------------------------------------------------------
# Math: reasoning-gym generators with numeric answers

DEFAULT_MATH_GENERATORS = (
    "basic_arithmetic",
    "gsm_symbolic",
    "chain_sum",
    "leg_counting",
    "simple_equations",
    "lcm",
    "simple_geometry",
)
MATH_INSTRUCTION = "Give the final answer as a number on the last line."
MATH_EVAL_SEED = 20_250_101
MATH_EVAL_POOL = 1000
"""math_eval_set(n) is the first n of a fixed pool of this size; training excludes the whole pool."""


def _math_items(n: int, seed: int, generators: tuple[str, ...], exclude: frozenset[str]) -> list[tuple[str, str, str]]:
    """(question, answer, generator), round-robin over the generators (a balanced mix), skipping
    repeated and excluded questions."""
    from fractions import Fraction

    os.environ.setdefault("MPLCONFIGDIR", "/tmp/mpl")  # reasoning_gym imports matplotlib
    import reasoning_gym

    if not generators:
        raise ValueError("math_reasoning_gym: generators is empty")
    # Items are generated lazily and item i does not depend on size: the size only bounds the search,
    # with room for repeated questions and for all excluded ones coming from one generator.
    size = 2 * n + len(exclude) + 20
    datasets = []
    for name in generators:
        # Each generator gets its own seed, so adding one does not change the others' questions.
        sub_seed = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:4], "big")
        datasets.append((name, reasoning_gym.create_dataset(name, size=size, seed=sub_seed)))
    items, seen = [], set(exclude)
    for i in range(size):
        for name, dataset in datasets:
            question, answer = dataset[i]["question"].strip(), str(dataset[i]["answer"]).strip()
            if question in seen:
                continue
            try:
                Fraction(answer.replace(",", ""))
            except ValueError:
                raise ValueError(
                    f"math_reasoning_gym: generator {name!r} gave the non-numeric answer {answer!r}"
                ) from None
            seen.add(question)
            items.append((question, answer, name))
            if len(items) == n:
                return items
    return items


def _math_rows(items: list[tuple[str, str, str]]) -> list[dict]:
    return [_row(f"{q}\n\n{MATH_INSTRUCTION}", {"answer": a, "generator": g}) for q, a, g in items]


@cache
def _math_eval_pool() -> tuple[tuple[str, str, str], ...]:
    return tuple(_math_items(MATH_EVAL_POOL, MATH_EVAL_SEED, DEFAULT_MATH_GENERATORS, frozenset()))


def math_eval_set(n: int = 200) -> list[dict]:
    """The held-out math prompts: fixed seed, default generators, never in a training source."""
    if not 0 < n <= MATH_EVAL_POOL:
        raise ValueError(f"math_eval_set: n must be in 1..{MATH_EVAL_POOL}, got {n}")
    return _math_rows(list(_math_eval_pool()[:n]))


@PROMPT_SOURCES.register("math_reasoning_gym")
def math_reasoning_gym(
    n: int, seed: int, generators: tuple[str, ...] | list[str] = DEFAULT_MATH_GENERATORS
) -> list[dict]:
    """Math word and arithmetic problems; meta = {"answer": numeric gold as str, "generator": name}.

    Questions of the eval pool (see math_eval_set) are dropped, so train and eval are disjoint.

    Raises:
        ValueError: an unknown generator, one with non-numeric answers, or fewer than n prompts.
    """
    _check_n(n, "math_reasoning_gym")
    exclude = frozenset(question for question, _, _ in _math_eval_pool())
    return _take(_math_rows(_math_items(n, seed, tuple(generators), exclude)), n, "math_reasoning_gym")


# ---------------------------------------------------------------------------------------------
# Code: small function-writing tasks with unit tests and a reference solution each


@dataclass(frozen=True)
class CodeTask:
    entry_point: str
    params: str
    description: str
    """Completes "Write a Python function `f(params)` that ..."."""
    reference: str
    """A solution; tests/test_prompts.py runs every one against its tests in the sandbox."""
    cases: tuple[tuple[tuple, Any], ...]
    """(arguments, expected result); the first one is shown in the prompt as an example."""

    def prompt(self) -> str:
        args, expected = self.cases[0]
        return (
            f"Write a Python function `{self.entry_point}({self.params})` that {self.description}.\n"
            f"For example, `{self._call(args)}` should return `{expected!r}`."
        )

    def tests(self) -> str:
        return "\n".join(f"assert {self._call(args)} == {expected!r}" for args, expected in self.cases)

    def _call(self, args: tuple) -> str:
        return f"{self.entry_point}({', '.join(map(repr, args))})"


def _family(
    entry_point: str, params: str, description: str, reference: str, oracle: Callable, inputs: list[tuple]
) -> CodeTask:
    """A task whose expected results come from `oracle`, written independently of `reference`."""
    cases = tuple((args, oracle(*args)) for args in inputs)
    return CodeTask(entry_point, params, description, textwrap.dedent(reference).strip() + "\n", cases)


def _single(
    entry_point: str, params: str, description: str, reference: str, cases: list[tuple[tuple, Any]]
) -> CodeTask:
    """A task with hand-checked expected results."""
    return CodeTask(entry_point, params, description, textwrap.dedent(reference).strip() + "\n", tuple(cases))


def _ordinal(k: int) -> str:
    return {2: "second", 3: "third"}[k]


def _linear_recurrence(a0: int, a1: int, c: int) -> Callable[[int], int]:
    """x(n) for x(0) = a0, x(1) = a1, x(n+1) = c * x(n) + x(n-1)."""

    def term(n: int) -> int:
        x, y = a0, a1
        for _ in range(n):
            x, y = y, c * y + x
        return x

    return term


def _parameterised_tasks() -> list[CodeTask]:
    tasks = []
    for k in (2, 3, 5, 7):
        tasks.append(_family(
            "count_divisible", "nums", f"returns how many integers in the list `nums` are divisible by {k}",
            f"""
            def count_divisible(nums):
                count = 0
                for x in nums:
                    if x % {k} == 0:
                        count += 1
                return count
            """,
            lambda nums, k=k: len([x for x in nums if x % k == 0]),
            [([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 14, 15, 21, 35],), ([],), ([-6, 0, 13, 49, 25, 9],)],
        ))
    for a, b in ((3, 5), (2, 7), (4, 6)):
        tasks.append(_family(
            "sum_of_multiples", "n",
            f"returns the sum of all positive integers less than `n` that are divisible by {a} or {b}",
            f"""
            def sum_of_multiples(n):
                total = 0
                for i in range(1, n):
                    if i % {a} == 0 or i % {b} == 0:
                        total += i
                return total
            """,
            lambda n, a=a, b=b: sum(set(range(a, n, a)) | set(range(b, n, b))),
            [(10,), (1,), (50,), (1000,)],
        ))
    for length in (3, 4, 5):
        tasks.append(_family(
            "longer_than", "words",
            f"returns a list of the strings in `words` that have more than {length} characters, in their "
            "original order",
            f"""
            def longer_than(words):
                return [w for w in words if len(w) > {length}]
            """,
            lambda words, length=length: list(filter(lambda w: len(w) > length, words)),
            [(["a", "tree", "house", "elephant", "cat", "sky", "python"],), ([],), (["abcd", "abcde", "abcdef"],)],
        ))
    for letter in ("a", "e", "s"):
        tasks.append(_family(
            "count_letter", "text",
            f"returns how many times the letter '{letter}' appears in the string `text`, counting both lowercase "
            "and uppercase",
            f"""
            def count_letter(text):
                count = 0
                for ch in text:
                    if ch.lower() == {letter!r}:
                        count += 1
                return count
            """,
            lambda text, letter=letter: text.lower().count(letter),
            [("Banana Split",), ("",), ("EASY as Sunday Afternoon, Sally says",)],
        ))
    for p in (2, 3):
        tasks.append(_family(
            "power_sum", "nums", f"returns the sum of each number in `nums` raised to the power {p}",
            f"""
            def power_sum(nums):
                total = 0
                for x in nums:
                    total += x ** {p}
                return total
            """,
            lambda nums, p=p: sum(pow(x, p) for x in nums),
            [([1, 2, 3],), ([],), ([-2, 5, 0, 10],)],
        ))
    for lo, hi in ((0, 10), (-5, 5), (1, 100)):
        tasks.append(_family(
            "clamp_all", "nums",
            f"returns a new list in which each number of `nums` is limited to the range {lo} to {hi}: "
            f"values below {lo} become {lo} and values above {hi} become {hi}",
            f"""
            def clamp_all(nums):
                result = []
                for x in nums:
                    if x < {lo}:
                        result.append({lo})
                    elif x > {hi}:
                        result.append({hi})
                    else:
                        result.append(x)
                return result
            """,
            lambda nums, lo=lo, hi=hi: [max(lo, min(hi, x)) for x in nums],
            [([-20, -5, 0, 3, 7, 12, 150],), ([],), ([lo, hi, (lo + hi) // 2],)],
        ))
    for k in (1, 2, 3):
        tasks.append(_family(
            "rotate_left", "items",
            f"returns a new list with the elements of `items` rotated to the left by {k} position(s), "
            f"wrapping around (for a list of length n this is a rotation by {k} % n); an empty list gives an "
            "empty list",
            f"""
            def rotate_left(items):
                if not items:
                    return []
                shift = {k} % len(items)
                return items[shift:] + items[:shift]
            """,
            lambda items, k=k: [items[(i + k) % len(items)] for i in range(len(items))],
            [([1, 2, 3, 4, 5],), ([],), (["a", "b"],), ([7],)],
        ))
    for k in (2, 3, 4):
        tasks.append(_family(
            "chunk", "items",
            f"splits the list `items` into consecutive chunks of {k} elements and returns the list of chunks "
            "(each a list); the last chunk may be shorter",
            f"""
            def chunk(items):
                return [items[i:i + {k}] for i in range(0, len(items), {k})]
            """,
            lambda items, k=k: [items[j * k:(j + 1) * k] for j in range(-(-len(items) // k))],
            [([1, 2, 3, 4, 5, 6, 7],), ([],), (list(range(k)),)],
        ))
    for k in (1, 3, 13):
        shifted = string.ascii_lowercase[k:] + string.ascii_lowercase[:k]
        tasks.append(_family(
            "caesar", "text",
            f"shifts every lowercase letter a-z in `text` forward by {k} place(s) in the alphabet, wrapping from 'z' "
            "back to 'a', and leaves all other characters unchanged",
            f"""
            def caesar(text):
                result = ""
                for ch in text:
                    if "a" <= ch <= "z":
                        result += chr((ord(ch) - ord("a") + {k}) % 26 + ord("a"))
                    else:
                        result += ch
                return result
            """,
            lambda text, shifted=shifted: text.translate(str.maketrans(string.ascii_lowercase, shifted)),
            [("hello, world",), ("xyz ABC",), ("",)],
        ))
    for name, what, op, update in (
        ("running_total", "the sum of", lambda x, y: x + y, "current += x"),
        ("running_max", "the largest value among", max, "current = max(current, x)"),
        ("running_min", "the smallest value among", min, "current = min(current, x)"),
    ):
        tasks.append(_family(
            name, "nums", f"returns a list whose i-th element is {what} nums[0] through nums[i]",
            f"""
            def {name}(nums):
                result = []
                for i, x in enumerate(nums):
                    if i == 0:
                        current = x
                    else:
                        {update}
                    result.append(current)
                return result
            """,
            lambda nums, op=op: list(itertools.accumulate(nums, op)),
            [([3, 1, 4, 1, 5, 9, 2, 6],), ([],), ([-1, -3, 2],)],
        ))
    for k in (2, 3, 4):
        tasks.append(_family(
            "every_nth", "items",
            f"returns every {k}th element of `items` starting with the first one (the elements at indexes 0, {k}, "
            f"{2 * k}, ...)",
            f"""
            def every_nth(items):
                result = []
                for i in range(0, len(items), {k}):
                    result.append(items[i])
                return result
            """,
            lambda items, k=k: items[::k],
            [(list(range(10)),), ([],), (["a", "b", "c"],)],
        ))
    tasks.append(_family(
        "digit_sum", "n", "returns the sum of the decimal digits of the integer `n`, ignoring its sign",
        """
        def digit_sum(n):
            n = abs(n)
            total = 0
            while n > 0:
                total += n % 10
                n //= 10
            return total
        """,
        lambda n: sum(int(c) for c in str(abs(n))),
        [(12345,), (0,), (-907,)],
    ))
    tasks.append(_family(
        "digital_root", "n",
        "repeatedly sums the decimal digits of the non-negative integer `n` until a single digit remains, and "
        "returns that digit",
        """
        def digital_root(n):
            while n >= 10:
                n = sum(int(c) for c in str(n))
            return n
        """,
        lambda n: 0 if n == 0 else 1 + (n - 1) % 9,
        [(38,), (0,), (9,), (987654321,)],
    ))
    tasks.append(_family(
        "count_digits", "n", "returns how many decimal digits the integer `n` has, ignoring its sign (0 has one digit)",
        """
        def count_digits(n):
            n = abs(n)
            count = 1
            while n >= 10:
                n //= 10
                count += 1
            return count
        """,
        lambda n: len(str(abs(n))),
        [(-12345,), (0,), (7,), (1000000,)],
    ))
    for a, b in ((3, 5), (2, 7), (4, 9)):
        tasks.append(_family(
            "fizzbuzz_word", "n",
            f'returns "FizzBuzz" if `n` is divisible by both {a} and {b}, "Fizz" if it is divisible only by {a}, '
            f'"Buzz" if only by {b}, and otherwise `n` converted to a string',
            f"""
            def fizzbuzz_word(n):
                if n % {a} == 0 and n % {b} == 0:
                    return "FizzBuzz"
                if n % {a} == 0:
                    return "Fizz"
                if n % {b} == 0:
                    return "Buzz"
                return str(n)
            """,
            lambda n, a=a, b=b: ("Fizz" * (n % a == 0) + "Buzz" * (n % b == 0)) or str(n),
            [(a * b,), (a,), (b,), (1,), (2 * a * b,), (a * b + 1,)],
        ))
    for k in (2, 3):
        tasks.append(_family(
            "kth_largest", "nums",
            f"returns the {_ordinal(k)} largest distinct value in `nums`, or None if `nums` has fewer than {k} "
            "distinct values",
            f"""
            def kth_largest(nums):
                values = sorted(set(nums), reverse=True)
                if len(values) < {k}:
                    return None
                return values[{k - 1}]
            """,
            lambda nums, k=k: heapq.nlargest(k, set(nums))[-1] if len(set(nums)) >= k else None,
            [([4, 1, 7, 7, 3],), ([5, 5],), ([],), ([-1, -2, -3, -4],)],
        ))
    for name, first, second, factor, rule in (
        ("fibonacci", 0, 1, 1, "F(n) = F(n-1) + F(n-2)"),
        ("lucas", 2, 1, 1, "L(n) = L(n-1) + L(n-2)"),
        ("pell", 0, 1, 2, "P(n) = 2 * P(n-1) + P(n-2)"),
    ):
        letter = rule[0]
        tasks.append(_family(
            name, "n",
            f"returns the n-th {name.capitalize()} number, where {letter}(0) = {first}, {letter}(1) = {second} "
            f"and {rule}",
            f"""
            def {name}(n):
                previous, current = {first}, {second}
                if n == 0:
                    return previous
                for _ in range(n - 1):
                    previous, current = current, {factor} * current + previous
                return current
            """,
            _linear_recurrence(first, second, factor),
            [(10,), (0,), (1,), (2,), (20,)],
        ))
    for target in (0, 10):
        tasks.append(_family(
            "pairs_with_sum", "nums",
            f"returns how many pairs of positions i < j satisfy nums[i] + nums[j] == {target}",
            f"""
            def pairs_with_sum(nums):
                count = 0
                for i in range(len(nums)):
                    for j in range(i + 1, len(nums)):
                        if nums[i] + nums[j] == {target}:
                            count += 1
                return count
            """,
            lambda nums, target=target: sum(1 for x, y in itertools.combinations(nums, 2) if x + y == target),
            [([1, 9, 5, 5, 0, 10, -1, 1],), ([],), ([target // 2] * 4,)],
        ))
    for lo, hi in ((1, 10), (-3, 3)):
        tasks.append(_family(
            "count_in_range", "nums", f"returns how many numbers in `nums` lie between {lo} and {hi}, inclusive",
            f"""
            def count_in_range(nums):
                count = 0
                for x in nums:
                    if x >= {lo} and x <= {hi}:
                        count += 1
                return count
            """,
            lambda nums, lo=lo, hi=hi: len([x for x in nums if lo <= x <= hi]),
            [([0, 1, 5, 10, 11, -3, 3, -4],), ([],)],
        ))
    return tasks


def _single_tasks() -> list[CodeTask]:
    return [
        _single(
            "is_palindrome", "text",
            "returns True if `text` reads the same forwards and backwards when only letters and digits are "
            "considered and case is ignored, otherwise False",
            """
            def is_palindrome(text):
                cleaned = [c.lower() for c in text if c.isalnum()]
                return cleaned == cleaned[::-1]
            """,
            [(("A man, a plan, a canal: Panama",), True), (("hello",), False), (("",), True),
             (("No 'x' in Nixon",), True), (("ab",), False)],
        ),
        _single(
            "most_common_char", "text",
            "returns the character that occurs most often in the non-empty string `text`; if several characters "
            "tie, it returns the one that appears first in `text`",
            """
            def most_common_char(text):
                counts = {}
                for c in text:
                    counts[c] = counts.get(c, 0) + 1
                best = text[0]
                for c in text:
                    if counts[c] > counts[best]:
                        best = c
                return best
            """,
            [(("hello",), "l"), (("abcabc",), "a"), (("z",), "z"), (("aabbbcc",), "b"), (("a b c",), " ")],
        ),
        _single(
            "remove_duplicates", "items",
            "returns a list of the elements of `items` without duplicates, keeping the first occurrence of each "
            "in the original order",
            """
            def remove_duplicates(items):
                seen = []
                for x in items:
                    if x not in seen:
                        seen.append(x)
                return seen
            """,
            [(([3, 1, 3, 2, 1],), [3, 1, 2]), (([],), []), ((["a", "A", "a"],), ["a", "A"])],
        ),
        _single(
            "word_lengths", "sentence",
            "returns a list with the length of each word in `sentence`, where words are separated by whitespace",
            """
            def word_lengths(sentence):
                return [len(word) for word in sentence.split()]
            """,
            [(("the quick brown fox",), [3, 5, 5, 3]), (("",), []), (("  hi   there ",), [2, 5])],
        ),
        _single(
            "capitalize_words", "sentence",
            "returns `sentence` with the first character of every space-separated word in uppercase and the rest "
            "of each word unchanged, keeping all spaces as they are",
            """
            def capitalize_words(sentence):
                return " ".join(word[:1].upper() + word[1:] for word in sentence.split(" "))
            """,
            [(("hello world",), "Hello World"), (("a  b",), "A  B"), (("",), ""), (("iPhone x",), "IPhone X")],
        ),
        _single(
            "gcd_of_list", "nums",
            "returns the greatest common divisor of the absolute values of all integers in `nums`, and 0 for an "
            "empty list",
            """
            def gcd_of_list(nums):
                result = 0
                for x in nums:
                    a, b = result, abs(x)
                    while b:
                        a, b = b, a % b
                    result = a
                return result
            """,
            [(([12, 18, 24],), 6), (([],), 0), (([7],), 7), (([-4, 6],), 2), (([0, 5],), 5)],
        ),
        _single(
            "is_prime", "n", "returns True if the integer `n` is a prime number, otherwise False",
            """
            def is_prime(n):
                if n < 2:
                    return False
                i = 2
                while i * i <= n:
                    if n % i == 0:
                        return False
                    i += 1
                return True
            """,
            [((97,), True), ((2,), True), ((1,), False), ((0,), False), ((-7,), False), ((91,), False),
             ((7919,), True)],
        ),
        _single(
            "count_primes_below", "n", "returns how many prime numbers are less than `n`",
            """
            def count_primes_below(n):
                count = 0
                for k in range(2, n):
                    if all(k % d for d in range(2, int(k ** 0.5) + 1)):
                        count += 1
                return count
            """,
            [((10,), 4), ((2,), 0), ((0,), 0), ((3,), 1), ((100,), 25)],
        ),
        _single(
            "prime_factors", "n",
            "returns the list of prime factors of the integer `n` (n >= 2) in non-decreasing order, with repetition",
            """
            def prime_factors(n):
                factors = []
                d = 2
                while d * d <= n:
                    while n % d == 0:
                        factors.append(d)
                        n //= d
                    d += 1
                if n > 1:
                    factors.append(n)
                return factors
            """,
            [((12,), [2, 2, 3]), ((13,), [13]), ((360,), [2, 2, 2, 3, 3, 5]), ((2,), [2]), ((19946,), [2, 9973])],
        ),
        _single(
            "to_binary", "n",
            "returns the binary representation of the non-negative integer `n` as a string without any prefix",
            """
            def to_binary(n):
                if n == 0:
                    return "0"
                digits = ""
                while n > 0:
                    digits = str(n % 2) + digits
                    n //= 2
                return digits
            """,
            [((5,), "101"), ((0,), "0"), ((255,), "11111111"), ((1024,), "10000000000")],
        ),
        _single(
            "max_subarray_sum", "nums",
            "returns the largest sum of a non-empty contiguous sublist of the non-empty list `nums`",
            """
            def max_subarray_sum(nums):
                best = current = nums[0]
                for x in nums[1:]:
                    current = max(x, current + x)
                    best = max(best, current)
                return best
            """,
            [(([-2, 1, -3, 4, -1, 2, 1, -5, 4],), 6), (([-3, -1, -2],), -1), (([5],), 5), (([1, 2, 3],), 6)],
        ),
        _single(
            "flatten_once", "nested",
            "takes a list of lists and returns a single list with all their elements in order",
            """
            def flatten_once(nested):
                result = []
                for inner in nested:
                    result.extend(inner)
                return result
            """,
            [(([[1, 2], [3], []],), [1, 2, 3]), (([],), []), (([["a"], ["b", "c"]],), ["a", "b", "c"])],
        ),
        _single(
            "merge_sorted", "a, b",
            "merges the two lists `a` and `b`, each sorted in ascending order, into one sorted list",
            """
            def merge_sorted(a, b):
                result, i, j = [], 0, 0
                while i < len(a) and j < len(b):
                    if a[i] <= b[j]:
                        result.append(a[i])
                        i += 1
                    else:
                        result.append(b[j])
                        j += 1
                return result + a[i:] + b[j:]
            """,
            [(([1, 3, 5], [2, 4, 6]), [1, 2, 3, 4, 5, 6]), (([], [1]), [1]), (([1, 1], [1]), [1, 1, 1]),
             (([], []), [])],
        ),
        _single(
            "reverse_words", "sentence",
            "returns the whitespace-separated words of `sentence` in reverse order, joined by single spaces",
            """
            def reverse_words(sentence):
                return " ".join(reversed(sentence.split()))
            """,
            [(("hello big world",), "world big hello"), (("",), ""), (("  one   two ",), "two one")],
        ),
        _single(
            "snake_to_camel", "name",
            "converts a snake_case identifier such as 'max_value_found' into camelCase ('maxValueFound')",
            """
            def snake_to_camel(name):
                parts = name.split("_")
                return parts[0] + "".join(part.capitalize() for part in parts[1:])
            """,
            [(("max_value_found",), "maxValueFound"), (("x",), "x"), (("get_http_response",), "getHttpResponse")],
        ),
        _single(
            "camel_to_snake", "name",
            "converts a camelCase identifier such as 'maxValueFound' into snake_case ('max_value_found')",
            """
            def camel_to_snake(name):
                result = ""
                for c in name:
                    if c.isupper():
                        result += "_" + c.lower()
                    else:
                        result += c
                return result
            """,
            [(("maxValueFound",), "max_value_found"), (("x",), "x"), (("simpleTest",), "simple_test"),
             (("aB",), "a_b")],
        ),
        _single(
            "is_anagram", "a, b",
            "returns True if the strings `a` and `b` contain the same letters the same number of times, ignoring "
            "case and spaces, otherwise False",
            """
            def is_anagram(a, b):
                return sorted(a.replace(" ", "").lower()) == sorted(b.replace(" ", "").lower())
            """,
            [(("Listen", "Silent"), True), (("Dormitory", "Dirty room"), True), (("abc", "abd"), False),
             (("aab", "abb"), False), (("", ""), True)],
        ),
        _single(
            "transpose", "matrix",
            "returns the transpose of a rectangular matrix given as a list of rows (lists); an empty matrix gives []",
            """
            def transpose(matrix):
                return [list(row) for row in zip(*matrix)]
            """,
            [(([[1, 2, 3], [4, 5, 6]],), [[1, 4], [2, 5], [3, 6]]), (([[1]],), [[1]]), (([],), [])],
        ),
        _single(
            "triangle_type", "a, b, c",
            'returns "invalid" if the side lengths `a`, `b`, `c` cannot form a triangle with positive area, and '
            'otherwise "equilateral", "isosceles" or "scalene"',
            """
            def triangle_type(a, b, c):
                if min(a, b, c) <= 0 or a + b <= c or a + c <= b or b + c <= a:
                    return "invalid"
                if a == b == c:
                    return "equilateral"
                if a == b or b == c or a == c:
                    return "isosceles"
                return "scalene"
            """,
            [((3, 4, 5), "scalene"), ((3, 3, 3), "equilateral"), ((3, 3, 5), "isosceles"), ((5, 3, 3), "isosceles"),
             ((1, 2, 3), "invalid"), ((0, 1, 1), "invalid")],
        ),
        _single(
            "run_length", "text",
            "returns the run-length encoding of `text`: each run of a repeated character becomes the character "
            "followed by the length of the run",
            """
            def run_length(text):
                result = ""
                i = 0
                while i < len(text):
                    j = i
                    while j < len(text) and text[j] == text[i]:
                        j += 1
                    result += text[i] + str(j - i)
                    i = j
                return result
            """,
            [(("aaabcc",), "a3b1c2"), (("",), ""), (("x",), "x1"), (("aabbaa",), "a2b2a2")],
        ),
        _single(
            "is_balanced", "text",
            "returns True if the brackets (), [] and {} in `text` are balanced and properly nested, ignoring all "
            "other characters, otherwise False",
            """
            def is_balanced(text):
                pairs = {")": "(", "]": "[", "}": "{"}
                stack = []
                for c in text:
                    if c in "([{":
                        stack.append(c)
                    elif c in pairs:
                        if not stack or stack.pop() != pairs[c]:
                            return False
                return not stack
            """,
            [(("([]{})",), True), (("([)]",), False), (("",), True), (("a(b)c]",), False), (("((",), False),
             (("{[()()]}x",), True)],
        ),
        _single(
            "roman_to_int", "s",
            "converts a Roman numeral string (letters I, V, X, L, C, D, M, with subtractive forms such as IV and CM) "
            "to an integer",
            """
            def roman_to_int(s):
                values = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}
                total = 0
                for i, c in enumerate(s):
                    if i + 1 < len(s) and values[c] < values[s[i + 1]]:
                        total -= values[c]
                    else:
                        total += values[c]
                return total
            """,
            [(("MCMXCIV",), 1994), (("III",), 3), (("IV",), 4), (("IX",), 9), (("LVIII",), 58)],
        ),
        _single(
            "int_to_roman", "n",
            "converts an integer from 1 to 3999 to a Roman numeral, using subtractive forms such as IV and CM",
            """
            def int_to_roman(n):
                symbols = [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"),
                           (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]
                result = ""
                for value, symbol in symbols:
                    while n >= value:
                        result += symbol
                        n -= value
                return result
            """,
            [((1994,), "MCMXCIV"), ((3,), "III"), ((4,), "IV"), ((58,), "LVIII"), ((3999,), "MMMCMXCIX")],
        ),
        _single(
            "is_leap_year", "year",
            "returns True if `year` is a leap year in the Gregorian calendar (divisible by 4, except century years "
            "that are not divisible by 400), otherwise False",
            """
            def is_leap_year(year):
                return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
            """,
            [((2024,), True), ((1900,), False), ((2000,), True), ((2023,), False)],
        ),
        _single(
            "product_except_self", "nums",
            "returns a list whose i-th element is the product of all numbers in `nums` except nums[i]",
            """
            def product_except_self(nums):
                result = []
                for i in range(len(nums)):
                    product = 1
                    for j, x in enumerate(nums):
                        if j != i:
                            product *= x
                    result.append(product)
                return result
            """,
            [(([1, 2, 3, 4],), [24, 12, 8, 6]), (([5],), [1]), (([2, 0, 3],), [0, 6, 0]), (([],), [])],
        ),
        _single(
            "count_vowels", "text",
            "returns how many vowels (a, e, i, o, u, in either case) the string `text` contains",
            """
            def count_vowels(text):
                return sum(1 for c in text.lower() if c in "aeiou")
            """,
            [(("Hello World",), 3), (("",), 0), (("AEIOU xyz",), 5), (("rhythm",), 0)],
        ),
    ]


@cache
def code_task_table() -> tuple[CodeTask, ...]:
    """Every code task, in a fixed order."""
    return tuple(_parameterised_tasks() + _single_tasks())


@PROMPT_SOURCES.register("code_tasks")
def code_tasks(n: int, seed: int) -> list[dict]:
    """Function-writing tasks; meta = {"entry_point": name, "tests": assert lines}.

    Raises:
        ValueError: n exceeds the number of tasks (see code_task_table).
    """
    _check_n(n, "code_tasks")
    tasks = list(code_task_table())
    random.Random(seed).shuffle(tasks)
    rows = [_row(t.prompt(), {"entry_point": t.entry_point, "tests": t.tests()}) for t in tasks]
    return _take(rows, n, "code_tasks")


# ---------------------------------------------------------------------------------------------
# Instruction following: IFEval-style prompts checked by lm-eval's IFEval checkers

IFEVAL_TOPICS = (
    "the history of the bicycle", "how bees make honey", "why sleep matters", "a rainy day in a big city",
    "learning a second language", "starting a vegetable garden", "the life of a lighthouse keeper",
    "the invention of the printing press", "why people love dogs", "a trip to the mountains", "the water cycle",
    "how volcanoes form", "the importance of recycling", "a day at the beach", "the first moon landing",
    "how computers store information", "cooking at home", "a small bakery in Paris", "the rules of chess",
    "how trains changed travel", "why the sky is blue", "the life cycle of a butterfly",
    "a study app for students", "walking every day", "a robot who learns to paint", "the history of coffee",
    "preparing for a job interview", "the solar system", "a friendship between a cat and a crow",
    "the future of electric cars",
)
IFEVAL_TASKS = (
    "Write a short blog post about {topic}.", "Write a letter to a friend about {topic}.",
    "Write a short story about {topic}.", "Write a short essay about {topic}.",
    "Explain {topic} to a ten-year-old.", "Write a speech about {topic}.", "Write a poem about {topic}.",
)
_KEYWORDS = ("energy", "journey", "simple", "future", "balance", "bright", "history", "nature", "community",
             "curious", "window", "morning", "garden", "river", "patience", "signal", "market", "silver")
_FORBIDDEN = ("very", "really", "thing", "good", "important", "many", "also", "just")
_FIRST_WORDS = ("today", "first", "however", "finally", "imagine", "yesterday", "sometimes")
_END_PHRASES = ("Any other questions?", "Is there anything else I can help with?", "Let me know what you think.",
                "That is all for today.")
_RELATIONS = ("less than", "at least")


def _ifeval_kwargs(instruction_id: str, rng: random.Random) -> dict:
    """Random kwargs for one instruction, as lm-eval's `build_description` takes them. No value is
    falsy: lm-eval's scoring drops falsy kwargs and would then draw random ones."""
    relation = rng.choice(_RELATIONS)
    if instruction_id == "length_constraints:nth_paragraph_first_word":
        paragraphs = rng.randint(2, 4)
        return {"num_paragraphs": paragraphs, "nth_paragraph": rng.randint(1, paragraphs),
                "first_word": rng.choice(_FIRST_WORDS)}
    draw = {
        "keywords:existence": lambda: {"keywords": rng.sample(_KEYWORDS, 2)},
        "keywords:frequency": lambda: {"keyword": rng.choice(_KEYWORDS), "frequency": rng.randint(2, 4),
                                       "relation": relation},
        "keywords:forbidden_words": lambda: {"forbidden_words": rng.sample(_FORBIDDEN, 2)},
        "keywords:letter_frequency": lambda: {"letter": rng.choice("abcdefghilmnoprstuw"),
                                              "let_frequency": rng.randint(3, 10), "let_relation": relation},
        "length_constraints:number_words": lambda: {"num_words": rng.randrange(50, 301, 25), "relation": relation},
        "length_constraints:number_sentences": lambda: {"num_sentences": rng.randint(2, 10), "relation": relation},
        "length_constraints:number_paragraphs": lambda: {"num_paragraphs": rng.randint(2, 5)},
        "detectable_content:number_placeholders": lambda: {"num_placeholders": rng.randint(1, 4)},
        "detectable_content:postscript": lambda: {"postscript_marker": rng.choice(("P.S.", "P.P.S"))},
        "detectable_format:number_bullet_lists": lambda: {"num_bullets": rng.randint(2, 5)},
        "detectable_format:number_highlighted_sections": lambda: {"num_highlights": rng.randint(1, 4)},
        "detectable_format:multiple_sections": lambda: {"section_spliter": rng.choice(("Section", "SECTION")),
                                                        "num_sections": rng.randint(2, 5)},
        "startend:end_checker": lambda: {"end_phrase": rng.choice(_END_PHRASES)},
        "change_case:capital_word_frequency": lambda: {"capital_frequency": rng.randint(2, 6),
                                                       "capital_relation": relation},
    }
    return draw[instruction_id]() if instruction_id in draw else {}


IFEVAL_INSTRUCTIONS = (
    "keywords:existence", "keywords:frequency", "keywords:forbidden_words", "keywords:letter_frequency",
    "length_constraints:number_words", "length_constraints:number_sentences", "length_constraints:number_paragraphs",
    "length_constraints:nth_paragraph_first_word", "detectable_content:number_placeholders",
    "detectable_content:postscript", "detectable_format:number_bullet_lists",
    "detectable_format:number_highlighted_sections", "detectable_format:multiple_sections",
    "detectable_format:json_format", "detectable_format:title", "combination:two_responses",
    "startend:end_checker", "startend:quotation", "change_case:english_lowercase", "change_case:english_capital",
    "change_case:capital_word_frequency", "punctuation:no_comma",
)
"""The instruction types used: those lm-eval checks from the response alone (no language detection,
no prompt repetition, no fixed yes/no answers)."""
# "Section 1" splitters are case-sensitive, so they cannot be all-lowercase or all-capital.
_EXTRA_CONFLICTS = {
    "detectable_format:multiple_sections": {"change_case:english_lowercase", "change_case:english_capital"},
}


@cache
def _ifeval_registry():
    """lm-eval's IFEval instruction registry, imported once punkt_tab is in place."""
    from skillweave.rules.instructions import ensure_punkt_tab

    ensure_punkt_tab()
    from lm_eval.tasks.ifeval import instructions_registry

    return instructions_registry


@cache
def _ifeval_conflicts() -> dict[str, frozenset[str]]:
    registry = _ifeval_registry()
    conflicts = {k: set(v) for k, v in registry.INSTRUCTION_CONFLICTS.items()}
    for a, others in _EXTRA_CONFLICTS.items():
        conflicts[a] |= others
    conflicts = registry.conflict_make(conflicts)  # symmetric, and each conflicts with itself
    return {k: frozenset(v) for k, v in conflicts.items()}


@PROMPT_SOURCES.register("ifeval_synthetic")
def ifeval_synthetic(n: int, seed: int, max_instructions: int = 3) -> list[dict]:
    """Topic x task x 1..max_instructions non-conflicting IFEval instructions with random kwargs,
    rendered as IFEval does (the task, then each checker's own description);
    meta = {"instruction_id_list": [...], "kwargs": [{...}, ...]} as in IFEval rows.

    Raises:
        ValueError: max_instructions < 1, or fewer than n distinct prompts after 50 * n draws.
    """
    _check_n(n, "ifeval_synthetic")
    if max_instructions < 1:
        raise ValueError(f"ifeval_synthetic: max_instructions must be >= 1, got {max_instructions}")
    checkers, conflicts = _ifeval_registry().INSTRUCTION_DICT, _ifeval_conflicts()
    rng = random.Random(seed)
    rows, seen = [], set()
    for _ in range(50 * n):
        if len(rows) == n:
            break
        ids: list[str] = []
        for _ in range(rng.randint(1, max_instructions)):
            allowed = [i for i in IFEVAL_INSTRUCTIONS if not any(i in conflicts[c] for c in ids)]
            if allowed:
                ids.append(rng.choice(allowed))
        kwargs = [_ifeval_kwargs(i, rng) for i in ids]
        task = rng.choice(IFEVAL_TASKS).format(topic=rng.choice(IFEVAL_TOPICS))
        descriptions = [checkers[i](i).build_description(**kw) for i, kw in zip(ids, kwargs, strict=True)]
        prompt = " ".join([task, *descriptions])
        if prompt in seen:
            continue
        seen.add(prompt)
        rows.append(_row(prompt, {"instruction_id_list": ids, "kwargs": kwargs}))
    return _take(rows, n, "ifeval_synthetic")


# ---------------------------------------------------------------------------------------------
# Dialogue: open requests, written here rather than taken from a dataset (AlpacaEval is the eval set)

DIALOGUE_TOPICS = (
    "learning to play the guitar", "budgeting on a small income", "caring for houseplants",
    "planning a week-long trip to Japan", "training for a first 10k run", "writing a cover letter",
    "keeping a sourdough starter alive", "choosing a first programming language", "reducing food waste at home",
    "preparing for a job interview", "saving for retirement", "sleeping better", "learning a language as an adult",
    "making friends in a new city", "hosting a dinner party", "starting a podcast", "composting in an apartment",
    "teaching a child to ride a bike", "negotiating a salary", "writing a short story", "studying for exams",
    "running effective meetings", "photographing the night sky", "buying a used car", "brewing coffee at home",
    "getting started with birdwatching", "decorating a small apartment", "staying focused while working from home",
    "giving a wedding toast", "training a puppy",
)
"""Gerund phrases, so every topic reads naturally in every template."""
DIALOGUE_TEMPLATES = (
    "What are the most important things to know about {topic}?", "Can you give me some practical tips for {topic}?",
    "I'm new to {topic}. Where should I start?", "What are common mistakes people make when {topic}?",
    "Explain the basics of {topic} in simple terms.", "Write a short step-by-step guide to {topic}.",
    "My friend is struggling with {topic}. What advice would you give them?",
    "Give me a one-week plan for {topic}.", "What tools or resources would help with {topic}?",
    "Why do so many people find {topic} difficult, and how can they make it easier?",
    "Compare two different approaches to {topic}.", "Summarize the key ideas behind {topic} for a busy reader.",
)
DIALOGUE_STYLES = (
    "", " Please keep it short.", " Use a numbered list.", " Explain it as you would to a friend.",
    " Answer in two or three paragraphs.",
)


@PROMPT_SOURCES.register("dialogue_requests")
def dialogue_requests(n: int, seed: int) -> list[dict]:
    """Open requests: a seeded draw without repeats from topic x template x style;
    meta = {"topic": the topic} (the dialogue rules need nothing else).

    Raises:
        ValueError: n exceeds the number of combinations.
    """
    _check_n(n, "dialogue_requests")
    combos = list(itertools.product(DIALOGUE_TOPICS, DIALOGUE_TEMPLATES, DIALOGUE_STYLES))
    random.Random(seed).shuffle(combos)
    rows = [_row(template.format(topic=topic) + style, {"topic": topic}) for topic, template, style in combos[:n]]
    return _take(rows, n, "dialogue_requests")

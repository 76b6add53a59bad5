"""Writes tasks.jsonl, the code domain's tasks, from the templates below:
`python -m skillweave.domains.code.build_tasks` (a dev script; the pipeline reads only the file).

Three kinds of task: hand-written single tasks, small families from the first version (a few
constants each), and generated families (`_generated_tasks`): one template per operation,
instantiated over constants, units, orders, bit positions, bases, ... Each instance states its
constant in the prompt, and its expected results come from an oracle written independently of the
reference, so tests/test_prompts.py can check that every reference passes its own tests and that no
two tasks with the same function name accept each other's reference (distinct behaviour, not just
wording).

The split is data, not a draw. A task's id is its position in `task_table` and its function name
(`code/<index>_<entry_point>`), so the table is append-only: add tasks at the end, never insert,
reorder or delete (a stored id that the table no longer yields stops the build). A rebuild keeps the
stored split of every task already in the file and puts each new task in "train"; to hold a task
out, set its "split" to "eval" in tasks.jsonl by hand, and later rebuilds keep it. An unchanged table
rebuilds the file byte for byte. The 120 eval tasks were first drawn by the former
skillweave/code_tasks.py (`random.Random(20_251_125)` shuffled the 325 table positions, the first
120 were held out); since then the file is the record.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import operator
import re
import string
import textwrap
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Optional

from skillweave.domains.code.tasks import TASKS_FILE, read_tasks, tasks_digest


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
            [([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 14, 15, 21, 35],), ([],), ([-6, 0, 13, 49, 25, 9],), ([5, 10, 7],)],
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
            [([0, 1, 5, 10, 11, -3, 3, -4],), ([],), ([2, 5, 9],)],
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




# ---------------------------------------------------------------------------------------------
# Generated families: one template per operation, instantiated over constants. Every family's test
# inputs are chosen so that its members disagree on at least one of them (a test checks this).


def _plural(k: int, noun: str) -> str:
    return f"{k} {noun}" if k == 1 else f"{k} {noun}s"


_ORDINALS = {1: "first", 2: "second", 3: "third", 4: "fourth"}
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _in_base(n: int, b: int) -> str:
    return _DIGITS[n] if n < b else _in_base(n // b, b) + _DIGITS[n % b]


def _grouped_sort(words: list, key: Callable, reverse: bool = False) -> list:
    """A stable sort written as grouping: the oracle of the sort_words family."""
    return [w for k in sorted(set(map(key, words)), reverse=reverse) for w in words if key(w) == k]


def _list_families() -> list[CodeTask]:
    tasks = []
    for t in (-5, 0, 3, 10, 50, 100):
        tasks.append(_family(
            "keep_greater", "nums", f"returns the numbers in `nums` that are greater than {t}, in their original order",
            f"""
            def keep_greater(nums):
                result = []
                for x in nums:
                    if x > {t}:
                        result.append(x)
                return result
            """,
            lambda nums, t=t: list(filter(lambda x: x > t, nums)),
            [([-10, -5, -1, 0, 2, 3, 4, 10, 11, 50, 51, 100, 101, 250],), ([],), ([t, t + 1, t - 1],)],
        ))
    for k in (-1, 2, 3, 5, 10):
        tasks.append(_family(
            "scale_all", "nums", f"returns a new list with every number of `nums` multiplied by {k}",
            f"""
            def scale_all(nums):
                result = []
                for x in nums:
                    result.append(x * {k})
                return result
            """,
            lambda nums, k=k: list(map(lambda x: k * x, nums)),
            [([1, -2, 0, 7],), ([],), ([100],)],
        ))
    for c in (-10, -1, 1, 7, 100):
        tasks.append(_family(
            "shift_all", "nums", f"returns a new list in which {c} is added to every number of `nums`",
            f"""
            def shift_all(nums):
                return [x + ({c}) for x in nums]
            """,
            lambda nums, c=c: list(map(lambda x: c + x, nums)),
            [([1, -2, 0, 7],), ([],), ([100],)],
        ))
    for t in (0, 5, 10, 100):
        tasks.append(_family(
            "sum_below", "nums",
            f"returns the sum of the numbers in `nums` that are less than {t} (0 if there are none)",
            f"""
            def sum_below(nums):
                total = 0
                for x in nums:
                    if x < {t}:
                        total += x
                return total
            """,
            lambda nums, t=t: sum(x for x in nums if not x >= t),
            [([-3, 0, 4, 5, 9, 10, 99, 100, 150],), ([],), ([t],)],
        ))
    for m in (7, 10, 13, 97, 1000):
        tasks.append(_family(
            "sum_modulo", "nums",
            f"returns the sum of the integers in `nums` modulo {m}, as a number from 0 to {m - 1} (a negative sum "
            "also gives a result in that range)",
            f"""
            def sum_modulo(nums):
                total = 0
                for x in nums:
                    total = (total + x) % {m}
                return total
            """,
            lambda nums, m=m: sum(nums) - m * math.floor(Fraction(sum(nums), m)),
            [([123, 456, 789],), ([],), ([-5],), ([1000, 2000, 3],)],
        ))
    for k in (2, 3, 4):
        tasks.append(_family(
            "repeat_each", "items", f"returns a list in which every element of `items` appears {k} times in a row, "
            "in the original order",
            f"""
            def repeat_each(items):
                result = []
                for x in items:
                    for _ in range({k}):
                        result.append(x)
                return result
            """,
            lambda items, k=k: [x for x in items for _ in range(k)],
            [([1, 2, 3],), ([],), (["a"],)],
        ))
    for k in (2, 3, 4):
        tasks.append(_family(
            "window_sums", "nums",
            f"returns the list of sums of every {k} consecutive numbers in `nums` (a window sliding one position at "
            f"a time); a list with fewer than {k} numbers gives []",
            f"""
            def window_sums(nums):
                result = []
                for i in range(len(nums) - {k - 1}):
                    result.append(sum(nums[i:i + {k}]))
                return result
            """,
            lambda nums, k=k: [sum(nums[i + j] for j in range(k)) for i in range(max(0, len(nums) - k + 1))],
            [([1, 2, 3, 4, 5, 6],), ([],), ([7, 8],), ([1, 1, 1, 1],)],
        ))
    for k in (2, 3):
        tasks.append(_family(
            "window_max", "nums",
            f"returns the list of the largest values of every {k} consecutive numbers in `nums` (a window sliding "
            f"one position at a time); a list with fewer than {k} numbers gives []",
            f"""
            def window_max(nums):
                result = []
                for i in range(len(nums) - {k - 1}):
                    result.append(max(nums[i:i + {k}]))
                return result
            """,
            lambda nums, k=k: [heapq.nlargest(1, nums[i : i + k])[0] for i in range(max(0, len(nums) - k + 1))],
            [([1, 3, 2, 5, 4, 0, 0],), ([],), ([7],)],
        ))
    for k in (0, 1, 2, 3, 5):
        tasks.append(_family(
            "pairs_with_difference", "nums",
            f"returns how many pairs of positions i < j satisfy abs(nums[i] - nums[j]) == {k}",
            f"""
            def pairs_with_difference(nums):
                count = 0
                for i in range(len(nums)):
                    for j in range(i + 1, len(nums)):
                        if abs(nums[i] - nums[j]) == {k}:
                            count += 1
                return count
            """,
            lambda nums, k=k: sum(1 for x, y in itertools.combinations(nums, 2) if max(x, y) - min(x, y) == k),
            [([1, 2, 3, 4, 6, 6, 9],), ([],), ([k, 0],)],
        ))
    orders = (
        ("non-decreasing order (each number is at least the one before it)", "<=", operator.le),
        ("strictly increasing order (each number is larger than the one before it)", "<", operator.lt),
        ("non-increasing order (each number is at most the one before it)", ">=", operator.ge),
        ("strictly decreasing order (each number is smaller than the one before it)", ">", operator.gt),
    )
    for words, op, holds in orders:
        tasks.append(_family(
            "is_sorted", "nums",
            f"returns True if the list `nums` is in {words}, otherwise False; an empty or one-element list counts "
            "as sorted",
            f"""
            def is_sorted(nums):
                for i in range(1, len(nums)):
                    if not nums[i - 1] {op} nums[i]:
                        return False
                return True
            """,
            lambda nums, holds=holds: all(holds(x, y) for x, y in itertools.pairwise(nums)),
            [([1, 2, 2, 3],), ([],), ([5],), ([3, 2, 1],), ([3, 3, 1],), ([1, 3, 2],), ([1, 2, 3],), ([4, 4],)],
        ))
    conditions = (
        ("negative", "x < 0", lambda x: str(x).startswith("-")),
        ("even", "x % 2 == 0", lambda x: str(x)[-1] in "02468"),
        ("odd", "x % 2 == 1", lambda x: str(x)[-1] in "13579"),
        ("greater than 10", "x > 10", lambda x: x >= 11),
        ("equal to zero", "x == 0", lambda x: not x),
        ("divisible by 3", "x % 3 == 0", lambda x: sum(map(int, str(abs(x)))) % 3 == 0),
    )
    for words, test, check in conditions:
        tasks.append(_family(
            "first_index", "nums",
            f"returns the index of the first number in `nums` that is {words}, or -1 if there is none",
            f"""
            def first_index(nums):
                for i, x in enumerate(nums):
                    if {test}:
                        return i
                return -1
            """,
            lambda nums, check=check: next((i for i in range(len(nums)) if check(nums[i])), -1),
            [([5, 7, 12, 0, -3, 4, 9, 11, 2],), ([],), ([7, 11, 2, 0, -4, 3],), ([1],)],
        ))
        tasks.append(_family(
            "last_index", "nums",
            f"returns the index of the last number in `nums` that is {words}, or -1 if there is none",
            f"""
            def last_index(nums):
                for i in range(len(nums) - 1, -1, -1):
                    x = nums[i]
                    if {test}:
                        return i
                return -1
            """,
            lambda nums, check=check: max((i for i in range(len(nums)) if check(nums[i])), default=-1),
            [([5, 7, 12, 0, -3, 4, 9, 11, 2],), ([],), ([7, 11, 2, 0, -4, 3, 1],), ([1],)],
        ))
    for k in (1, 2, 3):
        what = (
            "a list holding only the most frequent value in `items` (of equally frequent values, the one that "
            "appears first in `items`), or [] for an empty list"
            if k == 1 else
            f"a list of the {k} most frequent values in `items`, most frequent first, where values with equal counts "
            f"are ordered by their first appearance in `items`; if there are fewer than {k} distinct values it "
            "returns all of them"
        )
        tasks.append(_family(
            "most_frequent", "items", f"returns {what}",
            f"""
            def most_frequent(items):
                counts, first = {{}}, {{}}
                for i, x in enumerate(items):
                    counts[x] = counts.get(x, 0) + 1
                    first.setdefault(x, i)
                ranked = sorted(counts, key=lambda x: (-counts[x], first[x]))
                return ranked[:{k}]
            """,
            lambda items, k=k: [v for v, _ in Counter(items).most_common(k)],
            [([3, 1, 3, 2, 1, 3, 4],), ([],), (["b", "a", "b", "a", "c"],)],
        ))
    for k in (1, 2, 3, 4):
        tasks.append(_family(
            "from_end", "items",
            f"returns the {_ORDINALS[k]} element from the end of the list `items` (the last element is the first "
            f"from the end), or None if `items` has fewer than {_plural(k, 'element')}",
            f"""
            def from_end(items):
                if len(items) < {k}:
                    return None
                return items[len(items) - {k}]
            """,
            lambda items, k=k: list(reversed(items))[k - 1] if k <= len(items) else None,
            [([10, 20, 30, 40, 50],), ([],), (["x", "y"],)],
        ))
    return tasks


def _number_families() -> list[CodeTask]:
    tasks = []
    many = int("".join(str(d) * d for d in range(1, 10)) + "0" * 10)  # digit d occurs d times, 0 ten times
    for d in range(10):
        tasks.append(_family(
            "count_digit", "n",
            f"returns how many times the digit {d} occurs in the decimal representation of the non-negative "
            "integer `n`",
            f"""
            def count_digit(n):
                if n == 0:
                    return {int(d == 0)}
                count = 0
                while n > 0:
                    if n % 10 == {d}:
                        count += 1
                    n //= 10
                return count
            """,
            lambda n, d=d: str(n).count(str(d)),
            [(30300130,), (0,), (many,), (7,)],
        ))
    polygons = ("triangular", "square", "pentagonal", "hexagonal", "heptagonal", "octagonal", "nonagonal", "decagonal")
    for s, name in enumerate(polygons, start=3):
        tasks.append(_family(
            f"{name}_number", "n",
            f"returns the n-th {name} number for an integer n >= 0, given by the formula "
            f"({s - 2} * n * n - ({s - 4}) * n) / 2 (always a whole number; return an int)",
            f"""
            def {name}_number(n):
                return ({s - 2} * n * n - ({s - 4}) * n) // 2
            """,
            lambda n, s=s: sum(1 + k * (s - 2) for k in range(n)),
            [(5,), (0,), (1,), (2,), (10,)],
        ))
    for b in (2, 3, 4, 5, 6, 7, 8, 9, 12, 16):
        letters = " (lowercase letters a, b, ... for digits above 9)" if b > 10 else ""
        tasks.append(_family(
            f"to_base_{b}", "n",
            f"returns the representation of the non-negative integer `n` in base {b}{letters} as a string "
            "without any prefix; 0 gives '0'",
            f"""
            def to_base_{b}(n):
                digits = "0123456789abcdef"
                if n == 0:
                    return "0"
                result = ""
                while n > 0:
                    result = digits[n % {b}] + result
                    n //= {b}
                return result
            """,
            lambda n, b=b: _in_base(n, b),
            [(255,), (0,), (1,), (b,), (1000000,)],
        ))
    for b in (2, 3, 5, 7, 8, 16):
        letters = " (lowercase letters a, b, ... for digits above 9)" if b > 10 else ""
        tasks.append(_family(
            f"from_base_{b}", "digits",
            f"converts the string `digits`, a non-negative integer written in base {b}{letters}, to an int",
            f"""
            def from_base_{b}(digits):
                value = 0
                for c in digits:
                    value = value * {b} + "0123456789abcdef".index(c)
                return value
            """,
            lambda digits, b=b: int(digits, b),
            [(_in_base(255, b),), ("0",), ("10",), (_in_base(1000000, b),), ("1",)],
        ))
    for p in (1, 2, 3, 4, 5):
        tasks.append(_family(
            "sum_of_powers", "n",
            f"returns 1**{p} + 2**{p} + ... + n**{p} for the non-negative integer `n` (0 when n is 0)",
            f"""
            def sum_of_powers(n):
                total = 0
                for i in range(1, n + 1):
                    total += i ** {p}
                return total
            """,
            lambda n, p=p: sum(math.prod([i] * p) for i in range(n + 1)),
            [(4,), (0,), (1,), (10,)],
        ))
    for a, d in ((0, 3), (5, 2), (10, -3), (1, 7), (-4, 4), (100, -10)):
        tasks.append(_family(
            "arithmetic_term", "n",
            f"returns the n-th term (counting from n = 0) of the arithmetic sequence that starts at {a} and changes "
            f"by {d} at each step",
            f"""
            def arithmetic_term(n):
                value = {a}
                for _ in range(n):
                    value += {d}
                return value
            """,
            lambda n, a=a, d=d: a + n * d,
            [(3,), (0,), (10,)],
        ))
    for a, r in ((1, 2), (3, 3), (2, 5), (1, -2), (5, 10)):
        tasks.append(_family(
            "geometric_term", "n",
            f"returns the n-th term (counting from n = 0) of the geometric sequence that starts at {a} and is "
            f"multiplied by {r} at each step",
            f"""
            def geometric_term(n):
                value = {a}
                for _ in range(n):
                    value *= {r}
                return value
            """,
            lambda n, a=a, r=r: a * r**n,
            [(3,), (0,), (10,)],
        ))
    for k in (2, 5, 10, 25, 100):
        tasks.append(_family(
            "round_to_multiple", "n",
            f"rounds the integer `n` to the nearest multiple of {k}; a number exactly halfway between two multiples "
            "is rounded up (towards the larger multiple)",
            f"""
            def round_to_multiple(n):
                q, r = divmod(n, {k})
                if 2 * r >= {k}:
                    return (q + 1) * {k}
                return q * {k}
            """,
            lambda n, k=k: k * math.floor(Fraction(n, k) + Fraction(1, 2)),
            [(37,), (0,), (-37,), (k // 2,), (-(k // 2),), (1234,)],
        ))
    for k in (3, 7, 10, 12):
        tasks.append(_family(
            "floor_multiple", "n", f"returns the largest multiple of {k} that is less than or equal to the integer `n`",
            f"""
            def floor_multiple(n):
                return n - n % {k}
            """,
            lambda n, k=k: max(m for m in range(n - k + 1, n + 1) if m % k == 0),
            [(100,), (0,), (-1,), (k,), (k - 1,)],
        ))
    for p, q, a0, a1 in ((1, 2, 0, 1), (2, 1, 2, 2), (3, -2, 0, 1), (1, 1, 3, 4), (2, -1, 1, 3), (1, 3, 1, 1),
                         (4, -4, 0, 1), (1, -1, 1, 2)):
        def term(n: int, p=p, q=q, a0=a0, a1=a1) -> int:
            xs = [a0, a1]
            while len(xs) <= n:
                xs.append(p * xs[-1] + q * xs[-2])
            return xs[n]

        tasks.append(_family(
            "sequence_value", "n",
            f"returns x(n) for the sequence with x(0) = {a0}, x(1) = {a1} and x(n) = {p} * x(n-1) + ({q}) * x(n-2) "
            "for n >= 2",
            f"""
            def sequence_value(n):
                if n == 0:
                    return {a0}
                previous, current = {a0}, {a1}
                for _ in range(n - 1):
                    previous, current = current, {p} * current + ({q}) * previous
                return current
            """,
            term,
            [(10,), (0,), (1,), (2,), (15,)],
        ))
    for k in (4, 6, 9, 10, 12, 15):
        tasks.append(_family(
            "lcm_with", "n", f"returns the least common multiple of the positive integer `n` and {k}",
            f"""
            def lcm_with(n):
                a, b = n, {k}
                while b:
                    a, b = b, a % b
                return n * {k} // a
            """,
            lambda n, k=k: math.lcm(n, k),
            [(8,), (1,), (k,), (30,), (45,), (100,)],
        ))
    for k in (4, 6, 9, 10, 12, 18):
        tasks.append(_family(
            "gcd_with", "n", f"returns the greatest common divisor of the positive integer `n` and {k}",
            f"""
            def gcd_with(n):
                a, b = n, {k}
                while b:
                    a, b = b, a % b
                return a
            """,
            lambda n, k=k: math.gcd(n, k),
            [(8,), (1,), (k,), (30,), (45,), (100,)],
        ))
    for k in (2, 3, 4, 5, 10):
        tasks.append(_family(
            "is_power_of", "n",
            f"returns True if the integer `n` is a power of {k} (equal to {k} ** e for some integer e >= 0, so 1 "
            "counts), otherwise False",
            f"""
            def is_power_of(n):
                if n < 1:
                    return False
                while n % {k} == 0:
                    n //= {k}
                return n == 1
            """,
            lambda n, k=k: n in {k**e for e in range(64)},
            [(k**3,), (1,), (0,), (-k,), (k * k + 1,), (8,), (32,), (81,), (125,), (1000,), (100,)],
        ))
    for b in (0, 1, 2, 3, 5, 7):
        tasks.append(_family(
            "bit_is_set", "n",
            f"returns True if bit {b} of the non-negative integer `n` is 1 (bit 0 is the least significant), "
            "otherwise False",
            f"""
            def bit_is_set(n):
                return (n >> {b}) & 1 == 1
            """,
            lambda n, b=b: bin(n)[2:].zfill(b + 1)[-(b + 1)] == "1",
            [(37,), (0,), (1,), (255,), (1024,), (160,), (12,)],
        ))
    for b in (0, 2, 4):
        def bit(n: int, b=b) -> bool:
            return bin(n)[2:].zfill(b + 1)[-(b + 1)] == "1"

        for name, words, ref, oracle in (
            ("set_bit", "set to 1", f"n | (1 << {b})", lambda n, b=b, bit=bit: n + (0 if bit(n) else 2**b)),
            ("clear_bit", "cleared to 0", f"n & ~(1 << {b})", lambda n, b=b, bit=bit: n - (2**b if bit(n) else 0)),
            ("toggle_bit", "flipped (0 becomes 1, 1 becomes 0)", f"n ^ (1 << {b})",
             lambda n, b=b, bit=bit: n + (-(2**b) if bit(n) else 2**b)),
        ):
            tasks.append(_family(
                name, "n",
                f"returns the non-negative integer `n` with its bit {b} {words}, where bit 0 is the least "
                "significant",
                f"""
                def {name}(n):
                    return {ref}
                """,
                oracle,
                [(37,), (0,), (1,), (255,), (1024,), (20,)],
            ))
    units = (
        ("celsius_to_fahrenheit", "degrees Celsius to degrees Fahrenheit", "F = C * 9 / 5 + 32",
         "value * 1.8 + 32", lambda v: v * 9 / 5 + 32, [(100,), (0,), (-40,), (36.6,), (21.5,)]),
        ("fahrenheit_to_celsius", "degrees Fahrenheit to degrees Celsius", "C = (F - 32) * 5 / 9",
         "(value - 32) / 1.8", lambda v: (v - 32) * 5 / 9, [(212,), (32,), (-40,), (100,), (0,)]),
        ("km_to_miles", "kilometres to miles", "1 km = 0.621371 miles",
         "value * 0.621371", lambda v: v / (1 / 0.621371), [(10,), (0,), (42.195,), (1,)]),
        ("miles_to_km", "miles to kilometres", "1 mile = 1.609344 km",
         "value * 1.609344", lambda v: 1.609344 * v, [(10,), (0,), (26.2,), (1,)]),
        ("kg_to_pounds", "kilograms to pounds", "1 kg = 2.20462 pounds",
         "value * 2.20462", lambda v: 2.20462 * v, [(70,), (0,), (1,), (2.5,)]),
        ("pounds_to_kg", "pounds to kilograms", "1 kg = 2.20462 pounds",
         "value / 2.20462", lambda v: v * (1 / 2.20462), [(150,), (0,), (1,), (22,)]),
        ("inches_to_cm", "inches to centimetres", "1 inch = 2.54 cm",
         "value * 2.54", lambda v: 2.54 * v, [(12,), (0,), (1,), (5.5,)]),
        ("cm_to_inches", "centimetres to inches", "1 inch = 2.54 cm",
         "value / 2.54", lambda v: v * 100 / 254, [(30,), (0,), (2.54,), (180,)]),
        ("liters_to_gallons", "litres to US gallons", "1 litre = 0.264172 gallons",
         "value * 0.264172", lambda v: 0.264172 * v, [(10,), (0,), (3.785,), (1,)]),
        ("hours_to_seconds", "hours to seconds", "1 hour = 3600 seconds",
         "value * 3600", lambda v: v * 60 * 60, [(2,), (0,), (1.5,), (0.25,)]),
    )
    for name, what, formula, ref, convert, inputs in units:
        tasks.append(_family(
            name, "value",
            f"converts `value` from {what} ({formula}) and returns the result rounded to 2 decimal places",
            f"""
            def {name}(value):
                return round({ref}, 2)
            """,
            lambda v, convert=convert: round(convert(v), 2),
            inputs,
        ))
    return tasks


def _text_families() -> list[CodeTask]:
    tasks = []
    for c, w in (("0", 5), ("*", 8), (" ", 10), ("-", 3), ("0", 8), (".", 6)):
        tasks.append(_family(
            "pad_left", "text",
            f"returns the string `text` padded on the left with the character {c!r} to a length of {w}; a string "
            f"that already has {w} or more characters is returned unchanged",
            f"""
            def pad_left(text):
                while len(text) < {w}:
                    text = {c!r} + text
                return text
            """,
            lambda text, c=c, w=w: text.rjust(w, c),
            [("42",), ("",), ("abcdefghijk",), ("abcd",)],
        ))
    for k in (1, 2, 3, 4, 5):
        tasks.append(_family(
            "first_words", "sentence",
            f"returns the first {_plural(k, 'word')} of `sentence` (words are separated by whitespace) joined by "
            "single spaces, or all the words if there are fewer",
            f"""
            def first_words(sentence):
                return " ".join(sentence.split()[:{k}])
            """,
            lambda sentence, k=k: " ".join(w for i, w in enumerate(sentence.split()) if i < k),
            [("the quick  brown fox jumps over",), ("",), ("one two",)],
        ))
    for c in "abcstw":
        tasks.append(_family(
            "words_starting_with", "sentence",
            f"returns the words of `sentence` (split on whitespace) that start with the letter '{c}' in either case, "
            "in their original order",
            f"""
            def words_starting_with(sentence):
                result = []
                for word in sentence.split():
                    if word[0].lower() == {c!r}:
                        result.append(word)
                return result
            """,
            lambda sentence, c=c: [w for w in sentence.split() if w.lower().startswith(c)],
            [("Tom took a big Bus to Sam's cafe; Will waited at the station, talking",), ("",),
             (f"{c.upper()}x {c}y z",)],
        ))
    for a, b in ((" ", "_"), ("a", "4"), ("e", "3"), (".", ","), ("-", " "), ("o", "0")):
        tasks.append(_family(
            "replace_char", "text", f"returns the string `text` with every {a!r} replaced by {b!r}",
            f"""
            def replace_char(text):
                result = ""
                for ch in text:
                    result += {b!r} if ch == {a!r} else ch
                return result
            """,
            lambda text, a=a, b=b: text.replace(a, b),
            [("a-b. one more-time",), ("",), ("aeo. -",)],
        ))
    for chars in ("aeiou", " ", ",.!?", "0123456789", "xyz"):
        tasks.append(_family(
            "remove_chars", "text", f"returns the string `text` without any of the characters in the string {chars!r}",
            f"""
            def remove_chars(text):
                return "".join(ch for ch in text if ch not in {chars!r})
            """,
            lambda text, chars=chars: text.translate({ord(ch): None for ch in chars}),
            [("Hello, world! 42 xyz?",), ("",)],
        ))
    categories = (
        ("count_uppercase", "uppercase letters A-Z", "'A' <= ch <= 'Z'", str.isupper),
        ("count_lowercase", "lowercase letters a-z", "'a' <= ch <= 'z'", str.islower),
        ("count_digit_chars", "digits 0-9", "'0' <= ch <= '9'", str.isdigit),
        ("count_whitespace", "whitespace characters (spaces, tabs, newlines)", "ch in ' \\t\\n\\r'", str.isspace),
        ("count_letters", "letters a-z or A-Z", "'a' <= ch.lower() <= 'z'", str.isalpha),
        ("count_punctuation", "punctuation characters (those in Python's string.punctuation)",
         "ch in string.punctuation", lambda ch: ch in string.punctuation),
    )
    for name, what, test, is_one in categories:
        imports = "import string\n\n" if "string." in test else ""
        tasks.append(_family(
            name, "text", f"returns how many characters of the ASCII string `text` are {what}",
            imports + textwrap.dedent(f"""
            def {name}(text):
                count = 0
                for ch in text:
                    if {test}:
                        count += 1
                return count
            """),
            lambda text, is_one=is_one: len([ch for ch in text if is_one(ch)]),
            [("Hello World! 123, ok?\tYes\n",), ("",), ("aB9 ;",)],
        ))
    for k in (1, 2, 3, 4, 5, 6):
        tasks.append(_family(
            "count_words_of_length", "sentence",
            f"returns how many whitespace-separated words of `sentence` have exactly {_plural(k, 'character')}",
            f"""
            def count_words_of_length(sentence):
                count = 0
                for word in sentence.split():
                    if len(word) == {k}:
                        count += 1
                return count
            """,
            lambda sentence, k=k: sum(len(w) == k for w in sentence.split()),
            # word length j + 1 occurs 6 - j times: every member counts differently
            [("the cat sat on a mat",), ("",),
             (" ".join("abcdef"[j] * (j + 1) for j in range(6) for _ in range(6 - j)),)],
        ))
    vowels = lambda w: sum(ch in "aeiouAEIOU" for ch in w)  # noqa: E731
    orders = (
        ("by length, shortest first, keeping words of equal length in their original order", "key=len",
         lambda ws: _grouped_sort(ws, len)),
        ("by length, longest first, keeping words of equal length in their original order",
         "key=lambda w: -len(w)", lambda ws: _grouped_sort(ws, len, reverse=True)),
        ("by their last character, keeping words with the same last character in their original order",
         "key=lambda w: w[-1]", lambda ws: _grouped_sort(ws, lambda w: w[-1])),
        ("in reverse alphabetical order (as Python compares strings)", "reverse=True", lambda ws: sorted(ws)[::-1]),
        ("alphabetically ignoring case, keeping words that are equal ignoring case in their original order",
         "key=str.lower", lambda ws: _grouped_sort(ws, str.lower)),
        ("by their number of vowels (a, e, i, o, u in either case), fewest first, keeping ties in their original "
         "order", "key=lambda w: sum(ch in 'aeiouAEIOU' for ch in w)", lambda ws: _grouped_sort(ws, vowels)),
    )
    for words, key, oracle in orders:
        tasks.append(_family(
            "sort_words", "words", f"returns a new list of the non-empty strings in `words` sorted {words}",
            f"""
            def sort_words(words):
                return sorted(words, {key})
            """,
            oracle,
            [(["pear", "Fig", "banana", "kiwi", "apple", "Date", "fig"],), ([],), (["bb", "a", "ccc"],)],
        ))
    for s in ("aa", "ab", "ana", "the", "11", "xyx"):
        tasks.append(_family(
            "count_overlapping", "text",
            f"returns how many times the substring {s!r} occurs in `text`, counting overlapping occurrences",
            f"""
            def count_overlapping(text):
                count = 0
                for i in range(len(text) - {len(s) - 1}):
                    if text[i:i + {len(s)}] == {s!r}:
                        count += 1
                return count
            """,
            lambda text, s=s: len(re.findall(f"(?={re.escape(s)})", text)),
            [("banana and the aardvark ate 111 xyxyx abab",), ("",), (s * 3,)],
        ))
    for c in ("a", "0", "1", " ", "x"):
        tasks.append(_family(
            "longest_run", "text",
            f"returns the length of the longest run of consecutive {c!r} characters in `text` (0 if there is none)",
            f"""
            def longest_run(text):
                best = current = 0
                for ch in text:
                    current = current + 1 if ch == {c!r} else 0
                    best = max(best, current)
                return best
            """,
            lambda text, c=c: max((len(m) for m in re.findall(f"{re.escape(c)}+", text)), default=0),
            [("aaaaa 0000 111  x",), ("",), (c,), (f"{c}{c}b{c}",)],
        ))
    for k in (2, 3, 4):
        tasks.append(_family(
            "mask_all_but_last", "text",
            f"returns the string `text` with every character except the last {k} replaced by '#' (a string of {k} "
            "or fewer characters is returned unchanged)",
            f"""
            def mask_all_but_last(text):
                if len(text) <= {k}:
                    return text
                return "#" * (len(text) - {k}) + text[-{k}:]
            """,
            lambda text, k=k: "".join("#" if i < len(text) - k else ch for i, ch in enumerate(text)),
            [("4556123412345678",), ("",), ("ab",), ("hello",)],
        ))
    for k in (2, 3, 4):
        tasks.append(_family(
            "frequent_chars", "text",
            f"returns a sorted list of the distinct characters that occur at least {k} times in the string `text`",
            f"""
            def frequent_chars(text):
                counts = {{}}
                for ch in text:
                    counts[ch] = counts.get(ch, 0) + 1
                return sorted(ch for ch in counts if counts[ch] >= {k})
            """,
            lambda text, k=k: sorted(c for c, n in Counter(text).items() if n >= k),
            [("mississippi banana",), ("",), ("aaaa bbb cc",)],
        ))
    for k in (1, 2, 3):
        tasks.append(_family(
            "rotate_right", "text",
            f"returns the string `text` rotated to the right by {_plural(k, 'character')}: the last characters move "
            f"to the front (for a string of length n the shift is {k} % n); an empty string stays empty",
            f"""
            def rotate_right(text):
                if not text:
                    return ""
                shift = {k} % len(text)
                return text[len(text) - shift:] + text[:len(text) - shift]
            """,
            lambda text, k=k: "".join(text[(i - k) % len(text)] for i in range(len(text))),
            [("abcdef",), ("",), ("xy",), ("q",)],
        ))
    for w in (10, 15, 20):
        tasks.append(_family(
            "wrap_words", "text",
            f"splits `text` into lines of at most {w} characters, greedily putting as many whitespace-separated words "
            f"on each line as fit, joined by single spaces, and returns the list of lines (no word is longer than {w} "
            "characters; an empty text gives [])",
            f"""
            def wrap_words(text):
                lines, line = [], ""
                for word in text.split():
                    if not line:
                        line = word
                    elif len(line) + 1 + len(word) <= {w}:
                        line += " " + word
                    else:
                        lines.append(line)
                        line = word
                if line:
                    lines.append(line)
                return lines
            """,
            lambda text, w=w: textwrap.wrap(text, w),
            [("the quick brown fox jumps over the lazy dog and keeps running far away",), ("",), ("short",)],
        ))
    for c in (",", ".", " ", "_"):
        tasks.append(_family(
            "group_digits", "n",
            f"returns the integer `n` as a string with its digits in groups of three from the right, separated by "
            f"{c!r} (a minus sign stays in front)",
            f"""
            def group_digits(n):
                digits = str(abs(n))
                groups = []
                while len(digits) > 3:
                    groups.insert(0, digits[-3:])
                    digits = digits[:-3]
                groups.insert(0, digits)
                return ("-" if n < 0 else "") + {c!r}.join(groups)
            """,
            lambda n, c=c: f"{n:,}".replace(",", c),
            [(1234567,), (0,), (-9876543210,), (999,), (1000,)],
        ))
    return tasks


def _matrix_families() -> list[CodeTask]:
    tasks = []
    for what, fn, oracle in (("sum", "sum", sum), ("largest value", "max", lambda xs: sorted(xs)[-1]),
                             ("smallest value", "min", lambda xs: sorted(xs)[0])):
        slug = {"sum": "sums", "max": "maxima", "min": "minima"}[fn]
        for axis in ("row", "column"):
            name = f"{axis}_{slug}"
            body = f"[{fn}(row) for row in matrix]" if axis == "row" else f"[{fn}(column) for column in zip(*matrix)]"
            tasks.append(_family(
                name, "matrix",
                f"returns a list with the {what} of each {axis} of `matrix`, a non-empty rectangular list of lists "
                "of numbers",
                f"""
                def {name}(matrix):
                    return {body}
                """,
                (lambda m, o=oracle: [o(r) for r in m]) if axis == "row"
                else (lambda m, o=oracle: [o([r[j] for r in m]) for j in range(len(m[0]))]),
                [([[1, 2, 3], [4, 5, 6]],), ([[7]],), ([[3, -1], [0, 8], [5, 5]],)],
            ))
    for name, what, index in (("diagonal_sum", "main diagonal (top left to bottom right)", "i"),
                              ("anti_diagonal_sum", "anti-diagonal (top right to bottom left)", "len(matrix) - 1 - i")):
        tasks.append(_family(
            name, "matrix", f"returns the sum of the {what} of the square matrix `matrix` (a list of rows)",
            f"""
            def {name}(matrix):
                total = 0
                for i in range(len(matrix)):
                    total += matrix[i][{index}]
                return total
            """,
            (lambda m: sum(m[i][i] for i in range(len(m)))) if name == "diagonal_sum"
            else (lambda m: sum(row[-1 - i] for i, row in enumerate(m))),
            [([[1, 2, 3], [4, 5, 6], [7, 8, 10]],), ([[5]],), ([[1, 2], [3, 4]],), ([],)],
        ))
    return tasks


def _generated_tasks() -> list[CodeTask]:
    return _list_families() + _number_families() + _text_families() + _matrix_families()


def task_table() -> tuple[CodeTask, ...]:
    """Every code task, in a fixed order: new tasks go at the end (task ids are positions)."""
    return tuple(_parameterised_tasks() + _single_tasks() + _generated_tasks())


def task_id(index: int, task: CodeTask) -> str:
    return f"code/{index}_{task.entry_point}"


def task_rows(tasks: Sequence[CodeTask], splits: Mapping[str, str]) -> list[dict]:
    """One tasks.jsonl row per task, in table order: a task keeps its split in `splits` (by task_id),
    a new one goes to "train".

    Raises:
        ValueError: a task_id of `splits` is not in `tasks` (a task moved or was removed).
    """
    rows = [
        {"task_id": task_id(i, t), "prompt": t.prompt(), "tests": t.tests(), "entry_point": t.entry_point,
         "reference": t.reference, "split": splits.get(task_id(i, t), "train")}
        for i, t in enumerate(tasks)
    ]
    lost = sorted(splits.keys() - {row["task_id"] for row in rows})
    if lost:
        raise ValueError(f"the code task table no longer yields the stored tasks {lost}: append new tasks at the end instead")
    return rows


def build(out: Path = TASKS_FILE, stored: Path = TASKS_FILE, tasks: Optional[Sequence[CodeTask]] = None) -> list[dict]:
    """Writes the rows of `tasks` (default: task_table()) to `out`, with the splits stored in `stored`."""
    splits = {row["task_id"]: row["split"] for row in read_tasks(stored)}
    rows = task_rows(task_table() if tasks is None else tasks, splits)
    out.write_bytes("".join(json.dumps(row) + "\n" for row in rows).encode("utf-8"))
    return rows


if __name__ == "__main__":
    written = build()
    held_out = sum(row["split"] == "eval" for row in written)
    print(f"{TASKS_FILE}: {len(written)} tasks, {held_out} eval, digest {tasks_digest()}")

"""The dialogue domain's prompts: open requests written here rather than taken from a dataset (source
`dialogue_requests`); AlpacaEval's instructions are the eval set."""

from __future__ import annotations

import itertools
import logging
import random

from skillweave.prompts import PROMPT_SOURCES, check_n, row, take

log = logging.getLogger(__name__)


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
        DataError: n exceeds the number of combinations.
    """
    check_n(n, "dialogue_requests")
    combos = list(itertools.product(DIALOGUE_TOPICS, DIALOGUE_TEMPLATES, DIALOGUE_STYLES))
    random.Random(seed).shuffle(combos)
    rows = [row(template.format(topic=topic) + style, {"topic": topic}) for topic, template, style in combos[:n]]
    return take(rows, n, "dialogue_requests")

"""A small DiscoFuse-style sentence-fusion data set, generated deterministically from templates.

Two sentences in, one fused sentence out, with the fusion phenomena of DiscoFuse (Geva et al.,
2019): discourse connectives (so, but, because, although, after), VP coordination, relative clauses,
apposition, and the pronoun that replaces the repeated name:

    "Tom was tired. Tom went to bed early."  ->  "Tom was tired, so he went to bed early."
    "Anna bought a lamp. The lamp was red."  ->  "Anna bought a lamp that was red."

`fusion_splits` gives disjoint train / eval / test sets (no source sentence pair is shared);
`write_fusion_dataset` writes them as JSONL with `source` and `target` columns, the format
`bertgen train --train-file` reads.
"""

from __future__ import annotations

import json
import os
from typing import Callable

from converters.files import atomic_write_text

import numpy as np

MALE = ["Tom", "James", "David", "Peter", "Mark", "Paul", "Daniel", "Robert", "Kevin", "Brian", "Adam", "Jack"]
FEMALE = ["Anna", "Mary", "Sarah", "Lisa", "Emma", "Julia", "Laura", "Kate", "Alice", "Helen", "Susan", "Nina"]

STATE_ACTION = [("tired", "went to bed early"), ("hungry", "ate a sandwich"), ("cold", "put on a coat"),
                ("thirsty", "drank some water"), ("bored", "read a book"), ("late", "took a taxi"),
                ("sick", "stayed at home"), ("happy", "sang a song"), ("lost", "asked for directions"),
                ("sleepy", "made some coffee"), ("sad", "called a friend"), ("busy", "skipped lunch")]
WANT_LACK = [("buy a car", "money"), ("play tennis", "racket"), ("write a letter", "pen"),
             ("bake a cake", "flour"), ("go swimming", "towel"), ("watch a movie", "time"),
             ("take a photo", "camera"), ("paint the wall", "brush"), ("make tea", "sugar"),
             ("ride to work", "bike"), ("plant a tree", "shovel"), ("send the package", "stamp")]
ACTIONS = ["opened the door", "closed the window", "cleaned the kitchen", "fed the cat", "washed the car",
           "painted the fence", "watered the plants", "cooked dinner", "fixed the sink", "walked the dog",
           "made the bed", "read the news", "wrote an email", "ironed a shirt"]
OBJECTS = ["car", "bike", "lamp", "chair", "hat", "dress", "bag", "phone", "table", "coat", "clock", "cup"]
COLORS = ["red", "blue", "green", "black", "white", "yellow", "brown", "gray"]
JOBS = ["doctor", "teacher", "lawyer", "nurse", "pilot", "farmer", "writer", "chef", "painter", "singer"]
CITIES = ["Paris", "London", "Berlin", "Rome", "Madrid", "Vienna", "Dublin", "Boston", "Chicago", "Toronto",
          "Sydney", "Tokyo"]
WEATHER = ["raining", "snowing", "very cold", "too windy", "stormy", "very hot", "foggy"]
INDOORS = ["stayed inside", "closed the windows", "lit the fire", "watched television", "played chess",
           "cancelled the picnic"]
TASKS = ["work", "dinner", "the report", "the exam", "the book", "the meeting", "school", "the race"]
AFTER = ["went home", "took a nap", "called a friend", "went for a walk", "had a shower", "watched a film",
         "ate some cake", "went shopping"]

Template = Callable[[np.random.Generator], tuple[str, str]]


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _person(rng):
    if rng.integers(2):
        return _pick(rng, MALE), "he"
    return _pick(rng, FEMALE), "she"


def _other(rng, name):
    while True:
        other, _ = _person(rng)
        if other != name:
            return other


def _so(rng):
    name, pron = _person(rng)
    state, action = _pick(rng, STATE_ACTION)
    return f"{name} was {state}. {name} {action}.", f"{name} was {state}, so {pron} {action}."


def _but(rng):
    name, pron = _person(rng)
    want, lack = _pick(rng, WANT_LACK)
    return f"{name} wanted to {want}. {name} had no {lack}.", f"{name} wanted to {want}, but {pron} had no {lack}."


def _and(rng):
    name, _ = _person(rng)
    first, second = rng.choice(len(ACTIONS), 2, replace=False)
    return f"{name} {ACTIONS[first]}. {name} {ACTIONS[second]}.", f"{name} {ACTIONS[first]} and {ACTIONS[second]}."


def _relative(rng):
    name, _ = _person(rng)
    thing, color = _pick(rng, OBJECTS), _pick(rng, COLORS)
    return f"{name} bought a {thing}. The {thing} was {color}.", f"{name} bought a {thing} that was {color}."


def _apposition(rng):
    name, _ = _person(rng)
    job, city = _pick(rng, JOBS), _pick(rng, CITIES)
    return f"{name} is a {job}. {name} lives in {city}.", f"{name}, a {job}, lives in {city}."


def _because(rng):
    name, _ = _person(rng)
    action, weather = _pick(rng, INDOORS), _pick(rng, WEATHER)
    return f"{name} {action}. It was {weather}.", f"{name} {action} because it was {weather}."


def _although(rng):
    name, pron = _person(rng)
    other = _other(rng, name)
    state = _pick(rng, ["very busy", "tired", "ill", "late", "sad"])
    return (f"{name} was {state}. {name} helped {other}.",
            f"Although {name} was {state}, {pron} helped {other}.")


def _after(rng):
    name, pron = _person(rng)
    task, action = _pick(rng, TASKS), _pick(rng, AFTER)
    return f"{name} finished {task}. Then {name} {action}.", f"After {name} finished {task}, {pron} {action}."


TEMPLATES: tuple[Template, ...] = (_so, _but, _and, _relative, _apposition, _because, _although, _after)


def make_fusion_pairs(n: int, seed: int = 0, exclude=()) -> list[dict[str, str]]:
    """`n` distinct {"source", "target"} pairs, templates in turn, slots drawn from `seed`;
    sources in `exclude` (and repeats) are skipped, so small templates run out first."""
    rng = np.random.default_rng(seed)
    seen = set(exclude)
    pairs: list[dict[str, str]] = []
    attempts = 0
    while len(pairs) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"cannot draw {n} distinct fusion pairs; ask for fewer")
        source, target = TEMPLATES[attempts % len(TEMPLATES)](rng)
        if source not in seen:
            seen.add(source)
            pairs.append({"source": source, "target": target})
    return pairs


def fusion_splits(n_train: int = 3000, n_eval: int = 200, n_test: int = 100,
                  seed: int = 0) -> dict[str, list[dict[str, str]]]:
    """Disjoint train / eval / test splits (no source shared between them)."""
    splits: dict[str, list[dict[str, str]]] = {}
    used: set[str] = set()
    for offset, (name, n) in enumerate((("train", n_train), ("eval", n_eval), ("test", n_test))):
        splits[name] = make_fusion_pairs(n, seed=seed * 7919 + offset, exclude=used)
        used.update(p["source"] for p in splits[name])
    return splits


def write_jsonl(path: str, pairs) -> None:
    atomic_write_text(path, "".join(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs))


def write_fusion_dataset(directory: str, n_train: int = 3000, n_eval: int = 200, n_test: int = 100,
                         seed: int = 0) -> dict[str, str]:
    """Write train.jsonl, eval.jsonl and test.jsonl into `directory`; returns {split: path}."""
    os.makedirs(directory, exist_ok=True)
    paths = {}
    for name, pairs in fusion_splits(n_train, n_eval, n_test, seed).items():
        paths[name] = os.path.join(directory, f"{name}.jsonl")
        write_jsonl(paths[name], pairs)
    return paths

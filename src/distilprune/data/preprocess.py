"""Tweet preprocessing as named, composable steps.

Text steps (:data:`STEPS`) map a string to a string; record steps (``keyword``, ``location``)
prefix a field of the record (Kaggle disaster-tweet columns). :func:`build_preprocessor` runs
the chosen steps in the fixed pipeline order of :data:`STEP_ORDER`, whatever order they are
listed in, so that e.g. ``html`` always runs before ``urls`` and ``hashtags`` before
``lowercase`` (CamelCase splitting needs the case).
"""

from __future__ import annotations

import html as html_lib
import math
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from urllib.parse import unquote

import emoji as emoji_lib

from distilprune.errors import UserError

Step = Callable[[str], str]
Preprocessor = Callable[..., str]

URL_TOKEN = "URL"
USER_TOKEN = "@USER"

_URL_RE = re.compile(r"(?:https?://|(?<![@\w])www\.)\S+", re.IGNORECASE)
_USER_RE = re.compile(r"(?<![A-Za-z0-9_])@[A-Za-z0-9_]+")
_HASHTAG_RE = re.compile(r"(?<![A-Za-z0-9_&])#([A-Za-z0-9_]+)")
_CAMEL_RE = re.compile(r"[A-Z]+[a-z]*|[a-z]+|\d+")
_CAPS_TAIL_RE = re.compile(r"([A-Z]{2,})([a-z]+)")
_SPACE_RE = re.compile(r"\s+")
# Text-presentation symbols the emoji package also lists (the Kaggle tweets only have them as
# mojibake, e.g. "RÌ©union"); they are replaced only when followed by U+FE0F.
_TEXT_SYMBOLS = frozenset("\u00a9\u00ae\u2122")
_EMPTY_VALUES = frozenset({"", "nan", "none", "null"})


def html(text: str) -> str:
    """Unescape HTML entities (``&amp;`` → ``&``), also double-escaped ones."""
    for _ in range(3):
        unescaped = html_lib.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    return text


def make_urls(token: str = URL_TOKEN) -> Step:
    """A step replacing http(s)/www links with `` token ``."""
    return lambda text: _URL_RE.sub(f" {token} ", text)


def make_users(token: str = USER_TOKEN) -> Step:
    """A step replacing ``@mentions`` with ``token``."""
    return lambda text: _USER_RE.sub(token, text)


@lru_cache(maxsize=1)
def _wordsegment():
    import wordsegment

    wordsegment.load()
    return wordsegment


def _split_caps(word: str) -> list[str]:
    """``CAfire`` → ``CA fire``, ``NASAFire`` → ``NASA Fire``: the likelier tail word wins."""
    match = _CAPS_TAIL_RE.fullmatch(word)
    if not match:
        return [word]
    caps, tail = match.groups()
    counts = _wordsegment().UNIGRAMS
    if counts.get((caps[-1] + tail).lower(), 0) > counts.get(tail, 0):
        return [caps[:-1], caps[-1] + tail]
    return [caps, tail]


@lru_cache(maxsize=50_000)
def split_hashtag(tag: str) -> str:
    """``WildFires`` → ``wild fires``; all-lowercase tags go through ``wordsegment``."""
    words: list[str] = []
    for part in filter(None, tag.split("_")):
        if part.islower() and part.isalnum():
            words.extend(_wordsegment().segment(part))
        else:
            for word in _CAMEL_RE.findall(part) or [part]:
                words.extend(_split_caps(word))
    return " ".join(words).lower()


def hashtags(text: str) -> str:
    """Strip ``#`` from hashtags and split them into lower-case words."""
    return _HASHTAG_RE.sub(lambda m: f" {split_hashtag(m.group(1))} ", text)


def _emoji_words(chars: str, data: dict) -> str:
    if chars in _TEXT_SYMBOLS:
        return chars
    name = data.get("en", "").strip(":").replace("_", " ")
    return f" {name} " if name else " "


@lru_cache(maxsize=1)
def _emoji_chars() -> frozenset[str]:
    """Every non-ASCII character occurring in some emoji (a cheap pre-filter)."""
    return frozenset(c for e in emoji_lib.EMOJI_DATA for c in e if not c.isascii())


def emoji(text: str) -> str:
    """Replace emoji with their names as words (🔥 → `` fire ``)."""
    if text.isascii() or _emoji_chars().isdisjoint(text):
        return text
    return emoji_lib.replace_emoji(text, replace=_emoji_words)


def lowercase(text: str) -> str:
    """Lower-case the text."""
    return text.lower()


def whitespace(text: str) -> str:
    """Collapse runs of whitespace (newlines included) to one space and strip."""
    return _SPACE_RE.sub(" ", text).strip()


STEPS: dict[str, Step] = {
    "html": html,
    "urls": make_urls(),
    "users": make_users(),
    "hashtags": hashtags,
    "emoji": emoji,
    "lowercase": lowercase,
    "whitespace": whitespace,
}
RECORD_STEPS = ("keyword", "location")
STEP_ORDER = ("keyword", "location", *STEPS)
DEFAULT_TWEET_STEPS = ["html", "urls", "users", "hashtags", "emoji", "whitespace"]
PRESETS = {"tweet": DEFAULT_TWEET_STEPS, "default": DEFAULT_TWEET_STEPS, "none": []}


def parse_steps(spec: str | Sequence[str] | None) -> list[str]:
    """``"html,urls"`` (or a list) → validated step names in pipeline order.

    Presets: ``tweet``/``default`` (:data:`DEFAULT_TWEET_STEPS`) and ``none``; they combine
    with step names, e.g. ``"tweet,keyword"``.
    """
    if spec is None:
        return []
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    chosen: set[str] = set()
    for raw in names:
        name = raw.strip().lower()
        if not name:
            continue
        if name in PRESETS:
            chosen.update(PRESETS[name])
        elif name in STEP_ORDER:
            chosen.add(name)
        else:
            valid = ", ".join([*STEP_ORDER, *PRESETS])
            raise UserError(f"unknown preprocessing step {raw.strip()!r}; valid: {valid}")
    return [name for name in STEP_ORDER if name in chosen]


def _field(record: dict | None, key: str) -> str:
    value = (record or {}).get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    value = whitespace(unquote(str(value)))
    return "" if value.lower() in _EMPTY_VALUES else value


def _protecting(step: Step, tokens: list[str]) -> Step:
    """Wrap ``step`` so it leaves the placeholder ``tokens`` untouched."""
    if not tokens:
        return step
    pattern = re.compile("(" + "|".join(re.escape(t) for t in tokens) + ")")

    def run(text: str) -> str:
        parts = pattern.split(text)
        return "".join(p if i % 2 else step(p) for i, p in enumerate(parts))

    return run


def build_preprocessor(
    steps: str | Sequence[str],
    token_overrides: dict[str, str] | None = None,
) -> Preprocessor:
    """A function ``(text, record=None) -> text`` applying ``steps`` in pipeline order.

    ``token_overrides`` may set the placeholders: ``{"urls": "HTTPURL", "users": "@user"}``.
    ``record`` may carry ``keyword`` (``%20``-encoded) and ``location``; the ``keyword`` and
    ``location`` steps prefix them as ``"keyword: … | location: … | text"`` (empty/NaN values
    are skipped), and the text steps then apply to the whole string. ``lowercase`` leaves the
    placeholder tokens as they are.
    """
    names = parse_steps(steps)
    overrides = dict(token_overrides or {})
    unknown = set(overrides) - {"urls", "users"}
    if unknown:
        raise UserError(f"token overrides only apply to urls and users, not {sorted(unknown)}")
    tokens = {"urls": overrides.get("urls", URL_TOKEN), "users": overrides.get("users", USER_TOKEN)}
    fns = {**STEPS, "urls": make_urls(tokens["urls"]), "users": make_users(tokens["users"])}
    fns["lowercase"] = _protecting(lowercase, [tokens[k] for k in ("urls", "users") if k in names])
    text_steps = [fns[n] for n in names if n in fns]
    fields = [n for n in names if n in RECORD_STEPS]

    def preprocess(text: str, record: dict | None = None) -> str:
        prefix = "".join(f"{f}: {v} | " for f in fields if (v := _field(record, f)))
        text = prefix + text
        for step in text_steps:
            text = step(text)
        return text

    return preprocess

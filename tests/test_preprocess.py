"""Tweet preprocessing steps, checked on real rows of the Kaggle disaster-tweet training set."""

from __future__ import annotations

import csv
import time

import pytest

from distilprune.data.preprocess import (
    DEFAULT_TWEET_STEPS,
    STEP_ORDER,
    STEPS,
    build_preprocessor,
    parse_steps,
    split_hashtag,
)
from distilprune.errors import UserError


@pytest.fixture(scope="module")
def rows(shared_data) -> dict[str, dict[str, str]]:
    """Rows of the real train.csv keyed by id."""
    path = shared_data / "disaster_tweets" / "train.csv"
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def text(rows, row_id: str) -> str:
    return rows[row_id]["text"]


def test_html_unescapes_entities(rows):
    original = text(rows, "89")
    assert "&amp;" in original
    assert "Rene Ablaze & Jacinta" in STEPS["html"](original)
    assert STEPS["html"](text(rows, "178")).startswith(">> $15 Aftershock")
    assert STEPS["html"](text(rows, "274")).endswith("coming from <<")
    assert STEPS["html"]("&amp;amp; &#39;") == "& '"


def test_urls_replaced_with_token(rows):
    out = STEPS["urls"](text(rows, "48"))
    assert "http" not in out and out.split()[-1] == "URL"
    assert "https" not in STEPS["urls"](text(rows, "97"))
    # a link glued to the previous word, with www
    glued = STEPS["urls"](text(rows, "3446"))
    assert glued.split()[-2:] == ["India", "URL"]
    # '@www.x' is a mention, not a link
    assert "@www.cbplawyers" in STEPS["urls"](text(rows, "1771"))
    custom = build_preprocessor(["urls"], token_overrides={"urls": "HTTPURL"})
    assert custom(text(rows, "48")).split()[-1] == "HTTPURL"


def test_users_replaced_with_token(rows):
    assert STEPS["users"](text(rows, "48")).startswith("@USER Wholesale")
    assert STEPS["users"](text(rows, "63")).endswith("@USER")
    assert STEPS["users"]("mail me at a@b.com") == "mail me at a@b.com"
    custom = build_preprocessor(["users"], token_overrides={"users": "@user"})
    assert custom(text(rows, "48")).startswith("@user ")


def test_hashtags_split_camel_case_and_lowercase_tags(rows):
    out = STEPS["whitespace"](STEPS["hashtags"](text(rows, "8")))
    assert out.startswith("rocky fire Update")
    assert out.endswith("- ca fire wildfires")
    assert "tampa bay" in STEPS["hashtags"](text(rows, "18"))
    out = STEPS["hashtags"](text(rows, "100"))
    assert "personal injury" in out and "otley hour" in out and "#" not in out
    assert "just saying" in STEPS["hashtags"](text(rows, "260"))
    assert split_hashtag("WildFires") == "wild fires"
    assert split_hashtag("prayforthevictims") == "pray for the victims"
    assert split_hashtag("NASAFire") == "nasa fire"
    assert split_hashtag("Hiroshima70") == "hiroshima 70"
    assert STEPS["hashtags"]("it&#39;s") == "it&#39;s"


def test_emoji_to_words(rows):
    # the Kaggle export mangled real emoji; its only match is a mojibake '©', which is kept
    assert STEPS["emoji"](text(rows, "3115")) == text(rows, "3115")
    out = STEPS["whitespace"](STEPS["emoji"]("Forest fire🔥🔥 near La Ronge 😱"))
    assert out == "Forest fire fire fire near La Ronge face screaming in fear"


def test_lowercase_and_whitespace(rows):
    assert STEPS["lowercase"]("ALLAH Forgive") == "allah forgive"
    out = STEPS["whitespace"](text(rows, "61"))
    assert "\n" not in out and "alive but" in out
    assert STEPS["whitespace"]("  a \t b\n") == "a b"


def test_keyword_and_location_prefix(rows):
    fn = build_preprocessor(["keyword", "location"])
    row = rows["196"]
    assert row["keyword"] == "airplane%20accident"
    assert fn(row["text"], row) == (
        f"keyword: airplane accident | location: 19.600858, -99.047821 | {row['text']}")
    # empty location, empty keyword, NaN, no record at all: nothing added
    assert fn(text(rows, "3446"), rows["3446"]).startswith("keyword: derail | Dozens")
    assert fn(text(rows, "1"), rows["1"]) == text(rows, "1")
    assert fn("x", {"keyword": float("nan"), "location": "nan"}) == "x"
    assert fn("x") == "x"


def test_default_pipeline_on_real_tweet(rows):
    fn = build_preprocessor(DEFAULT_TWEET_STEPS)
    assert fn(text(rows, "92")) == (
        "now playing : Rene Ablaze & Ian Buff - Magnitude URL edm")
    assert fn(text(rows, "120")) == (
        "truck crash Overturns On fort worth Interstate URL Click here if you've been in a "
        "crash> URL")


def test_steps_run_in_pipeline_order(rows):
    # html must run before urls ('&gt;http://' glued) and hashtags before lowercase
    listed = ["lowercase", "whitespace", "hashtags", "urls", "html"]
    fn = build_preprocessor(listed)
    expected = "truck crash overturns on fort worth interstate URL click here if you've been in a"
    assert fn(text(rows, "120")) == expected + " crash> URL"
    assert parse_steps(listed) == ["html", "urls", "hashtags", "lowercase", "whitespace"]
    # lowercase keeps the placeholders
    assert build_preprocessor("users,lowercase")("@Bob HI") == "@USER hi"


def test_parse_steps_presets_and_errors():
    assert parse_steps("html, urls,users") == ["html", "urls", "users"]
    assert parse_steps("tweet") == DEFAULT_TWEET_STEPS
    assert parse_steps("tweet,keyword")[0] == "keyword"
    assert parse_steps("none") == [] and parse_steps("") == [] and parse_steps(None) == []
    assert set(STEP_ORDER) == {*STEPS, "keyword", "location"}
    with pytest.raises(UserError, match="unknown preprocessing step 'stem'.*html.*whitespace"):
        parse_steps("html,stem")
    with pytest.raises(UserError, match="token overrides"):
        build_preprocessor(["urls"], token_overrides={"hashtags": "X"})


def test_fast_on_whole_dataset(rows):
    fn = build_preprocessor([*DEFAULT_TWEET_STEPS, "keyword", "location", "lowercase"])
    split_hashtag("warmup")  # load wordsegment outside the timing
    start = time.perf_counter()
    out = [fn(row["text"], row) for row in rows.values()]
    assert time.perf_counter() - start < 3.0
    assert len(out) == len(rows) > 7000
    assert not any("://" in t or "t.co/" in t for t in out)

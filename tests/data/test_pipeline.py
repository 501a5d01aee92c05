"""Input pipeline: batch contract, process sharding, checkpointable iterator, eval padding, questions."""

import functools
import json
import pathlib

import numpy as np
import pytest

from mmjax.data import av_digits as avd
from mmjax.data import av_digits_questions as avq
from mmjax.data import pipeline
from mmjax.data.text import split_words

QUESTIONS_FILE = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "av_digits_questions.json"


def _index_fn(i):
    return {"i": np.int64(i)}


def test_batch_contract(source, preprocess_fn):
    batch = next(pipeline.train_iterator(source, batch_size=8, seed=0, preprocess_fn=preprocess_fn))
    expected = {
        "text": ((8, 24), np.int32),
        "text_mask": ((8, 24), np.bool_),
        "image": ((8, 28, 28, 1), np.float32),
        "audio": ((8, 96, 64), np.float32),
        "audio_mask": ((8, 96), np.bool_),
        "question_type": ((8,), np.int32),
        **{f"labels/{task}": ((8,), np.int32) for task in avd.TASKS},
    }
    assert set(batch) == set(expected) | {"present"}
    for key, (shape, dtype) in expected.items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key
    assert set(batch["present"]) == {"text", "image", "audio"}
    assert all(v.dtype == np.bool_ and v.shape == (8,) and v.all() for v in batch["present"].values())
    assert batch["text_mask"][:, 0].all() and batch["audio_mask"][:, 0].all()


def test_preprocess_values(source, preprocess_fn):
    example = source[3]
    out = preprocess_fn(example)
    np.testing.assert_allclose(out["image"][..., 0], (example["image"] / 255.0 - 0.1307) / 0.3081, rtol=1e-6)
    frames = min(len(example["audio"]), 96)
    assert out["audio_mask"].sum() == frames
    np.testing.assert_array_equal(out["audio"][:frames], example["audio"][:frames])
    assert avq.make_tokenizer().decode(out["text"]) == " ".join(split_words(example["question"].decode()))
    assert out["labels/answer"] == example["answer"] and out["question_type"] == example["question_type"]


def test_processes_see_disjoint_shards_covering_the_epoch():
    data = range(60)
    per_process = []
    for index in range(2):
        it = pipeline.train_iterator(
            data, batch_size=12, seed=1, preprocess_fn=_index_fn, process_index=index, process_count=2
        )
        epochs = [np.concatenate([next(it)["i"] for _ in range(5)]) for _ in range(2)]
        assert sorted(epochs[0]) == sorted(epochs[1]) and list(epochs[0]) != list(epochs[1])  # reshuffled
        per_process.append(set(epochs[0].tolist()))
    assert not per_process[0] & per_process[1]
    assert per_process[0] | per_process[1] == set(range(60))


def test_one_process_with_two_shards_yields_the_global_batches_of_two_processes():
    """Across epoch boundaries (6 batches per epoch), and after a state restore of the zipped iterator."""
    make = functools.partial(
        pipeline.train_iterator, range(60), batch_size=10, seed=1, preprocess_fn=_index_fn
    )
    single = make(shards=2)
    pair = [make(process_index=p, process_count=2, shards=2) for p in range(2)]
    for _ in range(14):
        want = np.concatenate([next(it)["i"] for it in pair])
        np.testing.assert_array_equal(next(single)["i"], want)
    state = single.get_state()
    expected = [next(single)["i"] for _ in range(3)]
    restored = make(shards=2)
    restored.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(restored)["i"], want)


def test_shards_must_split_over_processes():
    with pytest.raises(ValueError, match="data.shards=3 is not a multiple of the process count 2"):
        pipeline.train_iterator(
            range(60), batch_size=12, seed=0, preprocess_fn=_index_fn, process_count=2, shards=3
        )


def test_batch_size_must_divide_over_processes():
    with pytest.raises(ValueError, match="batch_size=10"):
        pipeline.train_iterator(range(60), batch_size=10, seed=0, preprocess_fn=_index_fn, process_count=3)


def test_iterator_state_restores(source, preprocess_fn):
    make = functools.partial(
        pipeline.train_iterator, source, batch_size=4, seed=7, preprocess_fn=preprocess_fn
    )
    it = make()
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    restored = make()
    restored.set_state(state)
    for want in expected:
        got = next(restored)
        for key in ("text", "audio", "image", "labels/answer"):
            np.testing.assert_array_equal(got[key], want[key])


def test_worker_processes_give_the_same_batches(source, preprocess_fn):
    make = functools.partial(
        pipeline.train_iterator, source, batch_size=4, seed=2, preprocess_fn=preprocess_fn
    )
    inline, workers = make(), make(worker_count=2)
    for _ in range(3):
        a, b = next(inline), next(workers)
        np.testing.assert_array_equal(a["audio"], b["audio"])
        np.testing.assert_array_equal(a["labels/answer"], b["labels/answer"])


def test_eval_batches_pad_the_last_batch():
    batches = list(pipeline.eval_batches(range(10), batch_size=4, preprocess_fn=_index_fn))
    assert len(batches) == 3
    assert [b["i"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 9, 9]]
    assert [b["valid"].tolist() for b in batches[1:]] == [[True] * 4, [True, True, False, False]]


def test_eval_batches_split_over_processes_rebuild_the_global_batches():
    """10 examples in global batches of 8 over 4 processes: process 3 holds no real row of the last batch."""
    whole = list(pipeline.eval_batches(range(10), batch_size=8, preprocess_fn=_index_fn))
    shares = [
        list(
            pipeline.eval_batches(
                range(10), batch_size=8, preprocess_fn=_index_fn, process_index=p, process_count=4
            )
        )
        for p in range(4)
    ]
    for i, batch in enumerate(whole):
        for key in ("i", "valid"):
            np.testing.assert_array_equal(np.concatenate([share[i][key] for share in shares]), batch[key])
    assert shares[3][1]["i"].tolist() == [9, 9] and not shares[3][1]["valid"].any()
    with pytest.raises(ValueError, match="data.eval_batch_size=8 is not divisible by 3 processes"):
        next(pipeline.eval_batches(range(10), batch_size=8, preprocess_fn=_index_fn, process_count=3))


def test_eval_batches_on_real_data(source, preprocess_fn):
    batches = list(pipeline.eval_batches(source, batch_size=64, preprocess_fn=preprocess_fn))
    assert len(batches) == 10 and sum(int(b["valid"].sum()) for b in batches) == len(source)
    assert all(b["audio"].shape == (64, 96, 64) and b["present"]["audio"].shape == (64,) for b in batches)
    assert pipeline.steps_per_epoch(source, 64) == 9


def test_questions_file_overrides_phrasings(source):
    questions = avq.load_questions(QUESTIONS_FILE)
    tokenizer = avq.make_tokenizer()
    for qtype, phrasings in questions.items():
        assert len(phrasings) >= 2 and not set(phrasings) & set(avq.PHRASINGS[qtype])
        assert all(1 not in tokenizer.encode(p, 32)[0] for p in phrasings)  # no unknown words
    fn = functools.partial(
        avd.preprocess, tokenizer=tokenizer, text_len=24, audio_frames=96, questions=questions, seed=5
    )
    for i in range(30):
        example = source[i]
        out = fn(example)
        qtype = avq.QUESTION_TYPES[example["question_type"]]
        held_out = {tokenizer.decode(tokenizer.encode(p, 24)[0]) for p in questions[qtype]}
        assert tokenizer.decode(out["text"]) in held_out
        np.testing.assert_array_equal(fn(example)["text"], out["text"])


@pytest.mark.parametrize(
    "content, message",
    [
        ({"colour": ["what colour?"]}, "colour"),
        ({**{q: ["what?"] for q in avq.QUESTION_TYPES}, "sum": []}, "sum"),
        ({q: ["what?"] for q in avq.QUESTION_TYPES[:-1]}, "speaker"),
    ],
)
def test_questions_file_errors_name_file_and_key(tmp_path, content, message):
    path = tmp_path / "questions.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=f"questions.json.*{message}"):
        avq.load_questions(path)


def test_missing_questions_file(tmp_path):
    with pytest.raises(ValueError, match="absent.json"):
        avq.load_questions(tmp_path / "absent.json")


def test_audio_buckets_trim_each_batch_to_the_shortest_bucket_that_fits(source, preprocess_fn):
    mask = np.zeros((3, 96), bool)
    mask[0, :30], mask[1, :50], mask[2, :10] = True, True, True
    batch = {"audio": np.arange(3 * 96 * 2, dtype=np.float32).reshape(3, 96, 2), "audio_mask": mask, "x": 1}
    trimmed = pipeline.trim_audio(batch, (32, 64, 96))
    assert (
        trimmed["audio"].shape == (3, 64, 2) and trimmed["audio_mask"].shape == (3, 64) and trimmed["x"] == 1
    )
    np.testing.assert_array_equal(trimmed["audio"], batch["audio"][:, :64])
    assert pipeline.trim_audio(batch | {"audio_mask": mask[[2]]}, (32, 64, 96))["audio"].shape[1] == 32
    stream = pipeline.train_iterator(
        source, batch_size=8, seed=0, preprocess_fn=preprocess_fn, audio_buckets=(48, 96)
    )
    lengths = set()
    for _ in range(6):
        batch = next(stream)
        lengths.add(batch["audio"].shape[1])
        assert batch["audio_mask"].sum(1).max() <= batch["audio"].shape[1] in (48, 96)
    assert lengths <= {48, 96}


@pytest.mark.parametrize(
    ("text", "message"),
    [("48,97", "the largest data.audio_frames=96"), ("40,96", "multiple"), ("a", "comma")],
)
def test_bad_audio_buckets_name_the_field(text, message):
    assert pipeline.parse_buckets("96, 48", 96, 8) == (48, 96) and pipeline.parse_buckets("", 96, 8) == ()
    with pytest.raises(ValueError, match=f"data.audio_buckets={text!r}.*{message}"):
        pipeline.parse_buckets(text, 96, 16 if text == "40,96" else 8)


def test_question_phrasings_longer_than_text_len_warn_or_stop(capsys):
    from mmjax.config import load_config

    for text in ("scratch", "cached", "mpnet"):  # the default text_len fits every training phrasing
        avd.make_preprocess(load_config(f"experiments/av_digits.py:text={text}"))
        assert "truncating" not in capsys.readouterr().out
    config = load_config("experiments/av_digits.py:smoke")
    config.data.text_len = 16
    long_one = "what digit do you hear in this recording of a voice saying a single digit out loud please"
    questions = {qtype: ["what digit is it"] for qtype in avq.QUESTION_TYPES} | {"spoken_digit": [long_one]}
    avd.make_preprocess(config, questions)
    out = capsys.readouterr().out
    assert "warning: truncating to data.text_len=16 tokens" in out and repr(long_one) in out
    config.data.on_bad_example = "stop"
    with pytest.raises(
        ValueError, match="question phrasings longer than data.text_len=16: 'what digit do you"
    ):
        avd.make_preprocess(config, questions)
    avd.make_preprocess(config, {qtype: ["what digit is it"] for qtype in avq.QUESTION_TYPES})

"""Evaluation files are named by split and condition; other question phrasings get their own file."""

from mmjax.data.pipeline import Corruption
from mmjax.evaluate import eval_file_name


def test_other_phrasings_never_overwrite_the_training_phrasings_results():
    assert eval_file_name("test", Corruption()) == "eval_test.json"
    named = eval_file_name("test", Corruption(), "experiments/av_digits_paraphrases.json")
    assert named == "eval_test_questions-av_digits_paraphrases.json"
    noisy = eval_file_name("validation", Corruption(drop="audio"), "q/held_out.json")
    assert noisy == f"eval_validation{Corruption(drop='audio').suffix}_questions-held_out.json"
    assert Corruption(drop="audio").suffix  # the condition itself names the file too

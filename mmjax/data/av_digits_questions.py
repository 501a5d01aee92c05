"""AV-Digits questions: their types and answers, the training phrasings, and files of other phrasings."""

import json
import os
import zlib
from collections.abc import Sequence

import numpy as np

from mmjax.data import text

SPEAKERS = ("jackson", "nicolas", "theo", "yweweler", "george", "lucas")
QUESTION_TYPES = ("spoken_digit", "written_digit", "same", "sum", "larger", "speaker")
ANSWERS = tuple(str(i) for i in range(19)) + ("yes", "no", "written", "spoken", "equal") + SPEAKERS

# Training phrasings, varied in wording and word order; each modality's words (voice, speaker, image, hear,
# see...) also appear in other question types, so that no single word gives the type away. Evaluation can
# swap in others (experiments/av_digits_questions.json, av_digits_paraphrases.json, av_digits_reworded.json).
PHRASINGS = {
    "spoken_digit": [
        "what digit is spoken?",
        "which number does the speaker say?",
        "what number do you hear?",
        "tell me the digit that is said",
        "the digit you hear is which one?",
        "the speaker says a number. which one?",
        "which digit is said out loud?",
        "what number is being said?",
        "what does the speaker say?",
        "name the spoken digit",
        "which number can you hear?",
        "give the digit that the speaker says",
        "what is the digit said by the speaker?",
        "out loud, which digit is said?",
        "which digit does the voice say?",
        "what number does the voice say?",
        "the speaker said a digit: which digit?",
        "what digit do you hear the speaker say?",
        "repeat the digit you hear",
        "what is the number that the voice says?",
        "which of the ten digits is spoken?",
        "which number comes from the speaker?",
        "what digit is heard?",
        "the voice says which digit?",
    ],
    "written_digit": [
        "what digit is written?",
        "which number is shown in the image?",
        "what number do you see?",
        "tell me the digit that is written down",
        "look at the image: which digit is it?",
        "the image shows a number. which one?",
        "which digit can be read in the image?",
        "what number is in the image?",
        "what does the image show?",
        "name the written digit",
        "which number can you see?",
        "give the digit that is written in the image",
        "what is the digit shown in the image?",
        "in the image, which digit is written?",
        "which digit does the image show?",
        "what number is written in the image?",
        "what digit can you see written down?",
        "a digit is written in the image. which one?",
        "read the digit in the image",
        "which of the ten digits is written?",
        "what number do you read?",
        "what is seen in the image?",
        "which number is shown?",
        "name the digit that you see",
    ],
    "same": [
        "are the spoken and written digits the same?",
        "does the speaker say the number shown in the image?",
        "is the digit you hear the digit you see?",
        "do the two digits match?",
        "is the written number also the number that is said?",
        "do you see and hear the same digit?",
        "tell me whether both digits are the same",
        "the image and the speaker: same number or not?",
        "is the number in the image the one the speaker says?",
        "do the image and the speaker give the same digit?",
        "are both numbers the same?",
        "is what you see what you hear?",
        "does the written digit match the spoken digit?",
        "same digit in the image and from the speaker?",
        "is the spoken digit the same as the written digit?",
        "does the voice say the digit in the image?",
        "do you hear the number you see?",
        "are the digit in the image and the digit that is said the same?",
        "is the number shown the number said?",
        "do the written and spoken numbers match?",
        "does what the speaker says match the image?",
        "is it the same number twice?",
        "is the heard digit also the seen digit?",
        "is the digit said out loud the one in the image?",
    ],
    "sum": [
        "what is the sum of the written and spoken digits?",
        "what is the written digit plus the spoken digit?",
        "what do you get when you add the number you see to the number you hear?",
        "add the two digits: what is the result?",
        "how much is the digit you see plus the digit you hear?",
        "tell me the sum of both numbers",
        "if you add the spoken number to the written one, what do you get?",
        "what do the two digits add up to?",
        "what is the sum of the two digits?",
        "add the written digit and the spoken digit",
        "how much do the digits make together?",
        "the spoken digit plus the written digit is what?",
        "what number is the sum of what you see and what you hear?",
        "sum the two digits",
        "what do the spoken digit and the written digit add up to?",
        "add the number you hear to the number you see",
        "what is the spoken number plus the written number?",
        "how much is the image digit plus the voice digit?",
        "the sum of the digit in the image and the digit the speaker says?",
        "the written digit and the spoken digit together make what?",
        "give the sum of the two numbers",
        "what do you get if you add the two digits?",
        "what result do the two digits give when added?",
        "tell me what the two numbers sum to",
    ],
    "larger": [
        "which is larger, the written or the spoken digit?",
        "is the written digit or the spoken digit bigger?",
        "which number is greater, the written one or the spoken one?",
        "which digit is more, the one you see or the one you hear?",
        "tell me which of the two digits is larger",
        "of the digit in the image and the digit that is said, which is greater?",
        "compare the two digits: which one is bigger?",
        "is the spoken number bigger than the written number, smaller, or the same?",
        "which one is bigger?",
        "which of the digits is the larger one?",
        "is the digit you hear more than the digit you see?",
        "bigger digit: the written one or the spoken one?",
        "which is greater: what you see or what you hear?",
        "does the image or the speaker have the larger number?",
        "which digit is bigger: the one in the image or the one the speaker says?",
        "is the written number larger than the spoken number?",
        "which is more, the number you hear or the number you see?",
        "does the speaker say a larger number than the image shows?",
        "which of the two numbers is greater?",
        "compare the spoken and written digits: which is larger?",
        "is the image digit bigger or smaller than the voice digit?",
        "which number is larger, if either?",
        "larger digit: image or speaker?",
        "tell me whether the written or the spoken digit is greater",
    ],
    "speaker": [
        "who is speaking?",
        "which speaker says the digit?",
        "whose voice do you hear?",
        "tell me the name of the speaker",
        "who do you hear?",
        "who said this number?",
        "which of the speakers is it?",
        "the digit is said by whom?",
        "who says it?",
        "name the speaker",
        "which speaker is this?",
        "who is the speaker?",
        "who says the number you hear?",
        "the speaker is who?",
        "whose voice says the digit?",
        "which speaker is speaking?",
        "who is saying the number?",
        "tell me who the speaker is",
        "the voice belongs to whom?",
        "which of the speakers says this digit?",
        "whose is the voice you hear?",
        "name the one who is speaking",
        "who do you hear say the digit?",
        "which voice is it?",
    ],
}


def answer_index(qtype: str, image_digit: int, audio_digit: int, speaker: str | int) -> int:
    """Index into ANSWERS of the answer to a question of type `qtype` (speaker as name or index)."""
    if qtype == "spoken_digit":
        answer = str(audio_digit)
    elif qtype == "written_digit":
        answer = str(image_digit)
    elif qtype == "same":
        answer = "yes" if image_digit == audio_digit else "no"
    elif qtype == "sum":
        answer = str(image_digit + audio_digit)
    elif qtype == "larger":
        bigger = "written" if image_digit > audio_digit else "spoken"
        answer = "equal" if image_digit == audio_digit else bigger
    elif qtype == "speaker":
        answer = speaker if isinstance(speaker, str) else SPEAKERS[int(speaker)]
    else:
        raise ValueError(f"unknown question type {qtype!r}; expected one of {QUESTION_TYPES}")
    return ANSWERS.index(answer)


def make_tokenizer() -> text.WordTokenizer:
    """Word tokenizer over every training phrasing."""
    return text.build_vocab(p for phrasings in PHRASINGS.values() for p in phrasings)


def pick_phrasing(phrasings: Sequence[str], seed: int, recording: str, image_index: int) -> str:
    """A phrasing chosen deterministically from (seed, recording, image_index)."""
    rng = np.random.default_rng([seed, zlib.crc32(recording.encode("utf-8")), int(image_index)])
    return phrasings[int(rng.integers(len(phrasings)))]


def load_questions(path: str | os.PathLike) -> dict[str, list[str]]:
    """Reads {question type: [phrasings]} from JSON; every question type needs a non-empty list."""
    if not os.path.isfile(path):
        raise ValueError(f"questions file {path} does not exist")
    with open(path) as f:
        try:
            questions = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"questions file {path} is not valid JSON: {err}") from err
    if not isinstance(questions, dict):
        raise ValueError(f"questions file {path} must hold an object {{question type: [phrasings]}}")
    for key, phrasings in questions.items():
        if key not in QUESTION_TYPES:
            raise ValueError(f"questions file {path}: unknown question type {key!r}; known: {QUESTION_TYPES}")
        if not isinstance(phrasings, list) or not phrasings or not all(isinstance(p, str) for p in phrasings):
            raise ValueError(f"questions file {path}: {key!r} needs a non-empty list of strings")
    missing = [key for key in QUESTION_TYPES if key not in questions]
    if missing:
        raise ValueError(f"questions file {path}: no phrasings for question types {missing}")
    return questions

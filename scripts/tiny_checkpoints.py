"""Writes tiny random Hugging Face checkpoints, one per encoder family mmjax ports, each with what a real one
ships beside its weights (preprocessor_config.json for image and audio towers, a WordPiece tokenizer for text
towers), to try `experiments/pretrained.py` and the port without the hub:

    python scripts/tiny_checkpoints.py OUT [--families siglip,dinov2,...]

Each checkpoint lands in OUT/<family>. Needs transformers and torch (the `hf` extra); the weights are random
(seeded), so the runs they serve are smoke runs, not results.
"""

import argparse
import pathlib
import string
import sys

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)
TINY_AUDIO = dict(
    conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=48,
)  # fmt: skip
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def vocabulary() -> list[str]:
    """A WordPiece vocabulary that spells any lower-case English text: specials, characters, ##characters."""
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    return SPECIAL + chars + [f"##{c}" for c in chars]


def image_processor(transformers, size: int, mean: float, std: float):
    """An image processor resizing to size x size (bicubic) and normalising with `mean` / `std`."""
    return transformers.ViTImageProcessor(
        size={"height": size, "width": size}, resample=3, image_mean=[mean] * 3, image_std=[std] * 3
    )


def build(transformers, family: str):
    """(model, preprocessor or None, with_tokenizer) of a tiny random `family` checkpoint."""
    if family == "siglip":
        config = transformers.SiglipConfig(
            text_config=dict(
                vocab_size=len(vocabulary()),
                max_position_embeddings=32,
                pad_token_id=0,
                bos_token_id=2,
                eos_token_id=3,
                **TINY,
            ),
            vision_config=dict(image_size=32, patch_size=8, **TINY),
        )
        return transformers.SiglipModel(config), image_processor(transformers, 32, 0.5, 0.5), True
    if family == "dinov2":
        config = transformers.Dinov2Config(image_size=32, patch_size=8, **TINY)
        return transformers.Dinov2Model(config), image_processor(transformers, 24, 0.45, 0.22), False
    if family in ("wav2vec2", "hubert", "wavlm"):
        config_class, model_class = {
            "wav2vec2": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model),
            "hubert": (transformers.HubertConfig, transformers.HubertModel),
            "wavlm": (transformers.WavLMConfig, transformers.WavLMModel),
        }[family]
        extractor = transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True)
        return model_class(config_class(**TINY_AUDIO)), extractor, False
    vocab = dict(vocab_size=len(vocabulary()), max_position_embeddings=64)
    if family == "distilbert":
        config = transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=48, **vocab)
        return transformers.DistilBertModel(config), None, True
    if family == "electra":
        config = transformers.ElectraConfig(embedding_size=16, **TINY, **vocab)
        return transformers.ElectraModel(config), None, True
    if family == "mpnet":
        config = transformers.MPNetConfig(**TINY, **vocab)
        return transformers.MPNetModel(config), None, True
    if family == "deberta-v2":
        config = transformers.DebertaV2Config(
            relative_attention=True, position_buckets=8, pos_att_type=["c2p", "p2c"], **TINY, **vocab
        )
        return transformers.DebertaV2Model(config), None, True
    raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")


FAMILIES = ("siglip", "dinov2", "wav2vec2", "hubert", "wavlm", "distilbert", "electra", "mpnet", "deberta-v2")


def write(out: pathlib.Path, families=FAMILIES, seed: int = 0) -> dict[str, pathlib.Path]:
    """Writes every family's checkpoint under `out`; returns {family: folder}."""
    import torch
    import transformers

    folders = {}
    for family in families:
        torch.manual_seed(seed)
        model, preprocessor, with_tokenizer = build(transformers, family)
        folder = out / family
        model.eval().save_pretrained(folder)
        if preprocessor is not None:
            preprocessor.save_pretrained(folder)
        if with_tokenizer:
            (folder / "vocab.txt").write_text("\n".join(vocabulary()) + "\n")
            (folder / "tokenizer_config.json").write_text('{"do_lower_case": true}\n')
        folders[family] = folder
    return folders


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset")
    args = parser.parse_args(argv)
    for family, folder in write(args.out, args.families.split(",")).items():
        print(f"{family}: {folder}")


if __name__ == "__main__":
    main(sys.argv[1:])

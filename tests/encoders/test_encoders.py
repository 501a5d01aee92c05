"""Text, image and audio encoders: shapes, masks, padding invariance and bad-shape errors."""

import jax
import numpy as np
import pytest

from mmjax.encoders.audio import SpectrogramEncoder, patch_mask
from mmjax.encoders.image import ViTEncoder
from mmjax.encoders.text import TextEncoder, pool_index, roberta_positions
from mmjax.nn.embeddings import PatchEmbedding, PositionEmbedding

TINY = dict(width=32, depth=1, num_heads=2, mlp_dim=64)


def test_patch_embedding_orders_patches_row_major():
    x = np.random.default_rng(0).normal(size=(2, 4, 6, 3)).astype(np.float32)
    embed = PatchEmbedding((2, 3), width=5)
    variables = embed.init(jax.random.key(0), x)
    out = embed.apply(variables, x)
    assert out.shape == (2, 4, 5)
    p = variables["params"]["proj"]
    patch_1 = x[:, 0:2, 3:6, :].reshape(2, -1)  # grid position (row 0, col 1)
    np.testing.assert_allclose(out[:, 1], patch_1 @ p["kernel"] + p["bias"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="patch_size"):
        embed.init(jax.random.key(0), x[:, :3])


def test_position_embedding_rejects_long_sequences():
    with pytest.raises(ValueError, match="max_len=4"):
        PositionEmbedding(4).init(jax.random.key(0), np.zeros((1, 5, 8), np.float32))


def _text_inputs():
    text = np.random.default_rng(0).integers(1, 50, size=(2, 8)).astype(np.int32)
    mask = np.ones((2, 8), bool)
    mask[0, 5:] = False
    return text, mask


@pytest.mark.parametrize("pre_ln", [True, False])
def test_text_encoder_shapes_and_padding(pre_ln):
    text, mask = _text_inputs()
    encoder = TextEncoder(vocab_size=50, max_len=10, dropout_rate=0.1, pre_ln=pre_ln, **TINY)
    variables = encoder.init(jax.random.key(0), text, mask, deterministic=True)
    tokens, aux = encoder.apply(variables, text, mask, deterministic=True)
    assert tokens.shape == (2, 8, 32)
    np.testing.assert_array_equal(aux["txt/pooled"], tokens[:, 0])
    np.testing.assert_array_equal(aux["txt/tokens"], tokens)
    assert len(aux["txt/hidden_states"]) == 2
    changed = np.where(mask, text, 3)
    tokens_changed, _ = encoder.apply(variables, changed, mask, deterministic=True)
    np.testing.assert_allclose(tokens[mask], tokens_changed[mask], rtol=1e-5, atol=1e-6)
    assert not np.allclose(tokens[~mask], tokens_changed[~mask])
    types = np.ones_like(text)
    tokens_types, _ = encoder.apply(variables, text, mask, types, deterministic=True)
    assert not np.allclose(tokens, tokens_types)


def test_roberta_positions_count_non_pad_tokens_from_the_offset():
    ids = np.array([[0, 5, 6, 2, 1, 1], [0, 7, 2, 1, 1, 1]])
    expected = [[2, 3, 4, 5, 1, 1], [2, 3, 4, 1, 1, 1]]
    np.testing.assert_array_equal(roberta_positions(ids, pad_token_id=1, offset=1), expected)
    encoder = TextEncoder(vocab_size=50, max_len=8, position_offset=1, pad_token_id=1, **TINY)
    encoder.init(jax.random.key(0), ids)
    with pytest.raises(ValueError, match="needs position 8 but max_len=8"):
        encoder.init(jax.random.key(0), np.zeros((1, 7), np.int32))


def test_text_encoder_clip_options():
    text, mask = _text_inputs()
    text[:, 3] = 60  # the highest id
    text[0, 2] = text[1, 6] = 55  # EOS
    clip = dict(type_vocab_size=0, embedding_ln=False, causal=True, pool="eos", eos_token_id=55)
    encoder = TextEncoder(vocab_size=61, max_len=10, projection_dim=6, **clip, **TINY)
    variables = encoder.init(jax.random.key(0), text, mask)
    assert not {"type_embedding", "embedding_ln"} & set(variables["params"])
    tokens, aux = encoder.apply(variables, text, mask)
    np.testing.assert_array_equal(aux["txt/pooled"], tokens[[0, 1], [2, 6]])
    assert aux["txt/embeds"].shape == (2, 6)
    changed = text.copy()
    changed[:, 4] = 7
    tokens_changed, _ = encoder.apply(variables, changed, mask)
    np.testing.assert_allclose(tokens[:, :4], tokens_changed[:, :4], rtol=1e-6, atol=1e-6)  # causal
    assert not np.allclose(tokens[:, 4:], tokens_changed[:, 4:])
    np.testing.assert_array_equal(pool_index(text, "max_id"), [3, 3])
    np.testing.assert_array_equal(pool_index(text, "eos", eos_token_id=0), [0, 0])  # absent: the first
    with pytest.raises(ValueError, match="type_vocab_size=0"):
        encoder.apply(variables, text, mask, np.zeros_like(text))
    with pytest.raises(ValueError, match="pool='eos' needs an eos_token_id"):
        TextEncoder(vocab_size=61, max_len=10, pool="eos", **TINY).init(jax.random.key(0), text)


def test_vit_encoder_clip_options():
    image = np.random.default_rng(0).normal(size=(2, 3, 12, 12)).astype(np.float32)
    clip = dict(patch_bias=False, embedding_ln=True, final_ln=False, pooled_ln=True, channels_first=True)
    encoder = ViTEncoder(patch_size=4, projection_dim=6, **clip, **TINY)
    variables = encoder.init(jax.random.key(0), image)
    params = variables["params"]
    assert "bias" not in params["patch_embedding"]["proj"] and "final_ln" not in params["encoder"]
    tokens, aux = encoder.apply(variables, image)
    np.testing.assert_array_equal(tokens, aux["img/hidden_states"][-1])  # no final LayerNorm
    np.testing.assert_allclose(aux["img/hidden_states"][0].std(-1), 1.0, rtol=1e-2)  # normalised embeddings
    cls = tokens[:, 0]
    normed = (cls - cls.mean(-1, keepdims=True)) / np.sqrt(cls.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(aux["img/pooled"], normed, rtol=1e-5, atol=1e-5)  # LN at init: scale 1, bias 0
    embeds = aux["img/pooled"] @ params["projection"]["kernel"]
    np.testing.assert_allclose(aux["img/embeds"], embeds, rtol=1e-5, atol=1e-5)


def test_vit_encoder_shapes_and_errors():
    image = np.random.default_rng(0).normal(size=(2, 28, 28, 1)).astype(np.float32)
    encoder = ViTEncoder(patch_size=7, **TINY)
    variables = encoder.init(jax.random.key(0), image, deterministic=True)
    tokens, aux = encoder.apply(variables, image, deterministic=True)
    mask = aux["img/mask"]
    assert tokens.shape == (2, 17, 32) and mask.shape == (2, 17) and mask.all()
    np.testing.assert_array_equal(aux["img/pooled"], tokens[:, 0])
    assert variables["params"]["position_embedding"]["embedding"].shape == (17, 32)
    with pytest.raises(ValueError, match="patch_size=7"):
        encoder.init(jax.random.key(0), image[:, :27], deterministic=True)


def test_patch_mask_any_valid_frame():
    frames = np.array([[1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]], bool)
    expected = np.array([[1, 1, 1, 1, 1, 1, 0, 0], [1] * 8], bool)  # 4 time patches x 2 freq patches
    np.testing.assert_array_equal(patch_mask(frames, patch_time=2, num_freq_patches=2), expected)
    # Overlapping time patches start at frames 0, 3 (3..6: one valid) and 6 (none); frame 10 is left over.
    frames = np.array([[1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]], bool)
    time_major = patch_mask(frames, 4, num_freq_patches=2, time_stride=3)
    np.testing.assert_array_equal(time_major, [[1, 1, 1, 1, 0, 0]])
    freq_major = patch_mask(frames, 4, num_freq_patches=2, time_stride=3, freq_major=True)
    np.testing.assert_array_equal(freq_major, [[1, 1, 0, 1, 1, 0]])


def _audio_inputs():
    audio = np.random.default_rng(0).normal(size=(2, 12, 8)).astype(np.float32)
    mask = np.ones((2, 12), bool)
    mask[0, 7:] = False  # frames 7..11: time patch 1 (6..8) half valid, patches 2, 3 invalid
    return audio, mask


def test_spectrogram_encoder_masks_and_padding():
    audio, mask = _audio_inputs()
    encoder = SpectrogramEncoder(patch_time=3, patch_freq=4, **TINY)
    variables = encoder.init(jax.random.key(0), audio, mask, deterministic=True)
    tokens, aux = encoder.apply(variables, audio, mask, deterministic=True)
    out_mask = aux["aud/mask"]
    assert tokens.shape == (2, 1 + 4 * 2, 32)
    valid_time = np.array([True, True, True, True, False])  # CLS, then time patches 0..3
    expected = np.concatenate([valid_time[:1], np.repeat(valid_time[1:], 2)])
    np.testing.assert_array_equal(out_mask[0], expected)
    assert out_mask[1].all()
    np.testing.assert_array_equal(aux["aud/pooled"], tokens[:, 0])
    changed = np.where(mask[..., None], audio, 1e3).astype(np.float32)
    tokens_changed, _ = encoder.apply(variables, changed, mask, deterministic=True)
    np.testing.assert_allclose(tokens[out_mask], tokens_changed[out_mask], rtol=1e-5, atol=1e-6)
    changed[0, 0, 0] = 1e3
    tokens_changed, _ = encoder.apply(variables, changed, mask, deterministic=True)
    assert not np.allclose(tokens[0, 0], tokens_changed[0, 0])


@pytest.mark.parametrize(("shape", "field"), [((2, 13, 8), "patch_time"), ((2, 12, 9), "patch_freq")])
def test_spectrogram_encoder_rejects_indivisible_shapes(shape, field):
    encoder = SpectrogramEncoder(patch_time=3, patch_freq=4, **TINY)
    with pytest.raises(ValueError, match=field):
        encoder.init(
            jax.random.key(0), np.zeros(shape, np.float32), np.ones(shape[:2], bool), deterministic=True
        )

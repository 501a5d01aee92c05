"""model.text.cache: a frozen text tower run once per distinct question, in the data path."""

import functools
import json
import pathlib

import jax
import numpy as np
import pytest

from mmjax import evaluate, train
from mmjax.config import load_config
from mmjax.data import datasets, text_cache
from mmjax.model import build_model, dummy_batch, pretrained_params, with_noise
from mmjax.port.pretrained import load_pretrained, with_pretrained

ROOT = pathlib.Path(__file__).parents[1]


@pytest.fixture(scope="module")
def tower(word_bert):
    return word_bert


def cached_config(tfds_dir, tower, cache=True, **overrides):
    settings = {"model.text.init_from": tower, "model.text.cache": cache} | overrides
    config = load_config(
        str(ROOT / "experiments/av_digits.py:smoke"), [f"{k}={v}" for k, v in settings.items()]
    )
    config.data.tfds_dir = str(tfds_dir)
    return config


def stacked(examples):
    return jax.tree.map(lambda *xs: np.stack(xs), *examples)


def test_features_are_the_towers_outputs_computed_once_per_distinct_question(av_digits_dir, tower):
    cache = text_cache.TextCache(tower)
    calls = []
    encode = cache._encode
    cache._encode = lambda *args: calls.append(1) or encode(*args)
    data = datasets.from_config(cached_config(av_digits_dir, tower, cache=False))  # ids only
    source = data.load("validation")
    examples = [data.preprocess(source[i]) for i in range(60)]
    module, params = load_pretrained(tower)
    for example in examples:
        features = cache.features(example["text"], example["text_mask"])
        mask = example["text_mask"]
        reference = module.apply({"params": params}, example["text"][None], mask[None], deterministic=True)[0]
        np.testing.assert_allclose(features[mask], reference[0][mask], rtol=1e-5, atol=1e-6)
        assert not features[~mask].any()
    distinct = {e["text"].tobytes() for e in examples}
    assert len(calls) == len(cache) == len(distinct) < len(examples)  # repeated questions are not recomputed


def test_cache_layer_keeps_that_hidden_state_of_the_tower(av_digits_dir, tower):
    module, params = load_pretrained(tower)
    ids = np.array([5, 9, 7, 0, 0], np.int32)
    mask = ids > 0
    _, aux = module.apply({"params": params}, ids[None], mask[None], deterministic=True)
    states = next(v for k, v in aux.items() if k.endswith("hidden_states"))
    for layer in range(module.depth + 1):
        features = text_cache.TextCache(tower, layer=layer).features(ids, mask)
        np.testing.assert_allclose(features[mask], states[layer][0][mask], rtol=1e-6, atol=1e-6)
        assert not features[~mask].any()
    assert not np.allclose(states[0], states[-1])  # the layers differ, so the check above can fail
    with pytest.raises(
        ValueError, match=rf"cache_layer={module.depth + 1}: expected -1 .* 0..{module.depth}"
    ):
        text_cache.TextCache(tower, layer=module.depth + 1)


def test_a_cached_tower_gives_the_outputs_of_the_same_frozen_tower_inside_the_model(av_digits_dir, tower):
    inside, cached = (cached_config(av_digits_dir, tower, cache=c) for c in (False, True))
    data = datasets.from_config(cached)
    source = data.load("validation")
    batch = stacked([data.preprocess(source[i]) for i in range(8)])
    assert batch["text_features"].shape == (8, cached.data.text_len, 48)
    tasks = data.head_sizes()
    model_in = build_model(inside.model, tasks, data.streams)
    variables = model_in.init(jax.random.key(0), dummy_batch(inside.model, tasks), train=False)
    params_in = with_pretrained(variables["params"], pretrained_params(inside.model))
    model_cached = build_model(cached.model, tasks, data.streams)
    params_cached = {k: v for k, v in params_in.items() if k != "text"}  # the tower's params stay outside
    init = functools.partial(model_cached.init, train=False)
    expected = jax.eval_shape(init, jax.random.key(0), dummy_batch(cached.model, tasks))
    assert jax.tree.structure(expected["params"]) == jax.tree.structure(params_cached)
    assert pretrained_params(cached.model) == {}
    stats = {"batch_stats": variables["batch_stats"]} if "batch_stats" in variables else {}  # ResNet
    out_in, _ = model_in.apply({"params": params_in, **stats}, batch, train=False)
    out_cached, _ = model_cached.apply({"params": params_cached, **stats}, batch, train=False)
    for task in tasks:
        np.testing.assert_allclose(out_cached[task], out_in[task], rtol=1e-5, atol=1e-5)


def test_a_cached_run_trains_without_the_tower_and_evaluates_new_phrasings(av_digits_dir, tower, tmp_path):
    config = cached_config(av_digits_dir, tower)
    train.main(config, tmp_path)
    run = evaluate.restore_run(tmp_path)
    assert "text" not in run.variables["params"] and "text_proj" in run.variables["params"]
    reworded = ROOT / "experiments/av_digits_reworded.json"
    metrics = evaluate.main(tmp_path, split="test", questions=str(reworded), max_batches=1)
    assert 0.0 <= metrics["answer/accuracy"] <= 1.0
    written = json.loads((tmp_path / "eval_test_questions-av_digits_reworded.json").read_text())
    assert written["metrics"]["answer/accuracy"] == metrics["answer/accuracy"]


@pytest.mark.parametrize("pool", ["", "mean"])
def test_mean_pooled_text_reaches_the_fusion_as_one_token(av_digits_dir, tower, pool):
    config = cached_config(av_digits_dir, tower, **{"model.text.pool": pool})
    data = datasets.from_config(config)
    source = data.load("validation")
    batch = stacked([data.preprocess(source[i]) for i in range(8)])
    tasks = data.head_sizes()
    model = build_model(config.model, tasks, data.streams)
    variables = model.init(jax.random.key(0), dummy_batch(config.model, tasks), train=False)
    mask = batch["text_mask"].astype(bool)
    mean = (batch["text_features"] * mask[..., None]).sum(1) / mask.sum(1)[:, None]
    flat = dict(batch, text_features=np.where(mask[..., None], mean[:, None], 0.0).astype(np.float32))
    (out, aux), (out_flat, _) = (model.apply(variables, b, train=False) for b in (batch, flat))
    same = all(np.allclose(out[t], out_flat[t], rtol=1e-5, atol=1e-5) for t in tasks)
    if pool == "mean":  # the fusion sees only the masked mean: features with the same mean, same outputs
        assert aux["txt/mask"].shape == (8, 1) and aux["txt/mask"].all()
        assert same
    else:
        assert aux["txt/mask"].shape == mask.shape and not same


def test_text_noise_perturbs_training_only(av_digits_dir, tower):
    config = cached_config(av_digits_dir, tower, **{"model.text.pool": "mean", "model.text.noise": 0.5})
    data = datasets.from_config(config)
    source = data.load("validation")
    batch = stacked([data.preprocess(source[i]) for i in range(8)])
    tasks = data.head_sizes()
    noisy = build_model(config.model, tasks, data.streams)
    config.model.text.noise = 0.0
    clean = build_model(config.model, tasks, data.streams)
    variables = clean.init(jax.random.key(0), dummy_batch(config.model, tasks), train=False)
    rngs = {"dropout": jax.random.key(1)}

    def answer(model, train):
        out, _ = model.apply(variables, batch, train=train, rngs=rngs, mutable=["batch_stats"])
        return out[0]["answer"]

    np.testing.assert_array_equal(answer(noisy, False), answer(clean, False))
    assert not np.allclose(answer(noisy, True), answer(clean, True), atol=1e-4)


def test_text_noise_std_is_the_scale_times_each_vectors_rms():
    x = np.random.default_rng(0).normal(size=(4, 1, 4096)).astype(np.float32)
    x[1] *= 10.0
    noise = np.asarray(with_noise(x, 0.3, jax.random.key(0))) - x
    rms = np.sqrt((x**2).mean(-1))
    np.testing.assert_allclose(noise.std(-1), 0.3 * rms, rtol=0.05)


def test_negative_text_noise_is_an_error_naming_the_field(av_digits_dir, tower):
    config = cached_config(av_digits_dir, tower, **{"model.text.noise": -0.1})
    with pytest.raises(ValueError, match="model.text.noise=-0.1 must be >= 0"):
        build_model(config.model, {"answer": 3}, {"text": "text"})


def test_an_unknown_text_pool_is_an_error_naming_the_field(av_digits_dir, tower):
    config = cached_config(av_digits_dir, tower, **{"model.text.pool": "max"})
    with pytest.raises(ValueError, match="model.text.pool='max' is not one of"):
        build_model(config.model, {"answer": 3}, {"text": "text"})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model.text.init_from": ""}, "model.text.cache=True needs model.text.init_from"),
        ({"data.workers": 2}, "model.text.cache=True needs data.workers=0"),
    ],
)
def test_cache_errors_name_the_field(av_digits_dir, tower, overrides, message):
    with pytest.raises(ValueError, match=message):
        datasets.from_config(cached_config(av_digits_dir, tower, **overrides))

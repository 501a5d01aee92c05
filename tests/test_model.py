"""MultimodalModel: forward, gradients, presence masking, dropout and config errors."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.special

from mmjax import evaluate
from mmjax.data import pipeline, spec
from mmjax.losses import softmax_cross_entropy
from mmjax.model import build_model, drop_modalities, dummy_batch
from mmjax.nn import lora
from mmjax.step import Objective, task_losses

TASKS = {"answer": 30, "image_digit": 10, "speaker": 6}


def _config(peft=None, align=None, **overrides):
    cfg = ml_collections.ConfigDict(
        dict(
            size="tiny",
            width=0,  # > 0 overrides the size's width (likewise depth, num_heads, mlp_dim)
            mlp_dim=0,
            dropout=0.1,
            pre_ln=True,
            head_dropout=0.0,
            text=dict(vocab_size=64, max_len=16),
            image=dict(size=28, channels=1, patch_size=7),
            audio=dict(frames=100, mels=64, patch_time=4, patch_freq=16),
            fusion=dict(name="cross_attention", depth=1, bidirectional=False),
            peft=peft or {},
            align=align or {},
        )
    )
    cfg.update_from_flattened_dict(overrides)
    return cfg


def _batch(cfg, batch_size=2, seed=0):
    rng = np.random.default_rng(seed)
    batch = dummy_batch(cfg, TASKS, batch_size)
    batch["text"] = jnp.asarray(rng.integers(1, cfg.text.vocab_size, batch["text"].shape), jnp.int32)
    batch["text_mask"] = batch["text_mask"].at[0, 10:].set(False)
    batch["image"] = jnp.asarray(rng.normal(size=batch["image"].shape), jnp.float32)
    batch["audio"] = jnp.asarray(rng.normal(size=batch["audio"].shape), jnp.float32)
    batch["audio_mask"] = batch["audio_mask"].at[1, 60:].set(False)
    batch["labels/answer"] = jnp.array([3, 17][:batch_size], jnp.int32)
    batch["example_id"] = jnp.arange(batch_size)  # other keys are ignored
    return batch


@functools.cache
def _model(fusion, bidirectional):
    cfg = _config(**{"fusion.name": fusion, "fusion.bidirectional": bidirectional})
    model = build_model(cfg, TASKS)
    variables = jax.jit(functools.partial(model.init, train=False))(
        jax.random.key(0), dummy_batch(cfg, TASKS)
    )
    return cfg, model, variables


@functools.cache
def _apply(fusion, bidirectional, train=False):
    """A jitted model.apply(variables, batch, rngs=None), compiled once per model and mode."""
    return jax.jit(functools.partial(_model(fusion, bidirectional)[1].apply, train=train))


FUSION_CASES = [("late", False), ("cross_attention", False), ("cross_attention", True)]


@pytest.mark.parametrize(("fusion", "bidirectional"), FUSION_CASES)
def test_forward(fusion, bidirectional):
    cfg, _, variables = _model(fusion, bidirectional)
    batch = _batch(cfg)
    outputs, aux = _apply(fusion, bidirectional)(variables, batch)
    assert {k: v.shape for k, v in outputs.items()} == {
        "answer": (2, 30),
        "image_digit": (2, 10),
        "speaker": (2, 6),
    }
    for key in ("txt/tokens", "txt/pooled", "img/tokens", "img/pooled", "aud/tokens", "aud/pooled"):
        assert key in aux
    assert aux["img/tokens"].shape == (2, 17, 32) and aux["aud/tokens"].shape == (2, 1 + 25 * 4, 32)
    assert aux["fusion/pooled"].shape == (2, 32)


def test_grad_step_reaches_every_module_and_dropout_varies():
    cfg, model, variables = _model("cross_attention", True)
    batch = _batch(cfg)

    @jax.jit
    @jax.value_and_grad
    def loss_and_grad(params, rng):
        outputs, _ = model.apply({"params": params}, batch, train=True, rngs={"dropout": rng})
        return sum(softmax_cross_entropy(outputs[task], batch[f"labels/{task}"]) for task in TASKS)

    loss, grads = loss_and_grad(variables["params"], jax.random.key(1))
    assert np.isfinite(loss)
    for name in ("text", "image", "audio", "fusion", "head_answer", "head_image_digit", "head_speaker"):
        norm = sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(grads[name]))
        assert np.isfinite(norm) and norm > 0, name
    assert loss_and_grad(variables["params"], jax.random.key(1))[0] == loss
    assert loss_and_grad(variables["params"], jax.random.key(2))[0] != loss


@pytest.mark.parametrize(("fusion", "bidirectional"), FUSION_CASES)
@pytest.mark.parametrize("absent", ["image", "audio"])
def test_absent_modality_does_not_change_outputs(fusion, bidirectional, absent):
    cfg, _, variables = _model(fusion, bidirectional)
    apply = _apply(fusion, bidirectional)
    batch = _batch(cfg)
    batch["present"] = dict(batch["present"], **{absent: jnp.array([True, False])})
    changed = dict(batch, **{absent: batch[absent].at[1].set(3.0)})
    outputs, aux = apply(variables, batch)
    outputs_changed, aux_changed = apply(variables, changed)
    for task in TASKS:
        np.testing.assert_allclose(outputs[task], outputs_changed[task], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux["fusion/tokens"], aux_changed["fusion/tokens"], rtol=1e-5, atol=1e-6)
    # The present example does see its own change (so the check above can fail).
    changed_present = dict(batch, **{absent: batch[absent].at[0].set(3.0)})
    assert not np.allclose(outputs["answer"][0], apply(variables, changed_present)[0]["answer"][0])


def test_eval_runs_without_a_dropout_rng_and_train_needs_one():
    cfg, model, variables = _model("cross_attention", False)
    batch = _batch(cfg)
    outputs, _ = _apply("cross_attention", False)(variables, batch)  # flax raises here if dropout were on
    assert np.all(np.isfinite(outputs["answer"]))
    with pytest.raises(Exception, match="dropout"):
        model.apply(variables, batch, train=True)


def test_small_size_sets_the_width():
    cfg = _config(size="small")
    model = build_model(cfg, {"answer": 30})
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), dummy_batch(cfg, {"answer": 30}), train=False)
    )
    assert shapes["params"]["head_answer"]["logits"]["kernel"].shape == (128, 30)
    cfg = _config(size="small", width=48, mlp_dim=96)  # explicit dimensions override the size's
    model = build_model(cfg, {"answer": 30})
    params = jax.eval_shape(
        lambda: model.init(jax.random.key(0), dummy_batch(cfg, {"answer": 30}), train=False)
    )["params"]
    assert params["head_answer"]["logits"]["kernel"].shape == (48, 30)
    assert params["text"]["encoder"]["layer_1"]["mlp"]["fc1"]["kernel"].shape == (48, 96)  # depth 2 kept


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"size": "huge"}, "model.size"),
        ({"fusion.name": "no_such_fusion"}, "model.fusion.name"),
        ({"image.patch_size": 6}, "model.image.patch_size"),
        ({"audio.patch_time": 3}, "model.audio.patch_time"),
        ({"audio.patch_freq": 10}, "model.audio.patch_freq"),
    ],
)
def test_build_model_rejects_bad_config(overrides, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        build_model(_config(**overrides), TASKS)


def test_drop_modalities_never_hides_everything_and_keeps_absent_absent():
    n = 4000
    present = {"text": np.ones(n, bool), "image": np.ones(n, bool), "audio": np.arange(n) % 2 == 0}
    kept = drop_modalities(present, 0.5, jax.random.key(0))
    stacked = np.stack([np.asarray(kept[m]) for m in ("text", "image", "audio")])
    assert stacked.any(axis=0).all() and not kept["audio"][1::2].any()
    # Two present: text is hidden when it is dropped and image is not (both dropped -> both stay): p = 1/4.
    assert 0.21 < 1 - np.asarray(kept["text"])[1::2].mean() < 0.29
    for rate in (0.0, 1.0):
        same = drop_modalities(present, rate, jax.random.key(1))
        assert all(np.array_equal(same[m], present[m]) for m in present)


def test_modality_dropout_changes_training_outputs_only():
    cfg = _config(modality_dropout=0.9)
    model = build_model(cfg, TASKS)
    batch = _batch(cfg, batch_size=8)
    variables = model.init(jax.random.key(0), batch, train=False)
    plain = build_model(_config(), TASKS)
    eval_out, _ = model.apply(variables, batch, train=False)
    np.testing.assert_array_equal(eval_out["answer"], plain.apply(variables, batch, train=False)[0]["answer"])
    rngs = {"dropout": jax.random.key(3)}
    train_out, _ = model.apply(variables, batch, train=True, rngs=rngs)
    plain_out, _ = plain.apply(variables, batch, train=True, rngs=rngs)
    assert not np.allclose(train_out["answer"], plain_out["answer"])


def test_late_logits_averages_per_modality_heads_over_present_modalities():
    cfg = _config(**{"fusion.name": "late_logits"})
    model = build_model(cfg, TASKS)
    batch = _batch(cfg, batch_size=2)
    batch["present"]["image"] = jnp.array([True, False])
    variables = model.init(jax.random.key(0), batch, train=False)
    outputs, aux = model.apply(variables, batch, train=False)
    heads = variables["params"]
    per_modality = np.asarray(aux["fusion/per_modality"])
    for row, present in enumerate([(0, 1, 2), (0, 2)]):
        logits = [
            per_modality[row, i] @ heads[f"head_answer_{i}"]["logits"]["kernel"]
            + heads[f"head_answer_{i}"]["logits"]["bias"]
            for i in present
        ]
        np.testing.assert_allclose(outputs["answer"][row], np.mean(logits, axis=0), rtol=1e-5, atol=1e-5)


def test_lora_on_the_text_tower_starts_as_the_plain_model_and_merges_exactly():
    peft = {
        "peft": dict(lora="text/.*/(query|value)", rank=4, alpha=8.0, dropout=0.0, adapters="", adapter_dim=8)
    }
    cfg = _config(**{f"peft.{k}": v for k, v in peft["peft"].items()})
    plain_cfg, plain, _ = _model("cross_attention", False)
    model = build_model(cfg, TASKS)
    params = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), dummy_batch(cfg, TASKS))[
        "params"
    ]
    lora_paths = lora.peft_param_paths(params)
    assert lora_paths and all(p.startswith("text/") and "/self_attn/" in p for p in lora_paths)
    assert {p.rsplit("/", 2)[-2] for p in lora_paths} == {"query", "value"}
    batch = _batch(cfg)
    base = lora.merge(params, (8.0, 4))  # lora_b starts at zero: merging changes nothing
    outputs = model.apply({"params": params}, batch, train=False)[0]
    plain_outputs = plain.apply({"params": base}, batch, train=False)[0]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), outputs, plain_outputs)

    rng = np.random.default_rng(0)
    trained = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.1 * rng.normal(size=x.shape) if "lora_b" in str(path[-1]) else x, params
    )
    tuned = model.apply({"params": trained}, batch, train=False)[0]
    merged = plain.apply({"params": lora.merge(trained, (8.0, 4))}, batch, train=False)[0]
    assert not np.allclose(tuned["answer"], outputs["answer"], atol=1e-3)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), tuned, merged)


def test_align_outputs_embeddings_scale_and_validity():
    align = dict(modalities="image,audio", loss="siglip", dim=12, positives="labels")
    cfg = _config(align=align)
    model = build_model(cfg, TASKS)
    variables = jax.jit(functools.partial(model.init, train=False))(
        jax.random.key(0), dummy_batch(cfg, TASKS)
    )
    batch = _batch(cfg, batch_size=3)
    batch["present"] = {**batch["present"], "audio": jnp.array([True, False, True])}
    out = model.apply(variables, batch, train=False)[0]["align"]
    assert out["x"].shape == out["y"].shape == (3, 12)
    np.testing.assert_array_equal(out["valid"], [True, False, True])
    np.testing.assert_allclose(out["scale"], np.log(1 / 0.07), rtol=1e-6)
    np.testing.assert_allclose(out["bias"], -10.0)
    assert set(variables["params"]) >= {"align_image", "align_audio", "align_scale"}
    with pytest.raises(ValueError, match="model.align.modalities='image' must name two"):
        build_model(_config(align={**align, "modalities": "image"}), TASKS)
    with pytest.raises(ValueError, match="model.align.loss='clip' is not one of"):
        build_model(_config(align={**align, "loss": "clip"}), TASKS)


@pytest.mark.parametrize("fusion", ["late", "cross_attention"])
def test_audio_trimmed_to_a_bucket_gives_the_padded_result_and_one_compile_per_bucket(fusion):
    cfg, model, variables = _model(fusion, False)
    batch = _batch(cfg)
    batch["audio_mask"] = batch["audio_mask"].at[:, 56:].set(False)  # both clips fit the 64-frame bucket
    apply = jax.jit(functools.partial(model.apply, train=False))
    padded = apply(variables, batch)[0]
    for _ in range(2):
        for bucket in (64, 100):
            trimmed = pipeline.trim_audio(dict(batch), (bucket,))
            assert trimmed["audio"].shape[1] == bucket
            jax.tree.map(
                lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), apply(variables, trimmed)[0], padded
            )
    assert apply._cache_size() == 2  # 100 frames and 64 frames, each compiled once


def test_modality_heads_add_each_modality_loss_over_the_examples_that_have_it():
    rng = np.random.default_rng(0)
    fused, heads = rng.normal(size=(4, 5)), {m: rng.normal(size=(4, 5)) for m in ("text", "image", "audio")}
    labels = np.array([0, 3, 4, 1])
    present = {"text": np.ones(4, bool), "image": np.array([1, 0, 1, 0], bool), "audio": np.zeros(4, bool)}
    outputs = {"answer": fused, "modality_heads": {"answer": heads}, "present": present}
    objective = Objective(tasks=("answer",), weights=(1.0,), method="static")
    (loss,) = np.asarray(task_losses(outputs, {"labels/answer": labels}, objective))

    def nll(logits, rows):
        log_p = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
        return -log_p[np.arange(4), labels][rows].mean() if rows.any() else 0.0

    everyone = np.ones(4, bool)
    expected = nll(fused, everyone) + nll(heads["text"], everyone) + nll(heads["image"], present["image"])
    np.testing.assert_allclose(loss, expected, rtol=1e-5)  # the absent audio head adds nothing


def test_modality_heads_are_scored_where_their_modality_is_present():
    results = {
        "pred/answer": np.array([1, 2, 3]),
        "labels/answer": np.array([1, 2, 0]),
        "pred/answer@audio": np.array([1, -1, 0]),  # -1: the example has no audio
    }
    summary = spec.task_metrics(results, {"answer": spec.classes(*map(str, range(30)))})
    assert summary["answer/accuracy"] == pytest.approx(2 / 3)
    assert summary["answer@audio/accuracy"] == 1.0
    assert "answer@audio" in evaluate.format_table(summary, ["answer"])


def test_pretrained_weights_fill_an_encoder_with_lora_and_keep_the_lora_init():
    from mmjax.port.pretrained import with_pretrained

    ours = {
        "text": {"q": {"kernel": np.zeros((4, 4)), "lora_a": np.ones((4, 2)), "lora_b": np.zeros((2, 4))}}
    }
    theirs = {"text": {"q": {"kernel": np.full((4, 4), 7.0)}}}
    merged = with_pretrained(ours, theirs)["text"]["q"]
    np.testing.assert_array_equal(merged["kernel"], 7.0)
    np.testing.assert_array_equal(merged["lora_a"], 1.0)
    with pytest.raises(
        ValueError, match=r"differing \(path, shape\): \[\('q/kernel', \(4, 4\)\), \('q/kernel', \(4, 5\)\)\]"
    ):
        with_pretrained(ours, {"text": {"q": {"kernel": np.zeros((4, 5))}}})
    with pytest.raises(ValueError, match="q/other"):  # only PEFT's own params may be missing
        with_pretrained({"text": {"q": {"kernel": np.zeros((4, 4)), "other": np.zeros(3)}}}, theirs)


def test_head_hidden_gives_every_classification_head_a_hidden_layer():
    cfg = _config(head_hidden=24, modality_heads=True)
    model = build_model(cfg, TASKS)
    batch = _batch(cfg)
    variables = model.init(jax.random.key(0), batch, train=False)
    params = variables["params"]
    for task, classes in TASKS.items():
        for name in (f"head_{task}", f"head_{task}_image"):
            assert params[name]["hidden"]["kernel"].shape[1] == 24
            assert params[name]["logits"]["kernel"].shape == (24, classes)
    outputs, _ = model.apply(variables, batch, train=False)
    assert outputs["answer"].shape == (2, TASKS["answer"])
    linear = build_model(_config(), TASKS).init(jax.random.key(0), batch, train=False)["params"]
    assert "hidden" not in linear["head_answer"]

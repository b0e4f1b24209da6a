"""The train section of tuneforge.yaml: documented, strict, round-trips through YAML."""

from __future__ import annotations

from tuneforge.config import LoraConfig, TrainConfig, config_to_yaml, load_config


def test_every_train_key_is_documented() -> None:
    for model in (TrainConfig, LoraConfig):
        for name, field in model.model_fields.items():
            assert field.description and len(field.description) > 20, f"{model.__name__}.{name}"


def test_defaults_and_yaml_round_trip(tmp_path) -> None:
    cfg = load_config()
    t = cfg.train
    assert (t.method, t.peft, t.epochs, t.max_steps, t.seed, t.lr, t.batch_size, t.grad_accum) == \
        ("sft", "lora", 1, None, 0, 2e-4, 4, 1)
    assert (t.lora.r, t.lora.alpha, t.lora.dropout, t.lora.target_modules) == (16, 32, 0.05, "all-linear")
    assert (t.max_serving_rank, t.keep_checkpoints, t.packing, t.report_to) == (64, 3, True, [])
    assert t.price_per_device_hour == {"cpu": 0.0} and t.early_stopping_patience is None
    path = tmp_path / "t.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config(path) == cfg

from pathlib import Path

import pytest

from tuneforge.config import TuneforgeConfig, config_to_yaml, load_config
from tuneforge.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_valid() -> None:
    cfg = load_config()
    assert cfg.model.base == "bundled:smollm2-135m-instruct"
    assert cfg.data.dedup.threshold == 0.8
    assert (cfg.data.split.train, cfg.data.split.val, cfg.data.split.test) == (0.8, 0.1, 0.1)


def test_unknown_key_names_path_line_and_suggestion(tmp_path: Path) -> None:
    f = tmp_path / "tuneforge.yaml"
    f.write_text("model:\n  base: x\ndata:\n  dedupe:\n    exact: true\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert f"{f}:4" in msg
    assert "data.dedupe" in msg
    assert "did you mean 'data.dedup'" in msg


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  pii:\n    mode: redcat\n  split:\n    train: 0.5\n  max_tokns: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert len(e.value.problems) == 3
    text = str(e.value)
    assert "data.pii.mode" in text and "redact" in text
    assert "sum to 1.0" in text
    assert "did you mean 'data.max_tokens'" in text


def test_set_overrides_are_typed_and_nested(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  max_tokens: 100\n")
    cfg = load_config(f, ["data.max_tokens=512", "data.dedup.near=false", "data.pii.entities=[EMAIL_ADDRESS]"])
    assert cfg.data.max_tokens == 512
    assert cfg.data.dedup.near is False
    assert cfg.data.pii.entities == ["EMAIL_ADDRESS"]


def test_bad_override_form_is_explained() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.max_tokens"])
    assert "section.key=value" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.max_tokns=5"])
    assert "did you mean 'data.max_tokens'" in str(e.value)


def test_an_error_names_the_file_and_the_set_values_it_came_from(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: fast\n")
    with pytest.raises(ConfigError) as e:
        load_config(f, ["data.max_tokens=512"])
    assert e.value.where == f"{f} + --set data.max_tokens=512" and f"{f}:2: train.lr" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.lr=fast"])
    assert e.value.where == "defaults + --set train.lr=fast"


def test_training_and_vllm_agree_on_the_highest_servable_rank() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, ["serve.engine=vllm", "train.max_serving_rank=128"])
    (problem,) = e.value.problems
    assert "train.max_serving_rank=128 exceeds serve.vllm.max_lora_rank=64" in problem
    assert "Value error" not in problem and "(got" not in problem  # the validator's sentence, not pydantic's
    cfg = load_config(None, ["serve.engine=vllm", "train.max_serving_rank=128", "serve.vllm.max_lora_rank=128"])
    assert cfg.train.max_serving_rank == 128
    assert load_config(None, ["train.max_serving_rank=128"]).train.max_serving_rank == 128  # local engine: no limit


def test_pii_mode_off_is_read_as_written(tmp_path: Path) -> None:
    # YAML 1.1 reads a bare `off` as false; the user meant the mode named off.
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  pii:\n    mode: off\n")
    assert load_config(f).data.pii.mode == "off"
    assert load_config(None, ["data.pii.mode=off"]).data.pii.mode == "off"


def test_a_malformed_gate_fails_validation_before_any_stage_runs() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, ['eval.gates=["json_valid >= ", "field_accuracy >= baseline + 0.2"]'])
    (problem,) = e.value.problems
    assert problem.startswith("eval.gates: cannot parse gate 'json_valid >= '") and "e.g." in problem


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as e:
        load_config(bad)
    assert f'in "{bad}", line' in str(e.value)  # the parser's position names the file


def test_show_round_trips() -> None:
    cfg = load_config(None, ["data.max_tokens=777"])
    again = TuneforgeConfig.model_validate(__import__("yaml").safe_load(config_to_yaml(cfg)))
    assert again == cfg


@pytest.mark.parametrize("path", sorted(REPO.glob("examples/**/*.yaml")), ids=lambda p: p.name)
def test_every_shipped_yaml_validates(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith("#"), "each example YAML opens with the command that runs it"
    load_config(path)

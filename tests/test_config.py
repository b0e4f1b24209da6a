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


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_show_round_trips() -> None:
    cfg = load_config(None, ["data.max_tokens=777"])
    again = TuneforgeConfig.model_validate(__import__("yaml").safe_load(config_to_yaml(cfg)))
    assert again == cfg


@pytest.mark.parametrize("path", sorted(REPO.glob("examples/**/*.yaml")), ids=lambda p: p.name)
def test_every_shipped_yaml_validates(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith("#"), "each example YAML opens with the command that runs it"
    load_config(path)

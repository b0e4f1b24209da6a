import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuneforge.errors import ModelError
from tuneforge.models import list_models, load_contract, load_model, load_tokenizer, resolve_model
from tuneforge.workspace import Workspace

BUNDLED = "bundled:smollm2-135m-instruct"


def test_local_directory_resolves_and_loads(tiny_model_dir: Path, tmp_path: Path) -> None:
    ws = Workspace.from_env(tmp_path / "ws")
    m = resolve_model(str(tiny_model_dir), ws)
    assert m.kind == "local" and m.path == tiny_model_dir.resolve()
    assert len(m.weights_sha256) == 64
    tok = load_tokenizer(m)
    model = load_model(m, "float32")
    assert model.config.num_hidden_layers == 2
    assert tok.eos_token == "<|im_end|>"


def test_weights_hash_tracks_content(tiny_model_dir: Path, tmp_path: Path) -> None:
    ws = Workspace.from_env(tmp_path / "ws")
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    before = resolve_model(str(copy), ws).weights_sha256
    assert before == resolve_model(str(tiny_model_dir), ws).weights_sha256
    w = copy / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    assert resolve_model(str(copy), ws).weights_sha256 != before


def test_missing_local_directory_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as e:
        resolve_model(str(tmp_path / "nothing"), Workspace.from_env(tmp_path))
    assert "config.json" in str(e.value) and "fix:" in str(e.value)


def test_unknown_bundled_name_lists_known(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="smollm2-135m-instruct"):
        resolve_model("bundled:nope", Workspace.from_env(tmp_path))


def test_hub_id_not_cached_offline_explains_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelError) as e:
        resolve_model("some-org/not-a-model", Workspace.from_env(tmp_path))
    assert "huggingface-cli download some-org/not-a-model" in str(e.value)


def test_hub_id_found_in_local_cache_uses_same_path(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Lay the tiny model out as the hub cache does, then resolve it by id with no network.
    hf = tmp_path / "hf"
    snap = hf / "hub" / "models--acme--tiny" / "snapshots" / "abc123"
    shutil.copytree(tiny_model_dir, snap)
    (hf / "hub" / "models--acme--tiny" / "refs").mkdir(parents=True)
    (hf / "hub" / "models--acme--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(hf))
    code = (
        "from tuneforge.models import resolve_model; from tuneforge.workspace import Workspace;"
        f"m = resolve_model('acme/tiny', Workspace.from_env({str(tmp_path / 'ws')!r}));"
        "print(m.kind, m.revision, m.path.name)"
    )
    # A fresh process: huggingface_hub reads HF_HOME at import time.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["hub", "abc123", "abc123"]


def test_list_models_before_conversion(tmp_path: Path) -> None:
    entries = list_models(Workspace.from_env(tmp_path))
    assert [e.ref for e in entries] == [BUNDLED]
    assert entries[0].status == "available"


@pytest.mark.slow
def test_bundled_model_converts_once_and_reloads_fast(bundled_home: Path) -> None:
    ws = Workspace.from_env(bundled_home)
    first = resolve_model(BUNDLED, ws)
    assert first.kind == "bundled" and (first.path / "model.safetensors").is_file()
    assert first.path.name.endswith(first.weights_sha256[:16])  # cache keyed by the GGUF sha256
    started = time.perf_counter()
    again = resolve_model(BUNDLED, ws)
    model = load_model(again)
    tok = load_tokenizer(again)
    assert time.perf_counter() - started <= 3.0
    assert again.path == first.path
    assert list_models(ws)[0].status == "cached"
    # It is the real instruct model: it knows the capital of France.
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0][ids["input_ids"].shape[1]:])
    contract = load_contract(again, tok)
    assert contract.eos_token == "<|im_end|>" and "<|im_end|>" in contract.stop_tokens
    assert contract.base_weights_sha256 == first.weights_sha256

from pathlib import Path

from tuneforge.models import ChatContract, compute_contract, load_contract, load_tokenizer, resolve_model
from tuneforge.workspace import Workspace


def test_contract_records_template_tokens_and_identity(tiny_model_dir: Path, tmp_path: Path) -> None:
    m = resolve_model(str(tiny_model_dir), Workspace.from_env(tmp_path))
    tok = load_tokenizer(m)
    c = load_contract(m, tok)
    assert c.chat_template == tok.chat_template and len(c.chat_template_sha256) == 64
    assert (c.bos_token, c.eos_token, c.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert c.stop_tokens == ["<|im_end|>"]
    assert c.base_weights_sha256 == m.weights_sha256
    assert ChatContract.from_dict(c.to_dict()) == c


def test_template_change_is_a_difference(tiny_model_dir: Path, tmp_path: Path) -> None:
    m = resolve_model(str(tiny_model_dir), Workspace.from_env(tmp_path))
    tok = load_tokenizer(m)
    a = compute_contract(tok, m)
    tok.chat_template = tok.chat_template.replace("<|im_start|>system", "<|im_start|>SYSTEM")
    b = compute_contract(tok, m)
    assert a.chat_template_sha256 != b.chat_template_sha256
    assert any(d.startswith("chat_template_sha256") for d in a.differences(b))
    assert a.differences(a) == []


def test_tokenizer_change_changes_fingerprint(tiny_model_dir: Path, tmp_path: Path) -> None:
    m = resolve_model(str(tiny_model_dir), Workspace.from_env(tmp_path))
    tok = load_tokenizer(m)
    a = compute_contract(tok, m)
    tok.add_tokens(["<new_token>"])
    assert compute_contract(tok, m).tokenizer_sha256 != a.tokenizer_sha256

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.config import load_config
from tuneforge.data import inspect_dataset, prepare, render_chat, render_html
from tuneforge.models import load_tokenizer, resolve_model
from tuneforge.workspace import Workspace


def test_assistant_spans_cover_every_turn_and_end_of_turn(tiny_model_dir: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(resolve_model(str(tiny_model_dir), Workspace.from_env(tmp_path)))
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2"}]
    r = render_chat(tok, msgs)
    trained = [r.text[a:b] for a, b in r.spans]
    assert trained == ["a1<|im_end|>\n", "a2<|im_end|>\n"]
    untrained = "".join(r.text[b:a] for (_, b), (a, _) in zip([(0, 0), *r.spans], [*r.spans, (len(r.text), 0)], strict=True))
    assert "q1" in untrained and "q2" in untrained and "a1" not in untrained


def test_inspect_reports_turns_roles_and_samples(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": f"hello number {i} with words {i * 17}"},
                          {"role": "assistant", "content": f"reply {i} and more words {i * 3}"},
                          {"role": "user", "content": f"follow up {i}"},
                          {"role": "assistant", "content": f"second reply {i}"}]} for i in range(5)]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"messages": []}\n')
    cfg = load_config(None, [f"model.base={tiny_model_dir}", "data.split.train=1", "data.split.val=0",
                             "data.split.test=0"])
    ds = prepare(cfg, [str(src)], out=tmp_path / "ds", workspace=Workspace.from_env(tmp_path / "ws"))
    ins = inspect_dataset(ds.path, samples=2)
    assert ins.turns == {4: 5}
    assert ins.roles == {"user": 10, "assistant": 10}
    assert ins.multi_turn_rows == 5
    assert len(ins.samples) == 2 and len(ins.samples[0].rendered[0].spans) == 2
    assert ins.reject_examples["empty_field"]["line"] == 6
    page = render_html(ins)
    assert page.count("<mark>") == 4 and "empty_field" in page

"""evaluate() end to end on the tiny model: eval.json, CIs, categories, cache, loss, adapters, forgetting."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from eval_helpers import write_prepared

from tuneforge.config import TuneforgeConfig
from tuneforge.errors import EvalError
from tuneforge.eval import evaluate
from tuneforge.eval import metrics as M
from tuneforge.eval.report import REQUIRED_KEYS
from tuneforge.eval.suites import load_suite
from tuneforge.workspace import Workspace

Cfg = Callable[..., TuneforgeConfig]


def _cached_replies(ws: Workspace) -> list[list[str]]:
    return [json.loads(p.read_text())["replies"] for p in sorted((ws.root / "eval-cache").glob("*.json"))]


def test_report_shape_metrics_and_categories(golden: Path, tiny_model_dir: Path, eval_cfg: Cfg, tmp_path: Path) -> None:
    r = evaluate(eval_cfg("eval.gates=['json_valid >= 0.95', 'rouge_l >= 0']"), str(tiny_model_dir),
                 suites=[str(golden)], out=tmp_path / "o")
    report = json.loads(r.json_path.read_text())
    assert all(k in report for k in REQUIRED_KEYS) and report["schema_version"] == 1
    assert report["model"]["kind"] == "base" and len(report["model"]["checksum"]) == 64
    assert report["suites"][0]["n"] == 4 and report["forgetting"] is None and report["baselines"] == []
    cand = report["metrics"]["golden"]["candidate"]
    for name in ("json_valid", "schema_valid", "field_accuracy", "field_accuracy.category", "exact_match", "rouge_l",
                 "chrf", "semantic_similarity", "val_loss", "perplexity"):
        e = cand[name]
        assert e["n"] == 4 and e["ci"][0] <= e["value"] <= e["ci"][1], name
    # The numbers are the metrics of the replies actually generated (kept in the cache).
    (replies,) = _cached_replies(Workspace.from_env())
    suite = load_suite("golden", golden)
    want = sum(M.json_valid(x) for x in replies) / 4
    assert cand["json_valid"]["value"] == pytest.approx(want)
    assert cand["rouge_l"]["value"] == pytest.approx(
        sum(M.rouge_l(x, i.expected) for x, i in zip(replies, suite.items, strict=True)) / 4, abs=1e-6)
    assert cand["perplexity"]["value"] == pytest.approx(math.exp(cand["val_loss"]["value"]), rel=1e-5)
    cats = report["by_category"]["golden"]["candidate"]
    assert set(cats) == {"billing", "bug"} and cats["bug"]["json_valid"]["n"] == 2
    # The tiny random model writes no JSON: the first gate fails, the second passes, and the run fails.
    assert [g["passed"] for g in report["gates"]] == [want >= 0.95, True] and report["passed"] is (want >= 0.95)
    html = r.html_path.read_text()
    assert "<svg" in html and "json_valid &gt;= 0.95" in html and "src=" not in html and "<link" not in html


def test_val_loss_is_the_loss_of_the_answer_tokens(golden: Path, tiny_model_dir: Path, eval_cfg: Cfg,
                                                   tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    r = evaluate(eval_cfg(), str(tiny_model_dir), suites=[str(golden)], out=tmp_path / "o")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0
    for item in load_suite("g", golden).items:
        prompt = tok.apply_chat_template(item.messages, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template([*item.messages, {"role": "assistant", "content": item.expected}],
                                       tokenize=False)
        # The answer span as training renders it: everything after the generation prompt (answer + end of turn).
        assert full.startswith(prompt)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = tok(full, add_special_tokens=False)["input_ids"]
        assert ids[: len(p_ids)] == p_ids
        labels = [-100] * len(p_ids) + ids[len(p_ids):]
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
        n = len(ids) - len(p_ids)  # HF shifts labels: every answer token is predicted once
        total += out.loss.item() * n
        count += n
    assert r.report["metrics"]["golden"]["candidate"]["val_loss"]["value"] == pytest.approx(total / count, rel=1e-4)


def test_reruns_use_the_cache_and_match_a_fresh_generation(golden: Path, tiny_model_dir: Path, eval_cfg: Cfg,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = evaluate(eval_cfg(), str(tiny_model_dir), suites=[str(golden)], out=tmp_path / "a")
    import tuneforge.eval.run as run_mod

    real_load = run_mod.load
    monkeypatch.setattr(run_mod, "load", lambda *a, **k: pytest.fail("a cached rerun loaded the model"))
    second = evaluate(eval_cfg(), str(tiny_model_dir), suites=[str(golden)], out=tmp_path / "b")
    assert second.report["metrics"] == first.report["metrics"]
    monkeypatch.setattr(run_mod, "load", real_load)
    cached = _cached_replies(Workspace.from_env())
    # With the cache off, generation runs again (greedy, seeded) and produces the same answers.
    evaluate(eval_cfg("eval.cache=false"), str(tiny_model_dir), suites=[str(golden)], out=tmp_path / "c")
    assert _cached_replies(Workspace.from_env()) == cached
    # A different generation config is a different cache entry.
    evaluate(eval_cfg("eval.max_new_tokens=3"), str(tiny_model_dir), suites=[str(golden)], out=tmp_path / "d")
    assert len(_cached_replies(Workspace.from_env())) == 2


def test_unknown_gate_metric_fails_before_any_model_loads(golden: Path, tiny_model_dir: Path, eval_cfg: Cfg,
                                                          tmp_path: Path) -> None:
    with pytest.raises(EvalError) as err:
        evaluate(eval_cfg("eval.gates=['json_validity >= 0.9']"), str(tiny_model_dir), suites=[str(golden)],
                 out=tmp_path / "o")
    assert "json_valid," in err.value.render() and "field_accuracy" in err.value.render()
    assert not (Workspace.from_env().root / "eval-cache").exists()


@pytest.fixture
def adapter(tiny_model_dir: Path, tmp_path: Path) -> Path:
    from tuneforge.config import load_config
    from tuneforge.train import train

    cfg = load_config(None, [f"model.base={tiny_model_dir}", "train.max_steps=3", "train.batch_size=4",
                             "train.lr=5e-2", "train.save_every_steps=null", "train.precision=fp32",
                             "train.warmup_ratio=0.0", "tracking.enabled=false"])
    return train(cfg, data=write_prepared(tmp_path / "ds"), out=tmp_path / "adapter").path


def test_adapter_against_its_base_with_forgetting(adapter: Path, golden: Path, general: Path, tiny_model_dir: Path,
                                                  eval_cfg: Cfg, tmp_path: Path) -> None:
    cfg = eval_cfg(f"eval.suites=[{{name: tickets, path: '{golden}'}}, {{name: chat, path: '{general}', "
                   "kind: general}]", "eval.gates=['forgetting_similarity_drop <= 1.0', "
                   "'field_accuracy >= baseline + 0.0', 'chat.rouge_l >= 0']")
    r = evaluate(cfg, str(adapter), baselines=[str(tiny_model_dir)], out=tmp_path / "o")
    rep = r.report
    meta = json.loads((adapter / "tuneforge.json").read_text())
    assert rep["model"]["kind"] == "adapter" and rep["model"]["checksum"] == meta["checksum"]
    assert rep["baselines"][0]["label"] == "baseline" and set(rep["metrics"]["tickets"]) == {"candidate", "baseline"}
    comp = next(c for c in rep["comparisons"] if c["suite"] == "tickets" and c["metric"] == "val_loss")
    m = rep["metrics"]["tickets"]
    assert comp["diff"] == pytest.approx(m["candidate"]["val_loss"]["value"] - m["baseline"]["val_loss"]["value"],
                                         abs=1e-5)
    assert comp["ci"][0] <= comp["diff"] <= comp["ci"][1]
    assert comp["significant"] == (comp["ci"][0] > 0 or comp["ci"][1] < 0)
    f = rep["forgetting"]
    refs = json.loads(Path(f["references"]).read_text())
    assert refs["base"] == str(tiny_model_dir) and len(refs["answers"]) == 3
    # The base's own answers are the references; the drop is base minus candidate similarity.
    assert f["base_similarity"]["value"] == pytest.approx(1.0, abs=1e-4)
    assert f["similarity_drop"]["value"] == pytest.approx(
        f["base_similarity"]["value"] - f["candidate_similarity"]["value"], abs=1e-5)
    assert [g["passed"] for g in rep["gates"]] == [True, True, True]
    # Side-by-side samples are exactly the items where the two models answered differently.
    assert all(s["candidate"] != s["baseline"] for s in rep["samples"])


def test_a_tampered_adapter_is_refused(adapter: Path, golden: Path, eval_cfg: Cfg, tmp_path: Path) -> None:
    with (adapter / "adapter_config.json").open("a") as f:
        f.write(" ")
    with pytest.raises(EvalError, match="does not match its checksum"):
        evaluate(eval_cfg(), str(adapter), suites=[str(golden)], out=tmp_path / "o")


def test_an_unknown_registry_reference_is_a_clear_error(golden: Path, eval_cfg: Cfg, tmp_path: Path) -> None:
    from tuneforge.errors import TuneforgeError

    with pytest.raises(TuneforgeError) as err:
        evaluate(eval_cfg(), "ticket-triage@production", suites=[str(golden)], out=tmp_path / "o")
    assert "ticket-triage" in err.value.render()

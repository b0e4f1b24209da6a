"""The registry library on real adapters and the embedded MLflow store: register, dedup, aliases,
evidence rules, force, rollback, the audit log, and checksum verification."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from registry_helpers import checksum_of, write_report

from tuneforge.config import load_config
from tuneforge.errors import ConfigError, IntegrityError, RegistryError
from tuneforge.registry import Registry, resolve_model_ref
from tuneforge.registry.integrity import sha256_file
from tuneforge.workspace import Workspace


def _copy(adapter: Path, dest: Path) -> Path:
    shutil.copytree(adapter, dest)
    return dest


def test_register_copies_files_and_records_lineage(registry: Registry, adapters, tmp_path: Path) -> None:
    a = _copy(adapters[0], tmp_path / "a")
    meta = json.loads((a / "tuneforge.json").read_text())
    mv = registry.register(a, "support")
    assert (mv.name, mv.version, mv.reused) == ("support", 1, False)
    assert mv.checksum == meta["checksum"]
    assert set(mv.files) == {p.name for p in a.iterdir()}  # tuneforge.json is covered too
    assert all(e.sha256 == sha256_file(a / e.path) and e.size == (a / e.path).stat().st_size
               for e in mv.files.values())
    assert mv.dataset_fingerprint == meta["dataset"]["fingerprint"]
    assert mv.base_model["identity"] == meta["base_model"]["identity"] and mv.base_model["identity"]
    assert mv.contract["chat_template_sha256"] == meta["contract"]["chat_template_sha256"]
    assert "chat_template" not in mv.contract
    assert mv.training_run_id is None  # trained with tracking off
    assert mv.metrics["steps"] == meta["metrics"]["steps"]
    assert mv.source.startswith(registry.workspace.mlflow_artifacts.as_uri())
    # The version no longer depends on the adapter directory.
    shutil.rmtree(a)
    local = registry.local_path("support@1")
    assert local == registry.workspace.root / "registry" / "cache" / "support" / "1"
    assert {p.name: sha256_file(p) for p in local.iterdir()} == {
        p.name: sha256_file(p) for p in adapters[0].iterdir()}
    assert resolve_model_ref("support@1", registry.workspace) == local


def test_training_run_id_is_recorded_when_tracked(registry: Registry, adapters, tmp_path: Path) -> None:
    a = _copy(adapters[0], tmp_path / "a")
    meta = json.loads((a / "tuneforge.json").read_text())
    meta["tracking"] = {"run_id": "abc123", "experiment": "tuneforge"}  # as training writes it when tracked
    (a / "tuneforge.json").write_text(json.dumps(meta))
    mv = registry.register(a, "tracked")
    assert mv.training_run_id == "abc123"
    run = registry.client.get_run(mv.run_id)
    assert run.data.tags["tuneforge.training_run_id"] == "abc123"


def test_identical_content_returns_the_existing_version(registry: Registry, adapters, tmp_path: Path) -> None:
    first = registry.register(adapters[0], "support")
    again = registry.register(_copy(adapters[0], tmp_path / "copy"), "support")
    assert again.version == first.version and again.reused and not first.reused
    other = registry.register(adapters[1], "support")
    assert other.version == 2 and not other.reused
    assert [v.version for v in registry.versions("support")] == [1, 2]
    # Same content under another name is a separate model.
    assert registry.register(adapters[0], "other").version == 1
    assert [e.action for e in registry.history("support")] == ["register", "register"]


@pytest.mark.parametrize("bad", ["extra.bin", "optimizer.pt", "weights.pkl", "run.ckpt", "setup.sh"])
def test_register_refuses_files_off_the_allow_list(registry: Registry, adapters, tmp_path: Path, bad: str) -> None:
    a = _copy(adapters[0], tmp_path / "a")
    (a / bad).write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(IntegrityError) as exc:
        registry.register(a, "support")
    assert bad in exc.value.what and bad in (exc.value.where or "")
    if bad != "setup.sh":
        assert "pickle" in exc.value.what
    assert not registry.list_models() or registry.versions("support") == []


def test_register_refuses_an_adapter_changed_after_training(registry: Registry, adapters, tmp_path: Path) -> None:
    a = _copy(adapters[0], tmp_path / "a")
    with (a / "adapter_config.json").open("a") as f:
        f.write(" ")
    with pytest.raises(IntegrityError, match="adapter_config.json was modified"):
        registry.register(a, "support")
    with pytest.raises(RegistryError, match="no readable tuneforge.json"):
        registry.register(tmp_path / "a" / "nope", "support")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="no readable tuneforge.json"):
        registry.register(tmp_path / "empty", "support")


def test_resolve_refs(registry: Registry, adapters) -> None:
    registry.register(adapters[0], "support")
    registry.register(adapters[1], "support")
    registry.promote("support", 1, "staging")
    assert registry.resolve("support").version == 2  # latest
    assert registry.resolve("support@1").version == 1 and registry.resolve("support@v2").version == 2
    assert registry.resolve("support@staging").version == 1
    assert registry.aliases("support") == {"staging": 1}
    with pytest.raises(RegistryError, match="no alias 'canary'") as exc:
        registry.resolve("support@canary")
    assert "staging (v1)" in (exc.value.fix or "")
    with pytest.raises(RegistryError, match="no version 7"):
        registry.resolve("support@7")
    with pytest.raises(RegistryError, match="no registered model named nope"):
        registry.resolve("nope@1")
    with pytest.raises(RegistryError, match="invalid alias"):
        registry.promote("support", 1, "latest")


def test_production_needs_a_passing_report_of_this_version(workspace: Workspace, adapters, tmp_path: Path) -> None:
    reg = Registry(workspace, required_suites=["golden", "safety"])
    mv = reg.register(adapters[0], "support")
    with pytest.raises(RegistryError, match="no eval report is attached"):
        reg.promote("support", 1, "production")
    # A report of another model cannot be attached.
    with pytest.raises(RegistryError, match="is for another model"):
        reg.attach_eval("support", 1, write_report(tmp_path / "other.json", checksum_of(adapters[1])))
    reg.attach_eval("support", 1, write_report(tmp_path / "fail.json", mv.checksum, passed=False,
                                               suites=("golden", "safety")))
    with pytest.raises(RegistryError, match="did not pass"):
        reg.promote("support", 1, "production")
    reg.attach_eval("support", 1, write_report(tmp_path / "golden.json", mv.checksum, suites=("golden",)))
    with pytest.raises(RegistryError, match="does not cover required suite.*safety"):
        reg.promote("support", 1, "production")
    assert reg.aliases("support") == {}
    # Non-gated aliases move freely.
    assert reg.promote("support", 1, "canary") is not None
    good = write_report(tmp_path / "good.json", mv.checksum, suites=("golden", "safety"))
    reg.attach_eval("support", 1, good)
    entry = reg.promote("support", 1, "production")
    assert entry is not None and entry.action == "promote" and (entry.from_version, entry.to_version) == (None, 1)
    assert entry.evidence["eval_report"] == sha256_file(good) and entry.evidence["gates"] == "2/2 passed"
    assert reg.aliases("support") == {"canary": 1, "production": 1}
    assert reg.promote("support", 1, "production") is None  # already there: no move, no entry
    details = reg.show("support@production")
    assert details.evidence.ok and [g["passed"] for g in details.gates] == [True, True]
    assert [e.action for e in reg.history("support")] == [
        "register", "attach-eval", "attach-eval", "promote", "attach-eval", "promote"]


def test_register_with_eval_report_attaches_it(registry: Registry, adapters, tmp_path: Path) -> None:
    report = write_report(tmp_path / "eval.json", checksum_of(adapters[0]))
    mv = registry.register(adapters[0], "support", eval_report=report)
    assert [r.sha256 for r in mv.evals] == [sha256_file(report)] and mv.evals[0].passed
    assert registry.promote("support", 1, "production") is not None


def test_force_overrides_with_a_reason_and_is_audited(registry: Registry, adapters, monkeypatch) -> None:
    registry.register(adapters[0], "support")
    with pytest.raises(RegistryError, match="--force needs --reason"):
        registry.promote("support", 1, "production", force=True)
    monkeypatch.setenv("TUNEFORGE_ACTOR", "alice@ops")
    entry = registry.promote("support", 1, "production", force=True, reason="hotfix, eval suite down")
    assert entry is not None and entry.action == "force" and entry.actor == "alice@ops"
    assert entry.reason == "hotfix, eval suite down"
    assert entry.evidence["eval_report"] is None and entry.evidence["problems"]
    assert registry.aliases("support") == {"production": 1}


def test_rollback_walks_back_through_production_moves(registry: Registry, adapters, tmp_path: Path) -> None:
    for i, a in enumerate(adapters, start=1):
        registry.register(a, "support", eval_report=write_report(tmp_path / f"e{i}.json", checksum_of(a)))
    with pytest.raises(RegistryError, match="no 'production' alias"):
        registry.rollback("support")
    registry.promote("support", 1, "production")
    registry.promote("support", 2, "production")
    entry = registry.rollback("support", reason="latency regression")
    assert (entry.action, entry.from_version, entry.to_version) == ("rollback", 2, 1)
    assert registry.resolve("support@production").version == 1
    with pytest.raises(RegistryError, match="no previous 'production' version"):
        registry.rollback("support")
    moves = registry.history("support", alias="production")
    assert [(e.action, e.from_version, e.to_version) for e in moves] == [
        ("promote", None, 1), ("promote", 1, 2), ("rollback", 2, 1)]
    assert moves[-1].reason == "latency regression"
    # Moves survive a new Registry (a restart) and the chain verifies.
    again = Registry(registry.workspace)
    assert [e.id for e in again.history("support")] == [e.id for e in registry.history("support")]
    assert again.verify_history() == []


def test_audit_log_is_append_only_and_edits_are_detected(registry: Registry, adapters) -> None:
    registry.register(adapters[0], "support")
    registry.promote("support", 1, "staging", reason="try it")
    db = registry.audit.path
    con = sqlite3.connect(db)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("UPDATE entries SET reason = 'nothing to see'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("DELETE FROM entries")
    assert registry.verify_history() == []
    # Someone with file access drops the trigger and rewrites history: the hash chain shows it.
    con.execute("DROP TRIGGER entries_no_update")
    con.execute("UPDATE entries SET reason = 'nothing to see' WHERE action = 'promote'")
    con.commit()
    con.close()
    problems = registry.verify_history()
    assert problems and "entry 2" in problems[0] and "edited" in problems[0]


def test_tampered_files_refuse_to_load_naming_the_file(registry: Registry, adapters) -> None:
    registry.register(adapters[0], "support")
    local = registry.local_path("support@1")
    weights = local / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="checksum mismatch in adapter_model.safetensors"):
        registry.local_path("support@1")
    with pytest.raises(IntegrityError, match="adapter_model.safetensors"):
        resolve_model_ref("support@1", registry.workspace)
    # An extra file dropped into the verified copy is refused too.
    shutil.copyfile(adapters[0] / "adapter_model.safetensors", weights)
    registry.local_path("support@1")
    (local / "evil.pkl").write_bytes(b"x")
    with pytest.raises(IntegrityError, match="unexpected file evil.pkl"):
        registry.local_path("support@1")
    # Tampering in the artifact store itself is caught when the copy is downloaded.
    shutil.rmtree(local)
    stored = Path(registry.resolve("support@1").source.removeprefix("file://")) / "tokenizer_config.json"
    stored.write_text(stored.read_text().replace("<|im_end|>", "<|im_start|>"))
    with pytest.raises(IntegrityError, match="checksum mismatch in tokenizer_config.json"):
        registry.local_path("support@1")
    assert not local.exists()


def test_tampered_eval_report_is_not_evidence(registry: Registry, adapters, tmp_path: Path) -> None:
    mv = registry.register(adapters[0], "support", eval_report=write_report(tmp_path / "fail.json",
                                                                            checksum_of(adapters[0]), passed=False))
    stored = Path(mv.source.removeprefix("file://")).parent / mv.evals[0].artifact
    report = json.loads(stored.read_text())
    report["passed"] = True
    stored.write_text(json.dumps(report))
    with pytest.raises(IntegrityError, match="does not match its recorded sha256"):
        registry.promote("support", 1, "production")


def test_download_copies_verified_files(registry: Registry, adapters, tmp_path: Path) -> None:
    registry.register(adapters[0], "support")
    out = registry.download("support@1", tmp_path / "dl")
    assert {p.name: sha256_file(p) for p in out.iterdir()} == {p.name: sha256_file(p) for p in adapters[0].iterdir()}
    with pytest.raises(RegistryError, match="not empty"):
        registry.download("support@1", out)


def test_registry_config_section(workspace: Workspace) -> None:
    cfg = load_config(None, ["registry.required_suites=[golden, safety]", "registry.gated_aliases=[production, canary]"])
    reg = Registry.from_config(cfg, workspace)
    assert reg.required_suites == ["golden", "safety"] and reg.gated_aliases == ["production", "canary"]
    assert load_config().registry.required_suites == []
    with pytest.raises(ConfigError, match="did you mean 'registry.required_suites'"):
        load_config(None, ["registry.required_suite=[x]"])

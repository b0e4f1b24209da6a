"""The data stage end to end on the tiny model (real tokenizer and chat template)."""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tuneforge.config import load_config
from tuneforge.data import REASONS, PreparedDataset, RejectReason, prepare
from tuneforge.data._split import SPLITS
from tuneforge.errors import DataError
from tuneforge.workspace import Workspace

TICKET = ("My invoice for order {n} shows a double charge on the premium plan and the support portal "
          "keeps timing out whenever I try to open a refund request from the billing page, please help")


def chat(user: str, answer: str, system: str | None = None) -> dict:
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"messages": msgs}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def run(tmp_path: Path, model: Path, inputs: list[Path], *sets: str, out: str = "out") -> PreparedDataset:
    cfg = load_config(None, [f"model.base={model}", *sets])
    return prepare(cfg, [str(p) for p in inputs], out=tmp_path / out, workspace=Workspace.from_env(tmp_path / "ws"))


def rows_of(ds: PreparedDataset) -> list[dict]:
    out = []
    for s in SPLITS:
        out += [dict(json.loads(line), split=s) for line in ds.split_path(s).read_text().splitlines()]
    return out


def rejects_of(ds: PreparedDataset) -> list[dict]:
    return [json.loads(line) for line in (ds.path / "rejected.jsonl").read_text().splitlines()]


def distinct_rows(n: int, start: int = 0) -> list[dict]:
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima", "mike", "november", "oscar"]
    rows = []
    for i in range(start, start + n):
        # Different word sequences per row so no two rows are near-duplicates.
        q = " ".join(words[(i * 7 + j * (i % 5 + 1)) % len(words)] + str((i * 31 + j) % 97) for j in range(14))
        rows.append(chat(f"Question {i}: {q}", f"Answer {i}: {q[::-1]}"))
    return rows


def test_every_format_is_read_and_normalised(tmp_path: Path, tiny_model_dir: Path) -> None:
    d = tmp_path
    alpaca = write_jsonl(d / "alpaca.jsonl", [{"instruction": "Say hi", "input": "to Bob", "output": "Hi Bob"}])
    (d / "chat.json").write_text(json.dumps([chat("Ping?", "Pong.", system="Be brief.")]))
    (d / "pc.csv").write_text("prompt,completion\nWhat is 2+2?,4\n")
    pq.write_table(pa.table({"conversations": [[{"from": "human", "value": "Hello there"},
                                                 {"from": "gpt", "value": "General Kenobi"}]]}), d / "sg.parquet")
    text = write_jsonl(d / "text.jsonl", [{"text": "Raw domain text for continued pre-training."}])
    pref = write_jsonl(d / "pref.jsonl", [{"prompt": "Pick one", "chosen": "The good one", "rejected": "The bad one"}])
    ds = run(tmp_path, tiny_model_dir, [alpaca, d / "chat.json", d / "pc.csv", d / "sg.parquet", text, pref],
             "data.split.train=1.0", "data.split.val=0.0", "data.split.test=0.0")
    c = ds.counts
    assert c["read"] == 6 and c["kept"] == 6 and c["rejected"] == 0
    assert c["kinds"] == {"chat": 4, "text": 1, "preference": 1}
    formats = {Path(i["path"]).name: i["format"] for i in ds.manifest["inputs"]}
    assert formats == {"alpaca.jsonl": "alpaca", "chat.json": "chat", "pc.csv": "prompt_completion",
                       "sg.parquet": "sharegpt", "text.jsonl": "text", "pref.jsonl": "preference"}
    by_origin = {r["origin"].split(":")[0].split("/")[-1]: r for r in rows_of(ds)}
    assert by_origin["alpaca.jsonl"]["messages"][-1] == {"role": "assistant", "content": "Hi Bob"}
    assert "to Bob" in by_origin["alpaca.jsonl"]["messages"][0]["content"]
    assert by_origin["sg.parquet"]["messages"][1]["content"] == "General Kenobi"
    assert by_origin["pref.jsonl"]["chosen"] == [{"role": "assistant", "content": "The good one"}]
    assert by_origin["text.jsonl"]["text"].startswith("Raw domain text")
    assert all(r["source"] == "domain" for r in rows_of(ds))


def test_every_reject_reason_is_recorded_with_file_and_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    golden = "the quarterly export of warehouse stock levels silently drops every row after midnight"
    eval_file = write_jsonl(tmp_path / "golden.jsonl", [chat(golden, "bug")])
    good = distinct_rows(4)
    lines = [
        *good,                                                         # 1-4 kept
        '{"messages": [ broken',                                       # 5 invalid_json
        '[1, 2]',                                                      # 6 not_an_object
        {"foo": "bar"},                                                # 7 file is chat: missing messages
        {"other": 1},                                                  # 8 missing messages
        chat("Hello", "   "),                                          # 9 empty_field
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 5}]},  # 10 non-string
        {"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "yo"}]},  # 11 role
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "assistant", "content": "c"}]},         # 12 bad_role_order
        {"messages": [{"role": "user", "content": "only a question"}]},  # 13 no assistant
        chat("long " * 600, "x"),                                      # 14 too_many_tokens
        good[0],                                                       # 15 exact duplicate of line 1
        chat(TICKET.format(n=1) + " today", "billing issue"),          # 16 kept
        chat(TICKET.format(n=1) + " now", "billing issue"),            # 17 near duplicate of 16
        chat("Leaked: " + golden.upper() + "!", "bug"),               # 18 contaminated
        chat("Mail me at jane.doe@example.com", "ok"),                 # 19 pii (drop mode)
    ]
    f = write_jsonl(tmp_path / "mixed.jsonl", lines)
    ds = run(tmp_path, tiny_model_dir, [f], "data.max_tokens=256", "data.pii.mode=drop",
             f"data.decontaminate.eval_sets=[{eval_file}]", "data.decontaminate.ngram=8")
    by_line = {r["line"]: r for r in rejects_of(ds)}
    expected = {5: "invalid_json", 6: "not_an_object", 7: "missing_field", 8: "missing_field",
                9: "empty_field", 10: "non_string_content", 11: "unknown_role", 12: "bad_role_order",
                13: "no_assistant_turn", 14: "too_many_tokens", 15: "exact_duplicate", 17: "near_duplicate",
                18: "contaminated", 19: "pii"}
    assert {k: v["reason"] for k, v in by_line.items()} == expected
    assert all(r["source"] == str(f) for r in by_line.values())
    assert by_line[15]["detail"] == f"duplicate of {f}:1"
    assert f"{f}:16" in by_line[17]["detail"]
    assert "golden.jsonl:1" in by_line[18]["detail"]
    assert "EMAIL_ADDRESS" in by_line[19]["detail"]
    assert by_line[5]["row"] is not None  # the raw line is kept, nothing is lost
    c = ds.counts
    assert c["read"] == len(lines) == c["kept"] + c["rejected"]
    assert c["kept"] == 5
    assert set(c["rejected_by_reason"]) <= set(REASONS)
    assert c["funnel"][-1]["left"] == c["kept"]


def test_fully_invalid_input_reports_then_fails(tmp_path: Path, tiny_model_dir: Path) -> None:
    f = write_jsonl(tmp_path / "bad.jsonl", ["{not json", '{"x": 1}', '"str"'])  # no row names a format
    with pytest.raises(DataError, match="nothing left to train on") as e:
        run(tmp_path, tiny_model_dir, [f])
    assert "rejected.jsonl" in str(e.value)
    ds = PreparedDataset.load(tmp_path / "out")
    assert ds.counts["read"] == 3 and ds.counts["rejected"] == 3
    assert [r["reason"] for r in rejects_of(ds)] == ["invalid_json", "unknown_format", "not_an_object"]


def test_files_that_are_not_what_their_name_says_are_data_errors(tmp_path: Path, tiny_model_dir: Path) -> None:
    latin = tmp_path / "latin.csv"
    latin.write_bytes("question caf\xe9,answer\nhi,there\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8") as err:
        run(tmp_path, tiny_model_dir, [latin])
    assert err.value.where == str(latin) and "UTF-8" in err.value.fix
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="the input files have no rows"):
        run(tmp_path, tiny_model_dir, [empty], out="empty")
    fake = tmp_path / "rows.parquet"
    fake.write_text('{"messages": []}\n')
    with pytest.raises(DataError, match="cannot read the Parquet file") as err:
        run(tmp_path, tiny_model_dir, [fake])
    assert err.value.where == str(fake)


@pytest.mark.parametrize("mode", ["redact", "drop", "flag"])
def test_pii_modes(tmp_path: Path, tiny_model_dir: Path, mode: str) -> None:
    rows = distinct_rows(3) + [chat("Card 4111 1111 1111 1111 was charged, mail jane.doe@example.com", "Refund issued.")]
    f = write_jsonl(tmp_path / "pii.jsonl", rows)
    ds = run(tmp_path, tiny_model_dir, [f], f"data.pii.mode={mode}")
    kept = rows_of(ds)
    pii = ds.manifest["pii"]
    assert pii["findings"].get("CREDIT_CARD") == 1 and pii["findings"].get("EMAIL_ADDRESS") == 1
    text = "\n".join(json.dumps(r) for r in kept)
    if mode == "redact":
        assert len(kept) == 4 and "4111" not in text and "jane.doe" not in text
        assert "<CREDIT_CARD>" in text and "<EMAIL>" in text
    elif mode == "drop":
        assert len(kept) == 3 and "4111" not in text
        assert [r["reason"] for r in rejects_of(ds)] == ["pii"]
    else:
        assert len(kept) == 4 and "4111 1111 1111 1111" in text
        assert pii["rows_with_findings"] == 1


def test_split_is_stable_when_rows_are_added(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = distinct_rows(60)
    a = run(tmp_path, tiny_model_dir, [write_jsonl(tmp_path / "a.jsonl", rows)], out="a")
    b = run(tmp_path, tiny_model_dir, [write_jsonl(tmp_path / "b.jsonl", rows + distinct_rows(40, start=60))], out="b")
    split_a = {r["id"]: r["split"] for r in rows_of(a)}
    split_b = {r["id"]: r["split"] for r in rows_of(b)}
    assert len(split_a) == 60 and len(split_b) == 100
    assert all(split_b[i] == s for i, s in split_a.items())
    assert set(split_b.values()) == set(SPLITS)  # all three splits used at 100 rows


def test_seeded_ratios_are_respected(tmp_path: Path, tiny_model_dir: Path) -> None:
    f = write_jsonl(tmp_path / "r.jsonl", distinct_rows(400))
    ds = run(tmp_path, tiny_model_dir, [f], "data.split.train=0.5", "data.split.val=0.25", "data.split.test=0.25",
             "data.dedup.near=false")
    s = ds.counts["splits"]
    assert abs(s["train"] - 200) < 40 and abs(s["val"] - 100) < 30 and abs(s["test"] - 100) < 30


def test_rerun_is_a_noop_and_changes_invalidate(tmp_path: Path, tiny_model_dir: Path) -> None:
    f = write_jsonl(tmp_path / "d.jsonl", distinct_rows(20))
    first = run(tmp_path, tiny_model_dir, [f], out="x")
    again = run(tmp_path, tiny_model_dir, [f], out="x")
    assert again.reused and again.fingerprint == first.fingerprint
    # Without --out the dataset is named by its fingerprint and found again by input key.
    ws = Workspace.from_env(tmp_path / "ws")
    cfg = load_config(None, [f"model.base={tiny_model_dir}"])
    named = prepare(cfg, [str(f)], workspace=ws)
    assert named.path.name == named.fingerprint[:16] and named.fingerprint == first.fingerprint
    assert prepare(cfg, [str(f)], workspace=ws).reused

    assert run(tmp_path, tiny_model_dir, [f], "data.max_tokens=1000", out="y").fingerprint != first.fingerprint

    # Same files, different chat template: a new fingerprint, never a stale cache.
    other = tmp_path / "other-template"
    shutil.copytree(tiny_model_dir, other)
    tcfg = json.loads((other / "tokenizer_config.json").read_text())
    tmpl_file = other / "chat_template.jinja"
    if tmpl_file.is_file():
        tmpl_file.write_text(tmpl_file.read_text().replace("<|im_start|>", "<|im_start|> "))
    else:
        tcfg["chat_template"] = tcfg["chat_template"].replace("<|im_start|>", "<|im_start|> ")
        (other / "tokenizer_config.json").write_text(json.dumps(tcfg))
    changed = run(tmp_path, other, [f], out="z")
    assert not changed.reused and changed.fingerprint != first.fingerprint


def test_tokenizer_change_changes_fingerprint(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    f = write_jsonl(tmp_path / "d.jsonl", distinct_rows(10))
    first = run(tmp_path, tiny_model_dir, [f], out="x")
    other = tmp_path / "other-tok"
    shutil.copytree(tiny_model_dir, other)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<ticket>"])
    tok.save_pretrained(other)
    assert run(tmp_path, other, [f], out="y").fingerprint != first.fingerprint


def test_token_counts_use_the_rendered_template(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    row = chat("How many tokens?", "This many.", system="Count.")
    ds = run(tmp_path, tiny_model_dir, [write_jsonl(tmp_path / "t.jsonl", [row])],
             "data.split.train=1.0", "data.split.val=0", "data.split.test=0")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected = len(tok(tok.apply_chat_template(row["messages"], tokenize=False), add_special_tokens=False)["input_ids"])
    assert rows_of(ds)[0]["num_tokens"] == expected
    assert expected > len(["How", "many", "tokens?", "This", "many.", "Count."])  # template tokens are counted
    assert ds.manifest["tokens"]["stats"]["max"] == expected


def test_mixing_general_data_at_ratio(tmp_path: Path, tiny_model_dir: Path) -> None:
    domain = write_jsonl(tmp_path / "domain.jsonl", distinct_rows(80))
    general = write_jsonl(tmp_path / "general.jsonl",
                          [chat(f"General question {i} about topic {i * 13 % 17} and {i * 7 % 11}",
                                f"General answer {i} with detail {i * 3}") for i in range(100)])
    ds = run(tmp_path, tiny_model_dir, [domain], f"data.mix.path={general}", "data.mix.ratio=0.2",
             "data.dedup.near=false")
    rows = rows_of(ds)
    sources = [r["source"] for r in rows]
    assert sources.count("domain") == 80 and sources.count("general") == 20
    c = ds.counts
    assert c["rejected_by_reason"] == {"mix_surplus": 80}
    assert c["read"] == 180 == c["kept"] + c["rejected"]


def test_workers_do_not_change_the_result(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = distinct_rows(30) + distinct_rows(5) + [chat("mail a@b.com now", "ok")]
    f = write_jsonl(tmp_path / "w.jsonl", rows)
    serial = run(tmp_path, tiny_model_dir, [f], "data.workers=1", "data.chunk_size=7", out="s")
    parallel = run(tmp_path, tiny_model_dir, [f], "data.workers=2", "data.chunk_size=7", out="p")
    assert parallel.manifest["timings"]["workers"] == 2
    assert serial.fingerprint == parallel.fingerprint
    assert serial.counts == parallel.counts
    # The heap is frozen only while the workers fork; the caller's collector is left as it was.
    assert gc.get_freeze_count() == 0


def test_reject_reason_names_are_stable() -> None:
    assert RejectReason.NEAR_DUPLICATE == "near_duplicate"
    assert len(set(REASONS)) == len(REASONS) >= 15


def _golden_input(path: Path) -> Path:
    """Seeded rows of every kind the data stage treats differently, as JSON Lines."""
    import random

    rng = random.Random(11)
    words = ["refund", "invoice", "login", "crash", "export", "ünïcödé", "東京", "straße", "slow", "error"]
    pii = ["mail jane.doe@example.com", "call me on 020 7946 0958", "card 4111 1111 1111 1111", "ip 10.0.3.7",
           "see https://status.example.com/x", ""]
    lines: list[str] = []
    for i in range(400):
        text = f"Ticket {i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(3, 40))) + " " + rng.choice(pii)
        r = rng.random()
        if r < 0.55:
            row = chat(text, json.dumps({"category": rng.choice(words)}), "Classify the ticket." if i % 3 else None)
        elif r < 0.65:
            row = {"conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": "ok " + text[:20]}]}
        elif r < 0.72:
            row = {"instruction": text, "input": "", "output": "done"}
        elif r < 0.78:
            row = {"prompt": [{"role": "user", "content": text}], "chosen": [{"role": "assistant", "content": "A"}],
                   "rejected": [{"role": "assistant", "content": "B " + text[:30]}]}
        elif r < 0.82:
            row = {"text": text}
        elif r < 0.85:
            row = chat(text * 40, "too long")
        elif r < 0.88 and lines:
            lines.append(rng.choice(lines))  # an exact duplicate
            continue
        elif r < 0.91:
            long = f"Ticket {i}: " + " ".join(rng.choice(words) for _ in range(60))
            lines.append(json.dumps(chat(long, "first")))
            lines.append(json.dumps(chat(long + " thanks", "second")))  # a near-duplicate of it
            continue
        elif r < 0.93:
            lines.append(rng.choice(["{broken", "[1, 2]", "", "null"]))
            continue
        else:
            row = {"messages": [{"role": "assistant", "content": text}]}
        lines.append(json.dumps(row, ensure_ascii=rng.random() < 0.5))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# sha256 (first 16 hex digits) of each output file, as the data stage wrote them before its
# throughput work (tuneforge commit 877c385, a row at a time through transformers): the
# optimised path must write the same bytes.
GOLDEN = {
    "train.jsonl": "f8148017fb5ed2c9",
    "val.jsonl": "0fa8b30c28cb6261",
    "test.jsonl": "527d1dd04945ec14",
    "rejected.jsonl": "f6d3b6404903a4f1",
}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_output_bytes_are_pinned(tmp_path: Path, tiny_model_dir: Path, workers: str,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    monkeypatch.chdir(tmp_path)  # rows record their source path; a relative one keeps the bytes fixed
    src = _golden_input(Path("golden.jsonl"))
    cfg = load_config(None, [f"model.base={tiny_model_dir}", "data.pii.mode=redact", "data.dedup.near=true",
                             "data.max_tokens=512", f"data.workers={workers}", "data.chunk_size=64"])
    ds = prepare(cfg, [str(src)], out=tmp_path / "out", workspace=Workspace.from_env(tmp_path / "ws"))
    got = {name: hashlib.sha256((ds.path / name).read_bytes()).hexdigest()[:16] for name in GOLDEN}
    c = ds.counts["rejected_by_reason"]
    assert {"exact_duplicate", "near_duplicate", "too_many_tokens", "invalid_json"} <= set(c)
    assert ds.manifest["pii"]["rows_with_findings"] > 0
    assert got == GOLDEN

"""The quickstart dataset generator (examples/support_tickets): determinism, noise rates, label validity."""

from __future__ import annotations

import difflib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support_tickets"
FILES = ["tickets.jsonl", "golden.jsonl", "schema.json", "general.jsonl", "manifest.json"]
N = 800


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"support_tickets_{name}", EXAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load("generate")
zero_shot = _load("zero_shot")  # imports torch lazily, so this stays fast


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tickets")
    gen.generate(out, N, 0)
    return out


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _well_formed(line: str) -> dict | None:
    """The row if it is a valid system/user/assistant chat row with a non-empty answer, else None."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    msgs = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(msgs, list) or [m.get("role") for m in msgs] != ["system", "user", "assistant"]:
        return None
    return row if msgs[2]["content"].strip() else None


def _check(obj, schema: dict) -> list[str]:
    """Independent check of required keys, enums, types, extra keys and summary length."""
    props = schema["properties"]
    errs = [f"missing {k}" for k in schema["required"] if k not in obj]
    errs += [f"extra {k}" for k in obj if k not in props]
    for key, sub in props.items():
        value = obj.get(key)
        if not isinstance(value, str):
            errs.append(f"{key} not a string")
        elif "enum" in sub and value not in sub["enum"]:
            errs.append(f"{key}={value!r} not allowed")
        elif len(value) > sub.get("maxLength", 10**9) or len(value) < sub.get("minLength", 0):
            errs.append(f"{key} length")
    return errs


# PII patterns written independently of the generator
def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _has_card(text: str) -> bool:
    return any(_luhn_ok(re.sub(r"\D", "", m)) for m in re.findall(r"\b(?:\d{4}[ -]?){3}\d{4}\b", text))


def _has_iban(text: str) -> bool:
    for m in re.findall(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}(?: ?[A-Z0-9]{1,4})?\b", text):
        s = m.replace(" ", "")
        if int("".join(str(int(c, 36)) for c in s[4:] + s[:4])) % 97 == 1:
            return True
    return False


PII_CHECKS = {
    "email": lambda t: re.search(r"\b[\w.+-]+@[\w-]+\.[\w.]+\b", t) is not None,
    "phone": lambda t: re.search(r"(\+\d{1,2}[ ()\d-]{8,}\d|\b\d{3}-555-\d{4}\b)", t) is not None,
    "credit_card": _has_card,
    "iban": _has_iban,
    "ip_address": lambda t: re.search(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b", t)
    is not None,
    "us_ssn": lambda t: re.search(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b", t) is not None,
    "url": lambda t: re.search(r"https?://\S+", t) is not None,
}


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path, data):
    gen.generate(tmp_path / "a", N, 0)
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (data / name).read_bytes(), name
    gen.generate(tmp_path / "b", N, 1)
    for name in ["tickets.jsonl", "golden.jsonl", "general.jsonl"]:
        assert (tmp_path / "b" / name).read_bytes() != (data / name).read_bytes(), name
    assert (tmp_path / "b" / "schema.json").read_bytes() == (data / "schema.json").read_bytes()


def test_counts_match_requested_noise_rates(data):
    lines = _lines(data / "tickets.jsonl")
    assert len(lines) == N
    rows = [_well_formed(line) for line in lines]
    malformed = sum(r is None for r in rows)
    assert 0.01 * N <= malformed <= 0.03 * N

    texts = [r["messages"][1]["content"] for r in rows if r]
    exact_or_trivial = len(texts) - len({_norm(t) for t in texts})  # exact, case and whitespace copies
    manifest = json.loads((data / "manifest.json").read_text())
    dups = [x for x in manifest["noise"] if "duplicate_of" in x]
    assert 0.04 * N <= len(dups) <= 0.06 * N
    assert 0 < exact_or_trivial <= len(dups)
    for d in dups:  # a near duplicate differs from its original by a word or two at most
        a = json.loads(lines[d["line"] - 1])["messages"][1]["content"]
        b = json.loads(lines[d["duplicate_of"] - 1])["messages"][1]["content"]
        diff = [x for x in difflib.ndiff(_norm(b).split(), _norm(a).split()) if x[0] in "+-"]
        assert len(diff) <= 4, (d, diff)

    pii_rows = sum(any(check(t) for k, check in PII_CHECKS.items() if k != "phone") for t in texts)
    assert 0.07 * N <= pii_rows <= 0.14 * N
    counts = manifest["counts"]
    assert counts["rows"] == N and counts["malformed_rows"] == malformed and counts["duplicates"] == len(dups)


def test_malformed_rows_cover_every_kind(data):
    lines = _lines(data / "tickets.jsonl")
    kinds = set()
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            kinds.add("truncated_json")
            continue
        if "messages" not in row:
            kinds.add("missing_messages")
        elif [m["role"] for m in row["messages"]].count("user") == 2:
            kinds.add("double_user")
        elif row["messages"][-1]["role"] == "assistant" and not row["messages"][-1]["content"]:
            kinds.add("empty_assistant")
    assert kinds == {"truncated_json", "missing_messages", "double_user", "empty_assistant"}


def test_every_training_label_validates_against_the_schema(data):
    schema = json.loads((data / "schema.json").read_text())
    assert schema["$schema"].endswith("2020-12/schema") and schema["additionalProperties"] is False
    assert set(schema["required"]) == {"category", "priority", "product", "sentiment", "summary"}
    seen = set()
    for line in _lines(data / "tickets.jsonl"):
        row = _well_formed(line)
        if row is None:
            continue
        assert row["messages"][0]["content"] == gen.SYSTEM_PROMPT
        answer = row["messages"][2]["content"]
        label = json.loads(answer)
        assert answer == json.dumps(label, ensure_ascii=False, separators=(",", ":"))  # compact
        assert _check(label, schema) == []
        assert zero_shot.schema_errors(label, schema) == []
        assert len(label["summary"].split()) <= 20
        seen.update((k, label[k]) for k in ["category", "priority", "product", "sentiment"])
    for key in ["category", "priority", "product", "sentiment"]:  # every enum value occurs
        assert {v for k, v in seen if k == key} == set(schema["properties"][key]["enum"])


def test_text_names_the_labelled_product(data):
    """The product is named (or one of its features is); billing tickets that name none are billing_portal."""
    names = {p: [x.removeprefix("the ").lower() for x in [s[0] for s in gen.SURFACES[p]] + gen.FEATURES[p]
                 + gen.WISHES[p] + gen.TASKS[p]] for p in gen.PRODUCTS}
    rows = [r for r in map(_well_formed, _lines(data / "tickets.jsonl")) if r]
    missing = []
    for r in rows:
        text, label = r["messages"][1]["content"].lower(), json.loads(r["messages"][2]["content"])
        if not any(n in text for n in names[label["product"]]):
            missing.append(label)
    others = [m for m in missing if (m["product"], m["category"]) != ("billing_portal", "billing")]
    assert len(others) / len(rows) < 0.03  # the name was hit by an injected typo


def test_golden_is_held_out_and_well_formed(data):
    schema = json.loads((data / "schema.json").read_text())
    golden = [json.loads(line) for line in _lines(data / "golden.jsonl")]
    assert len(golden) == 100
    train = [r["messages"][1]["content"] for r in map(_well_formed, _lines(data / "tickets.jsonl")) if r]
    train_norm = {_norm(t) for t in train}

    def grams(text: str) -> set:
        w = re.findall(r"[a-z0-9]+", text.lower())
        return {tuple(w[i:i + 13]) for i in range(len(w) - 12)}

    train_grams = set().union(*(grams(t) for t in train))
    for g in golden:
        assert [m["role"] for m in g["messages"]] == ["system", "user"]
        assert (data / g["schema"]).is_file()
        expected = json.loads(g["expected"])
        assert _check(expected, schema) == [] and g["category"] == expected["category"]
        text = g["messages"][1]["content"]
        assert _norm(text) not in train_norm
        assert not grams(text) & train_grams  # nothing for 13-gram decontamination to remove
    assert len({_norm(g["messages"][1]["content"]) for g in golden}) == len(golden)
    assert {g["category"] for g in golden} == set(schema["properties"]["category"]["enum"])


def test_pii_rows_contain_the_listed_types(data):
    lines = _lines(data / "tickets.jsonl")
    manifest = json.loads((data / "manifest.json").read_text())
    listed = {x["line"]: x["pii"] for x in manifest["noise"] if "pii" in x}
    assert {k for kinds in listed.values() for k in kinds} == set(PII_CHECKS)
    for line_no, kinds in listed.items():
        text = json.loads(lines[line_no - 1])["messages"][1]["content"]
        for kind in kinds:
            assert PII_CHECKS[kind](text), (line_no, kind, text)
    strong = ["email", "credit_card", "iban", "us_ssn", "url"]  # no false positives on unlisted rows
    for i, line in enumerate(lines, start=1):
        row = _well_formed(line)
        if row and i not in listed:
            text = row["messages"][1]["content"]
            assert not [k for k in strong if PII_CHECKS[k](text)], (i, text)
    golden = [json.loads(line)["messages"][1]["content"] for line in _lines(data / "golden.jsonl")]
    assert not [t for t in golden if any(PII_CHECKS[k](t) for k in strong)]


def test_general_rows_are_correct_chat_rows(data):
    rows = [json.loads(line) for line in _lines(data / "general.jsonl")]
    assert len(rows) == 200 and len({r["messages"][1]["content"] for r in rows}) == 200
    arithmetic = 0
    for r in rows:
        assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
        m = re.fullmatch(r"(-?\d+) ([+*-]) (-?\d+) = (-?\d+)", r["messages"][2]["content"])
        if m:
            a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
            assert {"+": a + b, "-": a - b, "*": a * b}[op] == c
            arithmetic += 1
    assert arithmetic > 10


def test_cli_prints_counts(tmp_path):
    out = subprocess.run([sys.executable, str(EXAMPLE / "generate.py"), "--out", str(tmp_path), "--n", "200",
                          "--seed", "3", "--golden", "12", "--general", "20"],
                         capture_output=True, text=True, check=True).stdout
    assert "200 rows" in out and "injected duplicates" in out and "malformed" in out
    assert len(_lines(tmp_path / "golden.jsonl")) == 12 and len(_lines(tmp_path / "general.jsonl")) == 20


def test_zero_shot_scoring_helpers():
    schema = gen.schema()
    good = {"category": "bug", "priority": "low", "product": "api", "sentiment": "neutral", "summary": "x"}
    assert zero_shot.schema_errors(good, schema) == []
    assert zero_shot.schema_errors({**good, "extra": 1}, schema)
    assert zero_shot.schema_errors({**good, "priority": "critical"}, schema)
    assert zero_shot.schema_errors({k: v for k, v in good.items() if k != "summary"}, schema)
    assert zero_shot.schema_errors({**good, "summary": "w " * 100}, schema)
    assert zero_shot.schema_errors([good], schema)
    reply = 'Sure! ```json\n' + json.dumps(good) + "\n```"
    assert zero_shot.parse_strict(reply) is None and zero_shot.parse_lenient(reply) == good
    row = {"expected": json.dumps(good), "category": "bug"}
    m = zero_shot.score([row, row], [json.dumps(good), "no json here"], schema)
    assert m["json_valid_rate"] == 0.5 and m["schema_compliance_rate"] == 0.5
    assert m["field_accuracy"]["product"] == 0.5 and m["summary_word_f1"] == 0.5

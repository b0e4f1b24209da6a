"""PII scanner: presidio's pattern recognizers, offline, with exact pre-filters."""

from __future__ import annotations

import logging
import pickle
import random
import re
import socket
from collections import Counter
from pathlib import Path

import pytest

from tuneforge.config import ALL_PII_ENTITIES
from tuneforge.data._pii import (
    _NOT_IN_PHONE,
    MIN_PHONE_DIGITS,
    PLACEHOLDERS,
    PiiFinding,
    PiiScanner,
    _resolve_overlaps,
    _tld_alternatives,
)

VALID_CARD = "4111 1111 1111 1111"  # passes the Luhn check
BAD_CARD = "4111 1111 1111 1112"  # same shape, wrong check digit


@pytest.fixture(scope="module")
def scanner() -> PiiScanner:
    return PiiScanner(ALL_PII_ENTITIES)


@pytest.mark.parametrize(
    ("entity", "text", "pii"),
    [
        ("EMAIL_ADDRESS", "Please write to jane.doe@example.com about the refund.", "jane.doe@example.com"),
        ("PHONE_NUMBER", "Call me on +44 20 7946 0958 after 5pm.", "+44 20 7946 0958"),
        ("CREDIT_CARD", f"My card {VALID_CARD} was charged twice.", VALID_CARD),
        ("IBAN_CODE", "Refund it to GB82 WEST 1234 5698 7654 32 please.", "GB82 WEST 1234 5698 7654 32"),
        ("IP_ADDRESS", "Your server at 192.168.10.24 refuses the upload.", "192.168.10.24"),
        ("IP_ADDRESS", "Our egress address is 2001:db8::ff00:42:8329 today.", "2001:db8::ff00:42:8329"),
        ("US_SSN", "For verification my SSN is 536-22-1234.", "536-22-1234"),
        ("URL", "The page https://shop.example.com/orders/123 is blank.", "https://shop.example.com/orders/123"),
    ],
)
def test_each_entity_is_found_and_redacted(scanner: PiiScanner, entity: str, text: str, pii: str) -> None:
    start = text.index(pii)
    (finding,) = scanner.scan(text)
    assert (finding.entity, finding.start, finding.end) == (entity, start, start + len(pii))
    assert finding.score >= 0.5
    redacted, counts = scanner.redact(text)
    assert redacted == text.replace(pii, PLACEHOLDERS[entity])
    assert counts == {entity: 1}


def test_placeholders_are_short_tags() -> None:
    assert dict(PLACEHOLDERS) == {
        "EMAIL_ADDRESS": "<EMAIL>",
        "PHONE_NUMBER": "<PHONE>",
        "CREDIT_CARD": "<CREDIT_CARD>",
        "IBAN_CODE": "<IBAN>",
        "IP_ADDRESS": "<IP_ADDRESS>",
        "US_SSN": "<SSN>",
        "URL": "<URL>",
    }
    assert set(PLACEHOLDERS) == set(ALL_PII_ENTITIES)


def test_card_number_needs_a_valid_checksum(scanner: PiiScanner) -> None:
    text = f"The old card {BAD_CARD} was declined, the new card {VALID_CARD} worked."
    redacted, counts = scanner.redact(text)
    assert counts == {"CREDIT_CARD": 1}
    assert BAD_CARD in redacted and VALID_CARD not in redacted
    assert scanner.scan(f"card {BAD_CARD}") == []


def test_iban_needs_a_valid_checksum(scanner: PiiScanner) -> None:
    assert [f.entity for f in scanner.scan("IBAN DE89370400440532013000")] == ["IBAN_CODE"]
    assert scanner.scan("IBAN DE89370400440532013001") == []


def test_counts_per_entity(scanner: PiiScanner) -> None:
    text = (
        "Hi, I'm jane.doe@example.com (also j.doe@work.example.org). Call me on +44 20 7946 0958 "
        f"or mobile +1 415-555-2671. Card {VALID_CARD}. Logs are at https://logs.example.net/x/1 "
        "from host 10.0.0.12."
    )
    redacted, counts = scanner.redact(text)
    assert counts == {"EMAIL_ADDRESS": 2, "PHONE_NUMBER": 2, "CREDIT_CARD": 1, "URL": 1, "IP_ADDRESS": 1}
    assert redacted == (
        "Hi, I'm <EMAIL> (also <EMAIL>). Call me on <PHONE> or mobile <PHONE>. Card <CREDIT_CARD>. "
        "Logs are at <URL> from host <IP_ADDRESS>."
    )


@pytest.mark.parametrize(
    "text",
    [
        "Hello, the dashboard has been loading slowly since Monday. Could you take a look? Thanks, Sam",
        "My order number is 48213 and it was placed on 12/03/2024 for $19.99. It still has not shipped.",
        "I'm on app version 4.6.8 (e.g. the current beta, i.e. not the store build) on Android 14.",
        "We were billed 1,200.00 EUR instead of 1,020.00 EUR on invoice INV-2024-7929, see line 3.",
        "I called support twice at 10:30 and 14:45 but the line was busy. Ticket 5521 is still open.",
        "Please cancel my plan before the next renewal. I tried three times and got error 500 each time.",
        "The export took 35 minutes for 120000 rows, and 12% of them had the wrong totals.",
    ],
)
def test_no_false_positive_on_plain_ticket_text(scanner: PiiScanner, text: str) -> None:
    assert scanner.scan(text) == []
    assert scanner.redact(text) == (text, {})


def test_an_email_is_not_also_a_url(scanner: PiiScanner) -> None:
    from presidio_analyzer.predefined_recognizers import UrlRecognizer

    text = "Contact jane.doe@example.com today."
    # presidio's URL recognizer on its own does see URLs inside the address ...
    raw = UrlRecognizer().analyze(text, ["URL"], None)
    assert {text[r.start : r.end] for r in raw} >= {"example.com"}
    # ... but the validated e-mail (score 1.0) covers them and wins.
    assert [(f.entity, text[f.start : f.end]) for f in scanner.scan(text)] == [("EMAIL_ADDRESS", "jane.doe@example.com")]
    assert scanner.redact(text) == ("Contact <EMAIL> today.", {"EMAIL_ADDRESS": 1})


def test_overlaps_resolve_to_higher_score_then_longer_span() -> None:
    a = PiiFinding("URL", 10, 20, 0.5)
    b = PiiFinding("EMAIL_ADDRESS", 5, 25, 1.0)
    c = PiiFinding("US_SSN", 30, 41, 0.5)
    d = PiiFinding("PHONE_NUMBER", 28, 41, 0.5)  # same score as c, longer
    e = PiiFinding("URL", 50, 55, 0.6)
    f = PiiFinding("PHONE_NUMBER", 54, 70, 0.5)  # longer but lower score than e
    assert _resolve_overlaps([a, b, c, d, e, f]) == [b, d, e]
    assert _resolve_overlaps([c, e]) == [c, e]  # disjoint findings all stay


def test_context_words_lift_phone_numbers_over_the_threshold() -> None:
    default = PiiScanner(["PHONE_NUMBER"])  # threshold 0.5; a phone number scores 0.4
    bare = PiiScanner(["PHONE_NUMBER"], score_threshold=0.4)
    strict = PiiScanner(["PHONE_NUMBER"], score_threshold=0.8)
    number = "020 7946 0958"
    assert default.scan(number) == []
    assert [f.score for f in bare.scan(number)] == [pytest.approx(0.4)]
    (found,) = default.scan(f"Call me on {number}")
    assert found.score == pytest.approx(0.75)
    assert default.scan(f"Phone: a b c d {number}")  # context word 5 words before: in reach
    assert default.scan(f"Phone: a b c d e {number}") == []  # 6 words before: out of reach
    assert default.scan(f"Recall {number}") == []  # a context word must start the word
    assert strict.scan(f"Call me on {number}") == []  # 0.75 < 0.8


def test_scan_and_redact_agree_and_keep_no_state(scanner: PiiScanner) -> None:
    texts = _varied_texts(150, seed=3)
    first = [scanner.scan(t) for t in texts]
    assert sum(map(bool, first)) > 50  # the corpus does exercise the recognizers
    for text, findings in zip(reversed(texts), reversed(first), strict=True):
        assert scanner.scan(text) == findings  # order of calls does not matter
        redacted, counts = scanner.redact(text)
        assert counts == dict(Counter(f.entity for f in findings))
        expected, pos = [], 0
        for f in findings:
            expected += [text[pos : f.start], PLACEHOLDERS[f.entity]]
            pos = f.end
        assert redacted == "".join([*expected, text[pos:]])
        # Placeholders are not PII themselves. (Rescanning can still find a number that a context
        # word reaches only once the words between them have collapsed into a placeholder.)
        assert not [f for f in scanner.scan(redacted) if "<" in redacted[f.start : f.end]]


def test_only_requested_entities_are_reported() -> None:
    text = f"Call me on +44 20 7946 0958, card {VALID_CARD}, see https://example.com/a."
    assert [f.entity for f in PiiScanner(ALL_PII_ENTITIES).scan(text)] == ["PHONE_NUMBER", "CREDIT_CARD", "URL"]
    assert [f.entity for f in PiiScanner(["CREDIT_CARD", "URL"]).scan(text)] == ["CREDIT_CARD", "URL"]
    assert PiiScanner([]).scan(text) == []


def test_unknown_entity_is_rejected() -> None:
    with pytest.raises(ValueError, match="PERSON"):
        PiiScanner(["EMAIL_ADDRESS", "PERSON"])


def test_scanner_pickles_as_its_arguments(scanner: PiiScanner) -> None:
    data = pickle.dumps(PiiScanner(["URL", "EMAIL_ADDRESS"], 0.6))
    assert len(data) < 500  # no recognizers or compiled patterns travel to worker processes
    copy = pickle.loads(data)
    assert (copy.entities, copy.score_threshold, copy.prefilter) == (("URL", "EMAIL_ADDRESS"), 0.6, True)
    text = "See https://example.com/a or mail a.b@example.org"
    assert copy.scan(text) == PiiScanner(["URL", "EMAIL_ADDRESS"], 0.6).scan(text)
    assert pickle.loads(pickle.dumps(scanner)).scan(text) == scanner.scan(text)


def test_email_validation_stays_offline(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path))
    caplog.set_level(logging.DEBUG)
    fresh = PiiScanner(["EMAIL_ADDRESS"])  # a new extractor, loading its suffix list now
    assert [f.entity for f in fresh.scan("write to jane@example.co.uk")] == ["EMAIL_ADDRESS"]
    assert fresh.scan("write to jane@example") == []  # no public suffix: not an address
    assert attempts == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert not any(tmp_path.rglob("*"))  # no cache written


# ------------------------------------------------------------------------- pre-filters are exact

# Texts that sit on, and just off, every pre-filter's boundary.
SNIPPETS = [
    # phone numbers in many formats, with and without context words at various distances
    "+44 20 7946 0958", "(212) 555-0187", "+1 415-555-2671", "020 7946 0958", "+49 30 901820",
    "0151 23456789", "555-0187", "(212) 555 0187 ext. 12", "tel:+33 1 42 68 53 00", "030 1234",
    "call me on 020 7946 0958", "CALL 020 7946 0958", "my mobile is +44 7700 900123",
    "phone a b c d 0151 23456789", "phone a b c d e 0151 23456789", "Telephone:+44 20 7946 0958x12",
    "number: 030 1234", "the numbers are 0151 23456789, 020 7946 0958", "iPhone 15 Pro 2024 1234",
    "recall 020 7946 0958", "cancellation 020 7946 0958", "called 3.12 and 2024", "phone ٠١٥١ ٢٣٤٥٦٧٨٩",
    "cell ０２０ ７９４６ ０９５８", "phone 020\u00a07946\u00a00958", "phone: 12:30:15", "call 12/03/2024",
    "mobİle 0151 23456789", "phone (0)30 1234 5678 #", "number 1-800-FLOWERS", "phone 1 2 3 4 5 6 7 8",
    "call a b c d +44 20 7946 0958 ext 123", "phone +1 415-555-2671 x 99", "phone 020 7946 0958 extension 7",
    "call a b c d 0151 2345 6789 ext. 12 thanks", "phone a b c +1 (415) 555-2671;ext=55",
    "call me on 020 7946 0958b", "call 1640 now", "my number is 1645", "call a b c d 1640",
    # cards, SSNs, IBANs, IPs, near misses included
    VALID_CARD, BAD_CARD, "4111-1111-1111-1111", "4111111111111111", "3782 822463 10005", "5500 0000 0000 0004",
    "536-22-1234", "536 22 1234", "536.22.1234", "536221234", "53622-1234", "536-221234", "000-12-3456",
    "GB82 WEST 1234 5698 7654 32", "DE89370400440532013000", "de89370400440532013000", "FR14 2004 1010",
    "192.168.10.24", "10.0.0.1/24", "1.2.3", "v1.2.3.4", "::1", "fe80::1ff:fe23:4567:890a", "::ffff:10.0.0.1",
    "2001:0db8:85a3:0000:0000:8a2e:0370:7334", "00:1A:2B:3C:4D:5E", "12:30", "a:b:c:d:e:f:0:1",
    # URLs and e-mails, and things that merely look like them
    "example.com", "https://x.org/a(b)", "'https://a.co/x'", '"www.example.co.uk/path"', "EXAMPLE.COM",
    "e.g.", "i.e.", "Mr.Smith", "file.txt", "client.py", "sync.worker", "resp.json()", "ReportView.update",
    "example.com\u2003/path", "example.com/a\x1cb", "www.example.org/x\x1fy?z=1",
    'see:"https://a.co/x"', "xhttps://a.com", "(https://a.com/b)", "f(example.com)", "<www.example.org>",
    "a.kt.com", "'example.com'", 'foo"bar.com"', "/usr/lib/python3.12/site-packages/x/client.py",
    "androidx.work.Worker$1.invoke(Worker.kt:68)", 'File "/srv/app/sync.py", line 7',
    "mailto:jane@example.com?subject=hi", "http://[::1]:8080/x", "ftp://files.example.com/a.txt", "ex-ample.museum", "www2.test.de/a?b=1", "ﬁle.com", "Kelvin.\u212aY",
    "a@b.c", "x@y.com", "@handle", "name@localhost", "first.last+tag@sub.example.co.uk", "jane@Example.COM",
]
WORDS = ["the", "order", "was", "late", "and", "my", "account", "shows", "a", "double", "charge", "so", "please", "help", "me", "soon", "thanks"]
SEPARATORS = [" ", "\n", ", ", "\t", ": ", ". ", " (", ") ", "\n\n", " - "]


def _varied_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = [" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) for _ in range(rng.randint(1, 4))]
        for _ in range(rng.randint(0, 3)):
            parts.insert(rng.randint(0, len(parts)), rng.choice(SNIPPETS))
        text = parts[0]
        for p in parts[1:]:
            text += rng.choice(SEPARATORS) + p
        out.append(text)
    return out + SNIPPETS


@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.75, 0.8])
def test_prefilters_never_change_results(threshold: float) -> None:
    # 0.0: every recognizer's weakest finding counts; 0.5 and 0.75: phone numbers need a context
    # word; 0.8: they can never pass. The reference runs every recognizer on every whole text.
    texts = _varied_texts(300, seed=int(threshold * 100))
    fast = PiiScanner(ALL_PII_ENTITIES, threshold)
    full = PiiScanner(ALL_PII_ENTITIES, threshold, prefilter=False)
    found = 0
    for text in texts:
        expected = full.scan(text)
        assert fast.scan(text) == expected, text
        found += bool(expected)
    assert found > len(texts) // 10


def test_phone_digit_minimum_matches_phonenumbers_metadata() -> None:
    import phonenumbers
    from phonenumbers import PhoneMetadata
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    def shortest(md: PhoneMetadata) -> int:
        # A valid number matches the general description, so has one of its lengths.
        return min(md.general_desc.possible_length)

    national = min(shortest(PhoneMetadata.metadata_for_region(r)) for r in PhoneRecognizer.DEFAULT_SUPPORTED_REGIONS)
    regions = [PhoneMetadata.metadata_for_region(r) for r in phonenumbers.SUPPORTED_REGIONS]
    regions += [PhoneMetadata.metadata_for_nongeo_region(c) for c in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS]
    international = min(len(str(md.country_code)) + shortest(md) for md in regions if md.general_desc.possible_length)
    assert min(national, international) >= MIN_PHONE_DIGITS


def test_phone_windows_end_on_letters_phonenumbers_never_matches() -> None:
    from phonenumbers.phonenumbermatcher import _PATTERN

    literal_letters = {c for c in re.sub(r"\\.", "", _PATTERN.pattern) if c.isalpha()}
    assert literal_letters  # the pattern does spell some ("ext", "x", ...)
    in_pattern = re.compile("[" + "".join(sorted(literal_letters)) + "]", re.IGNORECASE | re.UNICODE)
    safe = [chr(c) for c in range(0x80) if _NOT_IN_PHONE.match(chr(c))]
    assert len(safe) == 36 and not [c for c in safe if in_pattern.match(c)]


def test_url_prefilter_knows_presidio_top_level_domains() -> None:
    from presidio_analyzer.predefined_recognizers import UrlRecognizer

    tlds = _tld_alternatives(UrlRecognizer.BASE_URL_REGEX)
    assert {"com", "org", "uk", "py"} <= tlds and len(tlds) > 600
    assert _tld_alternatives("(?:https?://)[a-z]+") == frozenset()  # unexpected shape: no shortcut


def test_url_matches_inside_code_and_file_names_are_not_pii() -> None:
    scanner = PiiScanner(["URL"])
    trace = ('Traceback: File "client.py", line 12, in sync.worker\n'
             "java.lang.IllegalStateException at com.tallyworks.app.SyncWorker.doWork(orders.py:3)")
    assert scanner.scan(trace) == []
    text = "see example.com, www.acme.org/help or https://status.example.io/incidents/42 today"
    found = [text[f.start:f.end] for f in scanner.scan(text)]
    assert found == ["example.com", "www.acme.org/help", "https://status.example.io/incidents/42"]

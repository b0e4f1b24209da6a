"""PII detection and redaction with presidio-analyzer's pattern recognizers.

The recognizers are presidio's own (regexes, Luhn and IBAN checksums, python-phonenumbers), run
directly without an ``AnalyzerEngine``, so no spaCy model is needed. Three things are added
around them:

* **Offline e-mail validation.** presidio's ``EmailRecognizer`` validates domains with the
  module-level ``tldextract.extract``, which downloads the public suffix list on first use and
  logs an error with a traceback when there is no network. Our subclass gives each recognizer
  its own extractor that reads only the snapshot bundled with tldextract; no global state is
  touched.
* **Context words.** Without an NLP engine presidio never raises a score from context words,
  and a phone number scores 0.4, under the default threshold of 0.5. We apply presidio's rule
  (+0.35, at least 0.4, at most 1.0) when one of the five words before a finding begins with
  one of its recognizer's context words, so "call me on 020 7946 0958" is found and a bare
  number is not.
* **Pre-filters.** Running every recognizer on every row costs 0.7 ms per ticket, mostly
  phonenumbers and the URL regex. Each recognizer runs only where the text has what every one
  of its findings needs: an ``@``, a dot followed by two letters, enough digits, a context word
  before a phone number that could not pass the threshold without one. Where that is local,
  the recognizer runs on just that part (URLs cannot contain whitespace; phone numbers cannot
  contain most letters). The filters are necessary conditions of the recognizers' own patterns,
  so they skip work, never a finding; ``prefilter=False`` turns them off to check exactly that.

Findings that overlap are resolved after thresholding: the higher score wins, then the longer
span, so an e-mail address (validated, score 1.0) is not also reported as a URL for its domain.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

# Placeholder written in place of each entity by redact().
PLACEHOLDERS: MappingProxyType[str, str] = MappingProxyType(
    {
        "EMAIL_ADDRESS": "<EMAIL>",
        "PHONE_NUMBER": "<PHONE>",
        "CREDIT_CARD": "<CREDIT_CARD>",
        "IBAN_CODE": "<IBAN>",
        "IP_ADDRESS": "<IP_ADDRESS>",
        "US_SSN": "<SSN>",
        "URL": "<URL>",
    }
)

# presidio's LemmaContextAwareEnhancer defaults: how much a context word adds, the floor it
# lifts a score to, and how many preceding words are searched.
CONTEXT_BOOST = 0.35
CONTEXT_MIN_SCORE = 0.4
CONTEXT_WORDS_BEFORE = 5

# Fewest digits a number can have that phonenumbers accepts as valid in the regions presidio's
# PhoneRecognizer searches (4 for a German national number; 6 with a country code). A test
# recomputes it from phonenumbers' metadata so that an update cannot silently make it too high.
MIN_PHONE_DIGITS = 4

# A stretch of the text to analyze, (start, stop), chosen so that the recognizer finds there
# exactly what it finds in the whole text between those offsets.
_Slice = tuple[int, int]

_WORD = re.compile(r"\w+")
_DIGIT_RUN = re.compile(r"\d+")
# What no URL match contains: ASCII whitespace (whitespace for both `re` and presidio's `regex`)
# and the brackets its path excludes. URLs can be searched piece by piece between them.
_URL_BREAK = re.compile(r"[ \t\n\r\f\v()<>]")
# The longest prefix a URL match can have before its host name: a quote and "https://".
_URL_PREFIX = 9
# Letters that no phonenumbers match can contain, even case-insensitively: its pattern spells
# only the extension labels "ext", "extensión", "anexo", "int", "доб" and the separator "x".
_NOT_IN_PHONE = re.compile(r"[bcdfghjklmpqruvwyzBCDFGHJKLMPQRUVWYZ]")
_CARD_SHAPE = re.compile(r"\d{4}[- ]?\d{3,4}[- ]?\d{3,4}[- ]?\d{3,5}")  # the pattern without \b and prefixes
_SSN_SHAPE = re.compile(r"\d{3}[- .]?\d{2}[- .]?\d{4}")  # shared by all five SSN patterns
_IPV4_DOTS = re.compile(r"\.\d{1,3}\.\d{1,3}\.\d")  # the last three dots of a dotted quad
_TLD_DOT = re.compile(r"\.([^\W\d_]{2,})")  # a dot and the letters that may start a top-level domain
_HOST_CHAR = re.compile(r"[\w.\-]")  # what must precede that dot


@dataclass(frozen=True)
class PiiFinding:
    """One detected entity: ``text[start:end]`` is the PII, ``score`` presidio's confidence."""

    entity: str
    start: int
    end: int
    score: float


@dataclass(frozen=True)
class _Probe:
    """Where a text's digits are, found once and shared by every recognizer's pre-filter.

    Digits are Unicode decimal digits (``\\d``), a superset of the ``[0-9]`` most patterns use.
    """

    text: str
    runs: list[tuple[int, int]]  # spans of maximal runs of digits
    digits: int

    @classmethod
    def of(cls, text: str) -> _Probe:
        runs = _ascii_digit_runs(text) if text.isascii() else [m.span() for m in _DIGIT_RUN.finditer(text)]
        return cls(text, runs, sum(b - a for a, b in runs))

    def digits_in(self, start: int, stop: int) -> int:
        return sum(max(0, min(b, stop) - max(a, start)) for a, b in self.runs)

    def longest_chain(self, separators: str) -> int:
        """The most digits in consecutive runs joined by single separator characters."""
        best = length = 0
        end = -2
        for a, b in self.runs:
            length = length + b - a if a == end + 1 and self.text[end] in separators else b - a
            best = max(best, length)
            end = b
        return best


def _ascii_digit_runs(text: str) -> list[tuple[int, int]]:
    """Spans of digit runs; str.find finds a few digits several times faster than a regex scan."""
    at: list[int] = []
    for d in "0123456789":
        i = text.find(d)
        while i >= 0:
            if len(at) == 32:  # many digits: the scan is now the cheaper way
                return [m.span() for m in _DIGIT_RUN.finditer(text)]
            at.append(i)
            i = text.find(d, i + 1)
    at.sort()
    runs: list[tuple[int, int]] = []
    for i in at:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _whole(p: _Probe) -> list[_Slice]:
    return [(0, len(p.text))]


def _email_slices(p: _Probe) -> list[_Slice]:
    return _whole(p) if "@" in p.text else []


def _card_slices(p: _Probe) -> list[_Slice]:
    # 13 or more digits in groups separated by at most one "-" or " ".
    return _whole(p) if p.digits >= 13 and p.longest_chain("- ") >= 13 and _CARD_SHAPE.search(p.text) else []


def _ssn_slices(p: _Probe) -> list[_Slice]:
    # Every SSN pattern is 9 digits in groups separated by at most one "-", " " or ".".
    return _whole(p) if p.digits >= 9 and p.longest_chain("- .") >= 9 and _SSN_SHAPE.search(p.text) else []


def _iban_slices(p: _Probe) -> list[_Slice]:
    # Two capital letters (country code) directly followed by two digits (check digits).
    t = p.text
    for a, b in p.runs:
        if b - a >= 2 and a >= 2 and "A" <= t[a - 2] <= "Z" and "A" <= t[a - 1] <= "Z":
            return _whole(p)
    return []


def _ip_slices(p: _Probe) -> list[_Slice]:
    # IPv6 forms either compress with "::" or spell out all 8 groups (7 colons); the
    # IPv4-embedded form with 6 colons also contains a dotted quad.
    t = p.text
    if "::" in t or t.count(":") >= 7 or (p.digits >= 4 and _IPV4_DOTS.search(t)):
        return _whole(p)
    return []


class _UrlSlices:
    """The whitespace-free pieces of a text where presidio's URL pattern could match.

    Its matches contain no whitespace, and each has a host character, a dot and one of the
    pattern's top-level domains (matched case-insensitively, with no boundary after it, which
    is why "client.py" is a URL to presidio). The domains are read from the pattern itself; if
    it ever stops being a plain list of them, any two letters after the dot count.
    """

    def __init__(self, base_url_regex: str) -> None:
        self.tlds = _tld_alternatives(base_url_regex)
        self.longest = max(map(len, self.tlds), default=0)

    def __call__(self, p: _Probe) -> list[_Slice]:
        t = p.text
        out: list[_Slice] = []
        for m in _TLD_DOT.finditer(t):
            dot = m.start()
            if (out and dot < out[-1][1]) or dot == 0 or not _HOST_CHAR.match(t, dot - 1):
                continue
            if not self._could_be_tld(m.group(1)):
                continue
            end = _URL_BREAK.search(t, dot)
            stop = end.start() if end else len(t)
            piece = max(t.rfind(c, 0, dot) for c in " \t\n\r\f\v()<>") + 1
            # No match starts before the host name holding the piece's first possible domain,
            # except by a quote and a scheme; starting there spares the regex the rest.
            host = dot - 1
            while host > piece and _HOST_CHAR.match(t, host - 1):
                host -= 1
            out.append((max(piece, host - _URL_PREFIX), stop))
        return out

    def _could_be_tld(self, letters: str) -> bool:
        if not self.tlds or not letters.isascii():
            return True  # unknown list, or letters that may fold to ASCII ones (K, ſ, İ...)
        low = letters.lower()
        return any(low[:k] in self.tlds for k in range(2, min(len(low), self.longest) + 1))


def _tld_alternatives(base_url_regex: str) -> frozenset[str]:
    """The top-level domains in presidio's URL pattern, or nothing if it is not shaped as expected."""
    head = "[.](?:"
    at = base_url_regex.find(head)
    if at < 0:
        return frozenset()
    body = base_url_regex[at + len(head) :]
    tlds = re.findall(r"\(\?:([a-z]+)\)", body.split(")(?:/", 1)[0] + ")")
    rebuilt = "|".join(f"(?:{t})" for t in tlds)
    if not tlds or not body.startswith(rebuilt + ")"):
        return frozenset()
    return frozenset(tlds)


class _PhoneSlices:
    """Where a phone number that can reach the threshold may be, given that all score 0.4.

    With a threshold at or below that score, any text with enough digits. With a higher one
    that a context word can bridge, only the stretch after each context word: a finding has to
    start within the next five words, and cannot run past a letter phonenumbers never matches,
    so the stretch from inside the context word to the first such letter after those words is
    analyzed on its own with the same result. Otherwise nowhere.
    """

    def __init__(self, base_score: float, threshold: float, context: tuple[str, ...]) -> None:
        boosted = min(1.0, max(base_score + CONTEXT_BOOST, CONTEXT_MIN_SCORE))
        self.bare = base_score >= threshold
        self.never = not self.bare and (not context or boosted < threshold)
        self.context = context
        words = "|".join(re.escape(w) for w in sorted(context, key=len, reverse=True)) or "(?!)"
        self.cue = re.compile(rf"\b(?:{words})", re.IGNORECASE)  # a superset of the boost rule's test

    def __call__(self, p: _Probe) -> list[_Slice]:
        if self.never or p.digits < MIN_PHONE_DIGITS:
            return []
        if self.bare:
            return _whole(p)
        t = p.text
        cues = self._cues(t)
        if not cues or cues[0] >= p.runs[-1][0]:
            return []  # no digit after the first context word
        windows: list[list[int]] = []
        for cue in cues:
            words = _WORD.finditer(t, cue)
            word = next(words)
            safe = _NOT_IN_PHONE.search(t, word.start(), word.end())
            if safe is None:  # no safe place to start a window: fall back to the whole text
                return _whole(p)
            start = safe.start()
            after = [w.start() for _, w in zip(range(CONTEXT_WORDS_BEFORE), words, strict=False)]
            stop = len(t)
            if len(after) == CONTEXT_WORDS_BEFORE:
                end = _NOT_IN_PHONE.search(t, after[-1])
                stop = end.start() if end else len(t)
            if windows and start <= windows[-1][1]:
                windows[-1][1] = max(windows[-1][1], stop)
            else:
                windows.append([start, stop])
        # phonenumbers looks at the character after a number (a Latin letter rejects it), so each
        # window runs a little past its stop; too few digits fit there to start another number.
        tail = MIN_PHONE_DIGITS - 1
        return [(a, min(len(t), b + tail)) for a, b in windows if p.digits_in(a, b) >= MIN_PHONE_DIGITS]

    def _cues(self, t: str) -> list[int]:
        """Sorted starts of words that may begin with a context word (a superset of the rule's)."""
        lowered = t.lower()
        if len(lowered) != len(t):  # lower() lengthened an "İ", so offsets differ: use the regex
            return [m.start() for m in self.cue.finditer(t)]
        starts = set()
        for w in self.context:
            i = lowered.find(w)
            while i >= 0:
                if i == 0 or not (t[i - 1].isalnum() or t[i - 1] == "_"):  # a word starts here
                    starts.add(i)
                i = lowered.find(w, i + 1)
        return sorted(starts)


def _offline_email_recognizer() -> Any:
    """presidio's EmailRecognizer, validating domains against tldextract's bundled snapshot."""
    import tldextract
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    class OfflineEmailRecognizer(EmailRecognizer):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            # No URLs to fetch and no cache directory: the snapshot shipped in the wheel is used,
            # so nothing is downloaded, written or logged.
            self._tld = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

        def validate_result(self, pattern_text: str) -> bool:
            return self._tld(pattern_text).fqdn != ""

    return OfflineEmailRecognizer()


@dataclass(frozen=True)
class _Runner:
    entity: str
    recognizer: Any
    context: tuple[str, ...]  # lower-case context words
    slices: Callable[[_Probe], list[_Slice]]  # the pre-filter: where the recognizer must run


class PiiScanner:
    """Finds and redacts PII with presidio's pattern recognizers.

    ``entities`` are presidio entity names (keys of ``PLACEHOLDERS``); ``score_threshold`` drops
    findings scoring below it once context words are applied. ``prefilter=False`` runs every
    recognizer on every whole text; it exists to verify the pre-filters and to benchmark them.

    Building a scanner takes milliseconds once presidio is imported (the first import takes
    seconds: presidio pulls in spaCy and transformers). A scanner pickles as its arguments and
    is rebuilt on unpickling, so sending one to a worker process is cheap.

    Raises:
        ValueError: an entity name that is not one of ``PLACEHOLDERS``.
    """

    def __init__(self, entities: Sequence[str], score_threshold: float = 0.5, *, prefilter: bool = True) -> None:
        unknown = sorted(set(entities) - set(PLACEHOLDERS))
        if unknown:
            raise ValueError(f"unknown PII entities {unknown}; supported: {sorted(PLACEHOLDERS)}")
        self.entities: tuple[str, ...] = tuple(dict.fromkeys(entities))
        self.score_threshold = float(score_threshold)
        self.prefilter = prefilter
        self._runners = [self._build(e) for e in self.entities]

    def __getstate__(self) -> dict[str, Any]:
        return {"entities": self.entities, "score_threshold": self.score_threshold, "prefilter": self.prefilter}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["entities"], state["score_threshold"], prefilter=state["prefilter"])  # type: ignore[misc]

    def scan(self, text: str) -> list[PiiFinding]:
        """Non-overlapping findings at or above the threshold, in text order."""
        probe = _Probe.of(text)
        found: list[PiiFinding] = []
        for runner in self._runners:
            slices = runner.slices(probe) if self.prefilter else _whole(probe)
            for start, stop in slices:
                piece = text[start:stop] if (start, stop) != (0, len(text)) else text
                for r in runner.recognizer.analyze(piece, [runner.entity], None):
                    begin, end = start + r.start, start + r.end
                    if runner.entity == "URL" and not _plausible_url(text, begin, end):
                        continue
                    score = _with_context(text, begin, r.score, runner.context)
                    if score >= self.score_threshold:
                        found.append(PiiFinding(runner.entity, begin, end, score))
        return _resolve_overlaps(found)

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """``text`` with each finding replaced by its placeholder, and the count per entity.

        Only entities that were found appear in the counts.
        """
        findings = self.scan(text)
        if not findings:
            return text, {}
        parts: list[str] = []
        counts: dict[str, int] = {}
        pos = 0
        for f in findings:
            parts.append(text[pos : f.start])
            parts.append(PLACEHOLDERS[f.entity])
            counts[f.entity] = counts.get(f.entity, 0) + 1
            pos = f.end
        parts.append(text[pos:])
        return "".join(parts), counts

    def _build(self, entity: str) -> _Runner:
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            IbanRecognizer,
            IpRecognizer,
            PhoneRecognizer,
            UrlRecognizer,
            UsSsnRecognizer,
        )

        makers: dict[str, tuple[Callable[[], Any], Callable[[_Probe], list[_Slice]] | None]] = {
            "EMAIL_ADDRESS": (_offline_email_recognizer, _email_slices),
            "PHONE_NUMBER": (PhoneRecognizer, None),  # depends on the threshold, below
            "CREDIT_CARD": (CreditCardRecognizer, _card_slices),
            "IBAN_CODE": (IbanRecognizer, _iban_slices),
            "IP_ADDRESS": (IpRecognizer, _ip_slices),
            "US_SSN": (UsSsnRecognizer, _ssn_slices),
            "URL": (UrlRecognizer, None),  # reads the pattern, below
        }
        make, slices = makers[entity]
        recognizer = make()
        context = tuple(w.strip().lower() for w in (recognizer.context or []) if w.strip())
        if entity == "PHONE_NUMBER":
            slices = _PhoneSlices(recognizer.SCORE, self.score_threshold, context)
        elif entity == "URL":
            slices = _UrlSlices(recognizer.BASE_URL_REGEX)
        return _Runner(entity, recognizer, context, slices)


def _with_context(text: str, start: int, score: float, context: tuple[str, ...]) -> float:
    """The score raised by presidio's rule if one of the 5 words before ``start`` starts a context word."""
    if not context or score >= 1.0:
        return score
    # Look back a bounded stretch first; its first word may be cut, so it must hold one spare.
    lo = max(0, start - 200)
    words = _WORD.findall(text, lo, start)
    if lo > 0 and len(words) <= CONTEXT_WORDS_BEFORE:
        words = _WORD.findall(text, 0, start)
    if any(w.lower().startswith(context) for w in words[-CONTEXT_WORDS_BEFORE:]):
        return min(1.0, max(score + CONTEXT_BOOST, CONTEXT_MIN_SCORE))
    return score


_URL_SCHEME = re.compile(r"[\"'(<\[]?(?:(?:https?|ftp)://|www\.)", re.IGNORECASE)
# Bare "name.ext" that are file names in support text far more often than hosts.
_FILE_EXTENSIONS = frozenset(
    ["py", "js", "ts", "jsx", "tsx", "java", "kt", "rb", "go", "rs", "c", "h", "cc", "cpp", "hpp", "cs", "php", "swift", "scala", "sh", "bat", "ps1", "md", "txt", "json", "yaml", "yml", "toml", "xml", "html", "htm", "css", "scss", "csv", "tsv", "log", "sql", "lock", "ini", "cfg", "conf", "env", "pdf", "doc", "docx", "xls", "xlsx", "ppt", "pptx", "png", "jpg", "jpeg", "gif", "svg", "webp", "zip", "gz", "tgz", "tar", "rar", "exe", "dll", "so", "dylib", "jar", "apk", "ipa", "dmg", "iso", "bin", "dat", "bak", "tmp"]
)


def _plausible_url(text: str, begin: int, end: int) -> bool:
    """False for presidio URL matches that are pieces of code or file names, not addresses.

    Its pattern accepts any dotted name whose last label starts like a top-level domain, so in a
    stack trace it reports `java.lang.Il` (of `java.lang.IllegalStateException`), `client.py` and
    `sync.work` (of `sync.worker`). Redacting those corrupts the code in tickets. A match with a
    scheme or `www.` is kept as is; a bare host must stand as a whole word and not end in a
    file extension.
    """
    span = text[begin:end]
    if _URL_SCHEME.match(span):
        return True
    if end < len(text) and (text[end].isalnum() or text[end] == "_"):
        return False
    if begin > 0 and (text[begin - 1].isalnum() or text[begin - 1] in "._@"):
        return False
    # presidio's quoted-URL patterns include the quotes in the span.
    host = span.strip("\"'()<>[]").split("/", 1)[0].rstrip(".")
    return host.rsplit(".", 1)[-1].lower() not in _FILE_EXTENSIONS


def _resolve_overlaps(found: list[PiiFinding]) -> list[PiiFinding]:
    """Keep the best of overlapping findings: higher score, then longer span, then earlier."""
    if len(found) < 2:
        return found
    kept: list[PiiFinding] = []
    for f in sorted(found, key=lambda f: (-f.score, f.start - f.end, f.start, f.entity)):
        if all(f.end <= k.start or k.end <= f.start for k in kept):
            kept.append(f)
    kept.sort(key=lambda f: (f.start, f.end))
    return kept

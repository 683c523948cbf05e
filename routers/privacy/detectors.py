"""Detectors for personal data and secrets: pure functions ``text -> list[Span]``.

Every detector pairs a cheap regular expression (written so that it cannot backtrack
badly on long digit runs) with a validator that removes near-misses: Luhn for payment
cards, mod-97 for IBANs, the published invalid ranges for US SSNs, the check letter for
Spanish DNI/NIE, digit counts and date shapes for phone numbers. Precision matters as much
as recall here: a false positive reroutes or rewrites a harmless request.

Spans carry offsets and a kind, never a copy of the matched text, so callers can record
*that* something was found without keeping *what*.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import NamedTuple


class Span(NamedTuple):
    start: int
    end: int
    kind: str


Detector = Callable[[str], list[Span]]

# --- e-mail -------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,24}(?![\w-])"
)


def detect_email(text: str) -> list[Span]:
    if "@" not in text:
        return []
    return [Span(m.start(), m.end(), "email") for m in _EMAIL.finditer(text)]


# --- phone numbers ------------------------------------------------------------------------

# Three shapes, each with mandatory separators between groups so the regex stays linear:
# international (+CC ...), North American (NPA) NXX-XXXX, and trunk-0 national numbers
# (UK 020 7946 0958, FR 01 23 45 67 89, DE 030 12345678). Bare digit runs without "+" are
# never phones: order numbers and timestamps look exactly like them.
_PHONE = re.compile(
    r"(?<![\w+])(?<![\d.\-/][.\-/])"
    r"(?:"
    r"(?P<intl>\+\d{8,15}|\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?[ .-]?\d{1,5}(?:[ .-]\d{1,5}){1,5})"
    r"|(?P<nanp>(?:1[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4})"
    r"|(?P<trunk>0\d{1,4}(?:[ ./-]\d{2,8}){1,4})"
    r")"
    r"(?![\w])(?![.\-/]\d)"
)
# Runs of digits and phone punctuation long enough to hold a phone number; the precise
# pattern above only runs inside them (a leading lookbehind would be tried at every offset).
_PHONE_CANDIDATE = re.compile(r"[+(\d](?:[ .()/-]{0,2}\d){7,}")
_DATE_SHAPE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}")
_PHONE_DIGITS = {"intl": (8, 15), "nanp": (10, 11), "trunk": (10, 12)}


def detect_phone(text: str) -> list[Span]:
    spans = []
    for run in _PHONE_CANDIDATE.finditer(text):
        # Without "+", a phone has 10+ digits: dates (8) and most version strings stop here.
        if run.group()[0] != "+" and sum(c.isdigit() for c in run.group()) < 10:
            continue
        spans.extend(_phones_in(text, max(0, run.start() - 2), min(len(text), run.end() + 1)))
    return spans


def _phones_in(text: str, start: int, end: int) -> list[Span]:
    spans = []
    for m in _PHONE.finditer(text, start, end):
        shape = m.lastgroup or "intl"
        low, high = _PHONE_DIGITS[shape]
        candidate = m.group()
        digits = sum(c.isdigit() for c in candidate)
        if not low <= digits <= high:
            continue
        if shape != "intl" and _DATE_SHAPE.fullmatch(candidate):
            continue
        spans.append(Span(m.start(), m.end(), "phone"))
    return spans


# --- payment cards ------------------------------------------------------------------------

# Lookbehinds come after the first character throughout this module: a pattern that starts
# with a character class lets the regex engine skip non-candidates in C.
_CARD = re.compile(r"[2-6](?<![\w-].)(?:[ -]?\d){12,18}(?![\w-])")


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def detect_payment_card(text: str) -> list[Span]:
    spans = []
    for m in _CARD.finditer(text):
        candidate = m.group()
        # One separator style per number: "4111 1111-1111 1111" is a list of numbers, not a card.
        if " " in candidate and "-" in candidate:
            continue
        digits = candidate.replace(" ", "").replace("-", "")
        if luhn_valid(digits):
            spans.append(Span(m.start(), m.end(), "payment_card"))
    return spans


# --- IBAN ---------------------------------------------------------------------------------

# ISO 13616 registry lengths. Knowing the length lets us stop exactly at the IBAN's end
# even when more letters or digits follow after a space.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}
_IBAN_START = re.compile(r"\d\d(?<=(?<![A-Za-z0-9])[A-Za-z]{2}\d\d)(?: ?[A-Za-z0-9]){11,30}")


def iban_valid(compact: str) -> bool:
    """ISO 7064 mod-97-10 on an IBAN without spaces."""
    rearranged = (compact[4:] + compact[:4]).upper()
    if not rearranged.isalnum():
        return False
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def detect_iban(text: str) -> list[Span]:
    spans = []
    for m in _IBAN_START.finditer(text):
        start = m.start() - 2
        length = IBAN_LENGTHS.get(text[start:m.start()].upper())
        if length is None:
            continue
        # Walk the match taking `length` alphanumerics (single spaces allowed between them).
        taken, end = 2, m.start()
        while end < m.end() and taken < length:
            if text[end] != " ":
                taken += 1
            end += 1
        if taken != length or (end < len(text) and text[end].isalnum()):
            continue
        if iban_valid(text[start:end].replace(" ", "")):
            spans.append(Span(start, end, "iban"))
    return spans


# --- national identifiers -----------------------------------------------------------------

# US SSN, separators required (a bare 9-digit run is too often something else). Areas 000,
# 666 and 900-999, group 00 and serial 0000 are never issued; 078-05-1120 and 219-09-9999
# are famous published examples (a wallet insert, an ad) that were voided.
_SSN = re.compile(r"(\d(?<![\w-].)\d\d)([- ])(\d{2})\2(\d{4})(?![\w-])")
_VOID_SSNS = frozenset({"078051120", "219099999"})

# UK National Insurance number: two prefix letters (D, F, I, Q, U, V never; O never second;
# BG, GB, KN, NK, NT, TN, ZZ never allocated), six digits, suffix A-D. A checksum-less but
# tightly structured format, so false positives in prose are rare.
_NINO_UNALLOCATED = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})
_NINO = re.compile(
    r"[A-CEGHJ-PR-TW-Z](?<![\w].)[A-CEGHJ-NPR-TW-Z]"
    r" ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![\w])"
)

# Spanish DNI (8 digits + letter) and NIE (X/Y/Z + 7 digits + letter): the letter is a
# mod-23 check, so random matches pass only 1 time in 23.
_DNI = re.compile(r"([XYZxyz\d](?<![\w-].)\d{7})-?([A-Za-z])(?![\w])")
_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


def _ssn_valid(area: str, group: str, serial: str) -> bool:
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    return area + group + serial not in _VOID_SSNS


def _dni_valid(number: str, letter: str) -> bool:
    number = number.upper()
    if number[0] in "XYZ":
        number = str("XYZ".index(number[0])) + number[1:]
    return _DNI_LETTERS[int(number) % 23] == letter.upper()


def detect_national_id(text: str) -> list[Span]:
    spans = [
        Span(m.start(), m.end(), "national_id")
        for m in _SSN.finditer(text)
        if _ssn_valid(m.group(1), m.group(3), m.group(4))
    ]
    spans.extend(
        Span(m.start(), m.end(), "national_id")
        for m in _NINO.finditer(text)
        if text[m.start():m.start() + 2] not in _NINO_UNALLOCATED
    )
    spans.extend(
        Span(m.start(), m.end(), "national_id")
        for m in _DNI.finditer(text)
        if _dni_valid(m.group(1), m.group(2))
    )
    return sorted(spans)


# --- secrets ------------------------------------------------------------------------------

# Each pattern with the literals one of which any match contains: a substring test (C speed)
# skips the regex entirely for the usual prompt that holds no secret at all.
_SECRET_PATTERNS: tuple[tuple[tuple[str, ...], re.Pattern[str]], ...] = (
    # OpenAI / Anthropic style: sk-..., sk-proj-..., sk-ant-... (validated below)
    (("sk-",), re.compile(r"sk-(?<![\w-]..-)[A-Za-z0-9_-]{20,}")),
    # AWS access key id
    (("AKIA", "ASIA"), re.compile(r"A(?:KI|SI)A(?<![A-Za-z0-9]....)[0-9A-Z]{16}(?![A-Za-z0-9])")),
    (("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),  # GitHub tokens
     re.compile(r"gh[pousr]_(?<![A-Za-z0-9_]....)[A-Za-z0-9]{36,}(?![A-Za-z0-9])")),
    (("github_pat_",), re.compile(r"github_pat_[A-Za-z0-9_]{40,}")),
    (("xox",), re.compile(r"xox[abposr]-(?<![A-Za-z0-9].....)[A-Za-z0-9-]{10,}")),  # Slack
    (("_live_",), re.compile(r"[sr]k_live_(?<![A-Za-z0-9_]........)[A-Za-z0-9]{16,}")),  # Stripe
    (("AIza",), re.compile(r"AIza(?<![A-Za-z0-9_]....)[0-9A-Za-z_-]{35}")),  # Google API key
    # JWT: base64url('{"') is "eyJ" for both header and payload.
    (("eyJ",),
     re.compile(r"eyJ(?<![A-Za-z0-9_-]...)[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")),
    # PEM private keys; a block cut off before its END line is still a key.
    (("PRIVATE KEY",),
     re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)")),
)
_BEARER_LITERALS = ("Bearer", "bearer", "BEARER")
_BEARER = re.compile(r"(?i:\bbearer)\s+([A-Za-z0-9._~+/-]{16,}=*)")
_ALNUM_RUN = re.compile(r"[A-Za-z0-9]{20,}")


def _plausible_sk_key(token: str) -> bool:
    # "sk-learn-tutorial-for-beginners" is prose; real keys carry one long random run.
    run = _ALNUM_RUN.search(token)
    return run is not None and any(c.isdigit() for c in token) and any(c.isalpha() for c in run.group())


def detect_secret(text: str) -> list[Span]:
    spans = []
    for literals, pattern in _SECRET_PATTERNS:
        if not any(literal in text for literal in literals):
            continue
        for m in pattern.finditer(text):
            if m.group().startswith("sk-") and not _plausible_sk_key(m.group()):
                continue
            spans.append(Span(m.start(), m.end(), "secret"))
    if any(literal in text for literal in _BEARER_LITERALS):
        spans.extend(Span(m.start(1), m.end(1), "secret") for m in _BEARER.finditer(text))
    return merge_spans(spans)


# --- registry and merging -----------------------------------------------------------------

DETECTORS: dict[str, Detector] = {
    "email": detect_email,
    "phone": detect_phone,
    "payment_card": detect_payment_card,
    "iban": detect_iban,
    "national_id": detect_national_id,
    "secret": detect_secret,
}
DETECTOR_NAMES: tuple[str, ...] = tuple(DETECTORS)


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    """Non-overlapping spans, sorted; of two overlapping spans the longer (then earlier) wins."""
    ordered = sorted(spans, key=lambda s: (s.start, -(s.end - s.start)))
    merged: list[Span] = []
    for span in ordered:
        if merged and span.start < merged[-1].end:
            last = merged[-1]
            if span.end - span.start > last.end - last.start:
                merged[-1] = span
            continue
        merged.append(span)
    return merged


def scan(text: str, kinds: Iterable[str] = DETECTOR_NAMES) -> list[Span]:
    """All spans the named detectors find in ``text``, overlaps resolved."""
    found: list[Span] = []
    for kind in kinds:
        found.extend(DETECTORS[kind](text))
    return merge_spans(found)

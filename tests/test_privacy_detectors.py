"""Privacy detectors: each on positives and near-misses, plus property tests of the validators."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routers.privacy.config import PrivacyPolicy
from routers.privacy.detectors import (
    DETECTOR_NAMES,
    Span,
    detect_email,
    detect_iban,
    detect_national_id,
    detect_payment_card,
    detect_phone,
    detect_secret,
    iban_valid,
    luhn_valid,
    merge_spans,
    scan,
)


def found(detector: object, text: str) -> list[str]:
    spans = detector(text)  # type: ignore[operator]
    return [text[s.start:s.end] for s in spans]


def test_detector_names_match_the_policy_schema() -> None:
    assert PrivacyPolicy().detectors == DETECTOR_NAMES


@pytest.mark.parametrize("text, expected", [
    ("write to john.doe+billing@example.co.uk today", ["john.doe+billing@example.co.uk"]),
    ("<a@b.io>", ["a@b.io"]),
    ("two: x_y@mail.example.com, z@ex-ample.org.", ["x_y@mail.example.com", "z@ex-ample.org"]),
])
def test_email_positive(text: str, expected: list[str]) -> None:
    assert found(detect_email, text) == expected


@pytest.mark.parametrize("text", [
    "user@localhost", "@mention the team", "foo@bar", "price 5@3.50", "git@ ssh", "name at example dot com",
])
def test_email_negative(text: str) -> None:
    assert detect_email(text) == []


@pytest.mark.parametrize("text, expected", [
    ("call +1 (555) 123-4567 now", "+1 (555) 123-4567"),
    ("+44 20 7946 0958", "+44 20 7946 0958"),
    ("+33 1 23 45 67 89", "+33 1 23 45 67 89"),
    ("+4915112345678", "+4915112345678"),
    ("(555) 123-4567", "(555) 123-4567"),
    ("555-123-4567", "555-123-4567"),
    ("555.123.4567", "555.123.4567"),
    ("UK office: 020 7946 0958.", "020 7946 0958"),
    ("mobile 07700 900123", "07700 900123"),
    ("Paris 01 23 45 67 89", "01 23 45 67 89"),
    ("Berlin 030/12345678", "030/12345678"),
])
def test_phone_positive(text: str, expected: str) -> None:
    assert found(detect_phone, text) == [expected]


@pytest.mark.parametrize("text", [
    "released on 2024-01-15 at 12:30:45",
    "due 01/15/2024 or 15.01.2024",
    "version 10.0.19041.1234 and 1.2.3",
    "host 192.168.100.200",
    "order number 1234567890",  # bare digit runs are never phones
    "timestamp 1705312345123",
    "ISBN 978-3-16-148410-0",
    "room 12-34",
    "+1 2",  # too few digits
    "0123-45",
])
def test_phone_negative(text: str) -> None:
    assert detect_phone(text) == []


@pytest.mark.parametrize("text, expected", [
    ("card 4111 1111 1111 1111 exp 12/27", "4111 1111 1111 1111"),
    ("4111-1111-1111-1111", "4111-1111-1111-1111"),
    ("pan=5555555555554444;", "5555555555554444"),
    ("amex 3782 822463 10005", "3782 822463 10005"),
    ("6011111111111117", "6011111111111117"),
])
def test_payment_card_positive(text: str, expected: str) -> None:
    assert found(detect_payment_card, text) == [expected]


@pytest.mark.parametrize("text", [
    "4111 1111 1111 1112",  # Luhn fails
    "4111111111111121",
    "0000 0000 0000 0000",  # no issuer starts with 0
    "4111 1111-1111 1111",  # mixed separators: not one number
    "411111111111",  # 12 digits
    "41111111111111111111",  # 20 digits
    "id-4111111111111111",  # part of a longer token
])
def test_payment_card_negative(text: str) -> None:
    assert detect_payment_card(text) == []


@pytest.mark.parametrize("text, expected", [
    ("IBAN DE89 3704 0044 0532 0130 00 thanks", "DE89 3704 0044 0532 0130 00"),
    ("GB82WEST12345698765432", "GB82WEST12345698765432"),
    ("fr14 2004 1010 0505 0001 3m02 606", "fr14 2004 1010 0505 0001 3m02 606"),
    ("to NL91ABNA0417164300, ref 7", "NL91ABNA0417164300"),
])
def test_iban_positive(text: str, expected: str) -> None:
    assert found(detect_iban, text) == [expected]


@pytest.mark.parametrize("text", [
    "DE89 3704 0044 0532 0130 07",  # checksum fails
    "GB82WEST12345698765433",
    "XX89370400440532013000",  # no such country
    "DE89 3704 0044 0532",  # too short
    "DE89370400440532013000123",  # glued to more digits
])
def test_iban_negative(text: str) -> None:
    assert detect_iban(text) == []


@pytest.mark.parametrize("text, expected", [
    ("SSN 123-45-6789", "123-45-6789"),
    ("ssn: 536 22 1234", "536 22 1234"),
    ("NINO AB 12 34 56 C", "AB 12 34 56 C"),
    ("QQ123456C is a placeholder? no: CE123456A", "CE123456A"),
    ("DNI 12345678Z", "12345678Z"),
    ("NIE X1234567L", "X1234567L"),
])
def test_national_id_positive(text: str, expected: str) -> None:
    assert found(detect_national_id, text) == [expected]


@pytest.mark.parametrize("text", [
    "000-12-3456", "666-12-3456", "912-34-5678", "123-00-4567", "123-45-0000",  # never issued
    "078-05-1120",  # the voided wallet-card number
    "123-45 6789",  # mixed separators
    "123456789",  # bare runs are too ambiguous
    "GB 12 34 56 A", "BG123456A",  # prefixes never allocated
    "12345678A",  # wrong DNI check letter
    "2024-01-15",
])
def test_national_id_negative(text: str) -> None:
    assert detect_national_id(text) == []


@pytest.mark.parametrize("secret", [
    "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z",
    "sk-" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
    "github_pat_" + "11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
    "xoxb-123456789012-abcdefABCDEF",
    "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----",
])
def test_secret_positive(secret: str) -> None:
    assert found(detect_secret, f"my key is {secret} ok") == [secret]


def test_truncated_private_key_is_a_secret_up_to_the_end() -> None:
    text = "fix this: -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nAAAA"
    assert found(detect_secret, text) == [text[len("fix this: "):]]


def test_bearer_token_span_is_the_token_only() -> None:
    text = "Authorization: Bearer abcDEF123456ghiJKL789"
    assert found(detect_secret, text) == ["abcDEF123456ghiJKL789"]


@pytest.mark.parametrize("text", [
    "use sk-learn-tutorial-for-beginners to learn",  # prose, not a key
    "AKIA1234",  # too short
    "ghp_short",
    "the bearer of bad news",
    "-----BEGIN PUBLIC KEY-----\nMIIBIjANBg\n-----END PUBLIC KEY-----",
    "eyJhbGciOiJIUzI1NiJ9 alone",
])
def test_secret_negative(text: str) -> None:
    assert detect_secret(text) == []


def test_scan_merges_overlaps_longest_wins() -> None:
    text = "IBAN DE89 3704 0044 0532 0130 00"
    assert [s.kind for s in scan(text)] == ["iban"]
    spans = [Span(0, 5, "a"), Span(2, 10, "b"), Span(12, 14, "c")]
    assert merge_spans(spans) == [Span(2, 10, "b"), Span(12, 14, "c")]


def test_scan_respects_the_kinds_asked_for() -> None:
    text = "mail a@b.io, card 4111 1111 1111 1111"
    assert [s.kind for s in scan(text)] == ["email", "payment_card"]
    assert [s.kind for s in scan(text, ["payment_card"])] == ["payment_card"]


# --- properties ---------------------------------------------------------------------------

def _luhn_complete(body: str) -> str:
    for check in "0123456789":
        if luhn_valid(body + check):
            return body + check
    raise AssertionError("unreachable: one check digit always works")


card_bodies = st.builds(lambda first, rest: first + rest, st.sampled_from("23456"),
                        st.text("0123456789", min_size=12, max_size=17))


@settings(max_examples=200, deadline=None)
@given(card_bodies, st.sampled_from(["", " ", "-"]))
def test_every_luhn_valid_card_is_found_and_one_digit_change_is_not(body: str, separator: str) -> None:
    number = _luhn_complete(body)
    grouped = separator.join(number[i:i + 4] for i in range(0, len(number), 4))
    assert found(detect_payment_card, f"pay with {grouped} please") == [grouped]
    # Changing one digit always breaks Luhn (it detects every single-digit error).
    last = number[-1]
    wrong = number[:-1] + str((int(last) + 1) % 10)
    assert detect_payment_card(f"pay with {wrong} please") == []


@settings(max_examples=200, deadline=None)
@given(st.integers(1900, 2100), st.integers(1, 12), st.integers(1, 28), st.sampled_from("-/."))
def test_dates_are_never_phone_numbers(year: int, month: int, day: int, sep: str) -> None:
    for date in (f"{year}{sep}{month:02d}{sep}{day:02d}", f"{day:02d}{sep}{month:02d}{sep}{year}"):
        assert detect_phone(f"on {date} we met") == []


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["DE", "GB", "FR", "NL", "ES", "IT", "CH"]), st.data())
def test_generated_ibans_validate_and_are_found(country: str, data: st.DataObject) -> None:
    from routers.privacy.detectors import IBAN_LENGTHS

    bban = data.draw(st.text("0123456789", min_size=IBAN_LENGTHS[country] - 4,
                             max_size=IBAN_LENGTHS[country] - 4))
    numeric = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    iban = f"{country}{98 - numeric % 97:02d}{bban}"
    assert iban_valid(iban)
    assert found(detect_iban, f"send to {iban}.") == [iban]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_detectors_never_crash_and_return_spans_inside_the_text(text: str) -> None:
    for span in scan(text, DETECTOR_NAMES):
        assert 0 <= span.start < span.end <= len(text)

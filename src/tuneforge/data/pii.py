"""Mask personal data (emails, phone numbers, IP addresses, card numbers) in free text.

A fine-tuned model can memorise and later repeat what it was trained on, so contact details and
card numbers in a scraped corpus should be replaced by a placeholder before training. The
patterns are deliberately conservative: masking a year, a price or a version number would damage
ordinary text far more often than real PII occurs, so every pattern needs a shape no everyday
number has (an ``@``, a leading ``+``, NANP separators, four dotted octets, a valid Luhn checksum).

Stdlib only and precompiled: it may run on every row of a large corpus.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from typing import Literal

PiiKind = Literal["email", "phone", "ip", "card"]
PII_KINDS: tuple[str, ...] = ("email", "phone", "ip", "card")

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}\b"
)

# Card-like: 13-19 digits, either unbroken or in the groupings printed on cards (4-4-4-4[-3],
# 4-6-5 for Amex) with one consistent separator. Arbitrary digit runs with random spacing are not
# cards, and the Luhn check below rejects ~90% of the remaining look-alikes (order numbers, ids).
_CARD = re.compile(
    r"(?<![\d.,+-])(?:"
    r"\d{4}([ -])\d{4}\1\d{4}\1\d{1,4}(?:\1\d{1,3})?"
    r"|\d{4}([ -])\d{6}\2\d{4,5}"
    r"|\d{13,19}"
    r")(?![\d]|[.,]\d)"
)

# Phones: either international (leading "+", country code, then digit groups) or North American
# with separators. Bare digit runs are never phones here: they are far more often ids, counts or
# years. The digit total (7 to 15, E.164's maximum) is checked after matching. Digit groups are
# separated by a *required* separator so that a long digit run can be split only one way: an
# optional separator made the regex backtrack polynomially on "+" followed by many digits.
_PHONE = re.compile(
    r"(?<![\w+])\+\d+(?:(?:[ .-]|[ .-]?\(\d{1,4}\)[ .-]?)\d+)*(?![\w]|[.-]\d)"
    r"|(?<![\w+.-])(?:1[ .-])?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w]|[.-]\d)"
)

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# The look-arounds refuse a longer dotted run (a version number such as 1.2.3.4.5).
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)")
# Candidate IPv6 strings; ``ipaddress`` decides, so a time such as 12:30:45 is left alone.
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")


def luhn_valid(digits: str) -> bool:
    """True when the digit string passes the Luhn checksum used by payment card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return any(c.isalnum() for c in text)


class PiiMasker:
    """Replace each enabled kind of PII with ``placeholder.format(kind=...)``.

    Kinds are applied in a fixed order (email, card, phone, ip) whatever order the config lists:
    an email's domain may look like an IP and a card number like a phone, and the more specific
    pattern must claim the text first.
    """

    _ORDER = ("email", "card", "phone", "ip")

    def __init__(self, kinds: Sequence[str], placeholder: str) -> None:
        unknown = sorted(set(kinds) - set(PII_KINDS))
        if unknown:
            raise ValueError(f"unknown PII kinds {unknown} (allowed: {', '.join(PII_KINDS)})")
        self._steps: list[Callable[[str], str]] = [
            self._step(kind, placeholder.format(kind=kind)) for kind in self._ORDER if kind in kinds
        ]
        # Every pattern needs a digit, an "@" or a ":"; most sentences have none of the ones the
        # enabled kinds need, and one search for them keeps masking nearly free on ordinary prose.
        trigger = ("@" if "email" in kinds else "") + ("\\d" if {"card", "phone", "ip"} & set(kinds) else "")
        trigger += ":" if "ip" in kinds else ""
        self._trigger = re.compile(f"[{trigger}]") if trigger else None

    @staticmethod
    def _step(kind: str, mask: str) -> Callable[[str], str]:
        if kind == "email":
            return lambda text: _EMAIL.sub(mask, text)
        if kind == "card":
            return lambda text: _CARD.sub(
                lambda m: mask if luhn_valid(_digits(m.group(0))) else m.group(0), text
            )
        if kind == "phone":
            return lambda text: _PHONE.sub(
                lambda m: mask if 7 <= len(_digits(m.group(0))) <= 15 else m.group(0), text
            )

        def ip(text: str) -> str:
            text = _IPV4.sub(mask, text)
            if ":" in text:
                text = _IPV6.sub(lambda m: mask if _is_ipv6(m.group(0)) else m.group(0), text)
            return text

        return ip

    def __call__(self, text: str) -> str:
        if self._trigger is None or self._trigger.search(text) is None:
            return text
        for step in self._steps:
            text = step(text)
        return text

"""GS1 element strings (barcodes) and EPC binary encodings (RFID tags), decoded. Pure.

Element strings come bracketed for humans (`(01)09506000134352(10)AB12`) or raw from a
scanner, optionally behind a symbology identifier (`]C1`, `]d2`, `]Q3`, `]e0`), with
variable-length fields ended by GS (0x1D). Check digits of GTINs, SSCCs and GLNs are verified.
EPCs: SGTIN-96 and SSCC-96 become their pure-identity URNs (GS1 EPC Tag Data Standard).
"""

from __future__ import annotations

import re

GS = "\x1d"
_SYMBOLOGY = re.compile(r"^\][A-Za-z][0-9A-Za-z]")
_BRACKETED = re.compile(r"\((\d{2,4})\)([^()]*)")


class GS1Error(ValueError):
    """Not a valid element string or EPC; the message says what is wrong."""


# AI → (fixed length or None for variable, maximum length). Two-digit AIs first.
_FIXED: dict[str, int] = {
    "00": 18, "01": 14, "02": 14, "03": 14, "04": 16, "11": 6, "12": 6, "13": 6, "15": 6,
    "16": 6, "17": 6, "20": 2, "410": 13, "411": 13, "412": 13, "413": 13, "414": 13,
    "415": 13, "416": 13, "417": 13, "7003": 10,
}
_VARIABLE: dict[str, int] = {
    "10": 20, "21": 20, "22": 20, "30": 8, "37": 8, "240": 30, "241": 30, "250": 30, "251": 30,
    "400": 30, "401": 30, "402": 17, "403": 30, "420": 20, "421": 12, "8004": 30, "8020": 25,
    **{str(n): 90 for n in range(90, 100)},
}
_CHECKED = {"00", "01", "02", "03", "410", "411", "412", "413", "414", "415", "416", "417"}


def check_digit(digits: str) -> int:
    """GS1 mod-10 check digit of `digits` (without the check digit)."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits)))
    return (10 - total % 10) % 10


def _ai_at(text: str, pos: int) -> tuple[str, int | None, int]:
    for size in (2, 3, 4):
        ai = text[pos : pos + size]
        if ai in _FIXED:
            return ai, _FIXED[ai], _FIXED[ai]
        if ai in _VARIABLE:
            return ai, None, _VARIABLE[ai]
    four = text[pos : pos + 4]
    if re.fullmatch(r"3[1-6]\d\d", four):  # measures: 310n..369n, six digits
        return four, 6, 6
    raise GS1Error(f"unknown application identifier at position {pos}: {text[pos:pos + 4]!r}")


def _check(ai: str, value: str) -> None:
    if ai in _FIXED and len(value) != _FIXED[ai]:
        raise GS1Error(f"AI ({ai}) needs {_FIXED[ai]} characters, got {len(value)}")
    if ai in _VARIABLE and not 0 < len(value) <= _VARIABLE[ai]:
        raise GS1Error(f"AI ({ai}) takes 1-{_VARIABLE[ai]} characters, got {len(value)}")
    if ai in _CHECKED:
        if not value.isdigit():
            raise GS1Error(f"AI ({ai}) must be digits, got {value!r}")
        if check_digit(value[:-1]) != int(value[-1]):
            raise GS1Error(f"AI ({ai}) {value}: wrong check digit")


def parse_element_string(text: str) -> dict[str, str]:
    """Application identifier → value; raises `GS1Error` for anything malformed."""
    text = _SYMBOLOGY.sub("", text.strip())
    if not text:
        raise GS1Error("empty element string")
    fields: dict[str, str] = {}
    if text.startswith("("):
        end = 0
        for match in _BRACKETED.finditer(text):
            if match.start() != end:
                raise GS1Error(f"unexpected text at position {end}: {text[end:match.start()]!r}")
            ai, value = match.group(1), match.group(2)
            _ai_at(ai, 0)  # known AI?
            _check(ai, value)
            fields[ai] = value
            end = match.end()
        if end != len(text):
            raise GS1Error(f"unexpected text at position {end}: {text[end:]!r}")
        return fields
    pos = 0
    while pos < len(text):
        ai, fixed, _longest = _ai_at(text, pos)
        pos += len(ai)
        if fixed is not None:
            value = text[pos : pos + fixed]
            pos += fixed
        else:
            end = text.find(GS, pos)
            end = len(text) if end < 0 else end
            value = text[pos:end]
            pos = end
        if pos < len(text) and text[pos] == GS:
            pos += 1
        _check(ai, value)
        fields[ai] = value
    return fields


def looks_like_element_string(text: str) -> bool:
    stripped = _SYMBOLOGY.sub("", text.strip())
    return stripped.startswith("(") or (text.startswith("]") and stripped[:2].isdigit())


# --- EPC (Tag Data Standard) -------------------------------------------------------------------

# Partition → (company prefix bits, company prefix digits, item/extension bits, their digits)
_SGTIN_PARTITIONS = {
    0: (40, 12, 4, 1), 1: (37, 11, 7, 2), 2: (34, 10, 10, 3), 3: (30, 9, 14, 4),
    4: (27, 8, 17, 5), 5: (24, 7, 20, 6), 6: (20, 6, 24, 7),
}
_SSCC_PARTITIONS = {
    0: (40, 12, 18, 5), 1: (37, 11, 21, 6), 2: (34, 10, 24, 7), 3: (30, 9, 28, 8),
    4: (27, 8, 31, 9), 5: (24, 7, 34, 10), 6: (20, 6, 38, 11),
}


def _bits(value: int, total: int, start: int, width: int) -> int:
    return (value >> (total - start - width)) & ((1 << width) - 1)


def decode_epc(hex_text: str) -> str:
    """The pure-identity URN of an SGTIN-96 or SSCC-96 EPC; other EPCs as `urn:epc:raw`."""
    cleaned = hex_text.strip().replace(" ", "")
    if not re.fullmatch(r"[0-9A-Fa-f]{24,}", cleaned) or len(cleaned) % 2:
        raise GS1Error(f"EPC must be hex with an even number of digits (96 bits or more), "
                       f"got {hex_text!r}")
    total = len(cleaned) * 4
    value = int(cleaned, 16)
    header = _bits(value, total, 0, 8)
    if total == 96 and header in (0x30, 0x31):
        partition = _bits(value, total, 11, 3)
        table = _SGTIN_PARTITIONS if header == 0x30 else _SSCC_PARTITIONS
        if partition not in table:
            raise GS1Error(f"EPC {cleaned}: invalid partition {partition}")
        cp_bits, cp_digits, item_bits, item_digits = table[partition]
        company = _bits(value, total, 14, cp_bits)
        item = _bits(value, total, 14 + cp_bits, item_bits)
        if company >= 10**cp_digits or item >= 10**item_digits:
            raise GS1Error(f"EPC {cleaned}: field out of range for partition {partition}")
        company_text = f"{company:0{cp_digits}d}"
        item_text = f"{item:0{item_digits}d}"
        if header == 0x30:
            serial = _bits(value, total, 58, 38)
            return f"urn:epc:id:sgtin:{company_text}.{item_text}.{serial}"
        return f"urn:epc:id:sscc:{company_text}.{item_text}"
    return f"urn:epc:raw:{total}.x{cleaned.upper()}"


def sscc_of(urn: str) -> str | None:
    """The SSCC-18 of an SSCC URN (extension digit back in front, check digit added)."""
    match = re.fullmatch(r"urn:epc:id:sscc:(\d+)\.(\d+)", urn)
    if not match:
        return None
    company, serial_ref = match.groups()
    body = serial_ref[0] + company + serial_ref[1:]
    return body + str(check_digit(body))


def identifiers_of(urn: str) -> dict[str, str]:
    """GS1 application identifiers an EPC URN carries: (01) GTIN and (21) serial, or (00)."""
    gtin = gtin_of_sgtin(urn)
    if gtin is not None:
        return {"01": gtin, "21": urn.rsplit(".", 1)[1]}
    sscc = sscc_of(urn)
    return {"00": sscc} if sscc is not None else {}


def gtin_of_sgtin(urn: str) -> str | None:
    """The GTIN-14 of an SGTIN URN (indicator digit moved back to the front, check digit)."""
    match = re.fullmatch(r"urn:epc:id:sgtin:(\d+)\.(\d+)\.\S+", urn)
    if not match:
        return None
    company, item = match.groups()
    body = item[0] + company + item[1:]
    return body + str(check_digit(body))

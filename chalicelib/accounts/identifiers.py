"""Checks of the identifiers people type: mobile numbers, resident IDs, credit codes.

Example
-------
>>> uscc_is_valid("91440300708461136T")
True
>>> resident_id_is_valid("11010519491231002X")
True
"""

from __future__ import annotations

from datetime import date

from chalicelib.validation import invalid

USCC_CHARSET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
RESIDENT_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
RESIDENT_ID_CHECK = "10X98765432"


def mainland_mobile(raw: str, field: str = "phone") -> str:
    """The 11-digit mainland mobile number in ``raw`` (``+86`` and spaces allowed); 422 otherwise.

    >>> mainland_mobile("+86 138-1234-5678")
    '13812345678'
    """
    import phonenumbers

    try:
        number = phonenumbers.parse(raw, "CN")
    except phonenumbers.NumberParseException:
        raise invalid("Not a phone number", field) from None
    mobile_types = (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE)
    if (
        number.country_code != 86
        or not phonenumbers.is_valid_number(number)
        or phonenumbers.number_type(number) not in mobile_types
    ):
        raise invalid("Not a mainland China mobile number", field)
    return str(number.national_number)


def uscc_is_valid(code: str) -> bool:
    """GB 32100-2015: 18 characters, the last a check character over the first 17."""
    if len(code) != 18 or any(char not in USCC_CHARSET for char in code):
        return False
    total = sum(USCC_CHARSET.index(char) * weight for char, weight in zip(code[:17], USCC_WEIGHTS, strict=True))
    return USCC_CHARSET[(31 - total % 31) % 31] == code[17]


def resident_id_is_valid(number: str) -> bool:
    """GB 11643-1999: 17 digits (with a real birth date), then an ISO 7064 MOD 11-2 check character."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    try:
        date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    total = sum(int(digit) * weight for digit, weight in zip(number[:17], RESIDENT_ID_WEIGHTS, strict=True))
    return RESIDENT_ID_CHECK[total % 11] == number[17].upper()

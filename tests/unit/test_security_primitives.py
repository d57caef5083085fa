"""The security building blocks: passwords, field encryption, identifiers, keys, cursors, parsing."""

from __future__ import annotations

import base64
import json
import re
import uuid
from typing import TYPE_CHECKING, Any

import boto3
import msgspec
import pytest
from moto import mock_aws

from chalicelib import pagination
from chalicelib.accounts.identifiers import mainland_mobile, resident_id_is_valid, uscc_is_valid
from chalicelib.config import ConfigError, Settings
from chalicelib.errors import ApiError
from chalicelib.pagination import decode_cursor, encode_cursor
from chalicelib.security import keys, passwords, privacy
from chalicelib.security.keys import Keys, get_keys, keys_from_secret
from chalicelib.security.privacy import DecryptionError, decrypt, encrypt, lookup_hash, mask_phone
from chalicelib.validation import parse

if TYPE_CHECKING:
    from collections.abc import Iterator


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


# --- passwords -------------------------------------------------------------------------------

# one hash for the whole module: scrypt costs ~50 ms a call
STORED = passwords.hash_password("correct horse 1")


def test_a_password_hash_has_the_scrypt_format() -> None:
    scheme, n, r, p, salt, digest = STORED.split("$")

    assert (scheme, n, r, p) == ("scrypt", str(2**14), "8", "1")
    assert len(base64.b64decode(salt, validate=True)) == 16
    assert len(base64.b64decode(digest, validate=True)) == 32
    assert "correct horse 1" not in STORED


def test_the_right_password_verifies() -> None:
    assert passwords.verify_password("correct horse 1", STORED) is True


@pytest.mark.parametrize("attempt", ["correct horse 2", "Correct horse 1", "correct horse 1 ", ""])
def test_a_wrong_password_does_not_verify(attempt: str) -> None:
    assert passwords.verify_password(attempt, STORED) is False


def test_the_same_password_gets_a_different_salt_each_time() -> None:
    again = passwords.hash_password("correct horse 1")

    assert again != STORED
    assert again.split("$")[4] != STORED.split("$")[4]
    assert passwords.verify_password("correct horse 1", again) is True


def test_verifying_against_no_hash_is_false() -> None:
    assert passwords.verify_password("correct horse 1", None) is False


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "garbage",
        "scrypt$16384$8$1$only-five",
        "bcrypt" + STORED.removeprefix("scrypt"),
        STORED.replace("$16384$", "$1000$"),  # not a power of two
        STORED.replace("$8$1$", "$0$1$"),
        STORED.replace("$16384$", "$many$"),
        STORED.rsplit("$", 1)[0] + "$" + b64(b"\0" * 32),  # another digest
        STORED + "$extra",
    ],
    ids=["empty", "garbage", "too-few-parts", "other-scheme", "bad-n", "zero-r", "text-n", "other-digest", "extra"],
)
def test_a_malformed_stored_hash_does_not_verify(stored: str) -> None:
    assert passwords.verify_password("correct horse 1", stored) is False


# --- privacy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("plain", ["13812345678", "11010519491231002X", "\u5317\u4eac\u534f\u548c", ""])
def test_encrypt_then_decrypt_gives_the_plaintext_back(plain: str) -> None:
    sealed = encrypt("phone", plain)

    assert sealed.startswith("v1:")
    assert decrypt("phone", sealed) == plain


def test_encrypting_twice_gives_different_ciphertexts() -> None:
    first, second = encrypt("phone", "13812345678"), encrypt("phone", "13812345678")

    assert first != second
    assert "13812345678" not in first
    assert "13812345678" not in base64.b64decode(first.removeprefix("v1:")).decode("latin-1")


def test_a_ciphertext_is_bound_to_its_field() -> None:
    # GIVEN a phone number's ciphertext copied into another field
    sealed = encrypt("phone", "13812345678")

    # THEN it does not decrypt there
    with pytest.raises(DecryptionError):
        decrypt("contact_phone", sealed)
    with pytest.raises(DecryptionError):
        decrypt("id_number", sealed)


def flip_bit(sealed: str, index: int) -> str:
    raw = bytearray(base64.b64decode(sealed.removeprefix("v1:")))
    raw[index] ^= 0x01
    return "v1:" + b64(bytes(raw))


@pytest.mark.parametrize("index", [0, 12, -1], ids=["nonce", "body", "tag"])
def test_a_tampered_ciphertext_does_not_decrypt(index: int) -> None:
    sealed = encrypt("phone", "13812345678")

    with pytest.raises(DecryptionError):
        decrypt("phone", flip_bit(sealed, index))


@pytest.mark.parametrize("stored", ["13812345678", "v2:AAAA", ":AAAA"])
def test_a_value_of_an_unknown_cipher_version_does_not_decrypt(stored: str) -> None:
    with pytest.raises(DecryptionError):
        decrypt("phone", stored)


@pytest.mark.parametrize("stored", ["v1:", "v1:AAAA", "v1:not base64!"])
def test_a_truncated_or_garbled_ciphertext_raises_decryption_error(stored: str) -> None:
    with pytest.raises(DecryptionError):
        decrypt("phone", stored)


def test_a_ciphertext_of_another_key_does_not_decrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    sealed = encrypt("phone", "13812345678")
    real = get_keys()
    monkeypatch.setattr(privacy, "get_keys", lambda: Keys(real.jwt_signing_key, b"\x07" * 32, real.lookup_key))

    with pytest.raises(DecryptionError):
        decrypt("phone", sealed)


def test_lookup_hash_is_deterministic_and_hides_the_value() -> None:
    first, second = lookup_hash("phone", "13812345678"), lookup_hash("phone", "13812345678")

    assert first == second
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert "13812345678" not in first
    assert lookup_hash("phone", "13812345679") != first
    assert lookup_hash("id_number", "13812345678") != first


def test_lookup_hash_is_keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the hash under the stage's key
    before = lookup_hash("phone", "13812345678")
    real = get_keys()

    # WHEN the lookup key changes
    monkeypatch.setattr(privacy, "get_keys", lambda: Keys(real.jwt_signing_key, real.pii_key, b"\x09" * 32))

    # THEN the hash changes: nobody without the key can precompute phone hashes
    assert lookup_hash("phone", "13812345678") != before


@pytest.mark.parametrize("phone", ["13812345678", "+8613812345678", "8613812345678"])
def test_mask_phone_keeps_three_and_four_digits(phone: str) -> None:
    assert mask_phone(phone) == "138****5678"


# --- identifiers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    ["13812345678", "+8613812345678", "+86 138 1234 5678", "138-1234-5678", "138 1234 5678", "+86-138-1234-5678"],
)
def test_mainland_mobile_accepts_the_usual_spellings(raw: str) -> None:
    assert mainland_mobile(raw) == "13812345678"


@pytest.mark.parametrize(
    "raw",
    [
        "01012345678",  # Beijing landline
        "02112345678",  # Shanghai landline
        "+86 10 1234 5678",
        "+14155552671",  # United States
        "+85291234567",  # Hong Kong mobile
        "+886912345678",  # Taiwan mobile
        "1381234567",  # ten digits
        "138123456789",  # twelve digits
        "12345678901",  # no such mobile prefix
        "hello",
        "",
    ],
)
def test_mainland_mobile_refuses_everything_else(raw: str) -> None:
    with pytest.raises(ApiError) as raised:
        mainland_mobile(raw, "contact_phone")

    assert raised.value.status == 422
    assert raised.value.code == "validation_failed"
    assert raised.value.details == {"field": "contact_phone"}
    if raw:
        assert raw not in raised.value.message  # an error never echoes the value


@pytest.mark.parametrize("code", ["91440300708461136T", "91350100M000100Y43"])
def test_valid_unified_social_credit_codes(code: str) -> None:
    assert uscc_is_valid(code) is True


@pytest.mark.parametrize("code", ["91440300708461136T", "91350100M000100Y43"])
def test_a_changed_check_character_fails(code: str) -> None:
    for replacement in "0123456789ABCDEFGHJKLMNPQRTUWXY":
        if replacement != code[-1]:
            assert uscc_is_valid(code[:-1] + replacement) is False, replacement


@pytest.mark.parametrize("code", ["91440300708461136", "91440300708461136T0", "", "9144030070846113"])
def test_a_credit_code_of_the_wrong_length_fails(code: str) -> None:
    assert uscc_is_valid(code) is False


@pytest.mark.parametrize("letter", ["I", "O", "Z", "S", "V"])
def test_a_credit_code_with_a_forbidden_letter_fails(letter: str) -> None:
    assert uscc_is_valid("91440300708461136T".replace("T", letter)) is False
    assert uscc_is_valid("91350100" + letter + "000100Y43") is False


def test_a_lowercase_credit_code_is_not_valid_as_is() -> None:
    # callers upper-case first (verification does); the check itself is exact
    assert uscc_is_valid("91350100m000100y43") is False


@pytest.mark.parametrize("number", ["11010519491231002X", "11010519491231002x"])
def test_a_valid_resident_id(number: str) -> None:
    assert resident_id_is_valid(number) is True


@pytest.mark.parametrize(
    "number",
    [
        "110105194912310021",  # check digit 1 instead of X
        "11010519491231002Y",
        "110105194902310026",  # 31 February 1949 (6 is the right check digit for these 17 digits)
        "110105194913010023",  # month 13
        "1101051949123100",  # too short
        "11010519491231002X0",  # too long
        "A1010519491231002X",  # a letter in the digits
        "",
    ],
)
def test_an_invalid_resident_id(number: str) -> None:
    assert resident_id_is_valid(number) is False


# --- keys ------------------------------------------------------------------------------------


def secret(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "jwt_signing_key": b64(b"j" * 32),
        "pii_encryption_key": b64(b"p" * 32),
        "lookup_hash_key": b64(b"l" * 48),
        "wechat_oa_secret": "oa-secret",
        "wechat_mp_secret": "mp-secret",
    }
    value.update(overrides)
    return {name: item for name, item in value.items() if item is not None}


def test_keys_from_a_complete_secret() -> None:
    built = keys_from_secret(secret())

    assert built.jwt_signing_key == b"j" * 32
    assert built.pii_key == b"p" * 32
    assert built.lookup_key == b"l" * 48
    assert built.wechat_secrets == {"oa": "oa-secret", "mp": "mp-secret"}
    assert "oa-secret" not in repr(built)


def test_the_wechat_secrets_are_optional() -> None:
    assert keys_from_secret(secret(wechat_oa_secret=None, wechat_mp_secret=None)).wechat_secrets == {}


@pytest.mark.parametrize("missing", ["jwt_signing_key", "pii_encryption_key", "lookup_hash_key"])
def test_a_missing_key_is_a_config_error(missing: str) -> None:
    with pytest.raises(ConfigError, match=missing):
        keys_from_secret(secret(**{missing: None}))


@pytest.mark.parametrize("size", [16, 31, 33, 64])
def test_a_pii_key_of_the_wrong_size_is_a_config_error(size: int) -> None:
    with pytest.raises(ConfigError, match="pii_encryption_key"):
        keys_from_secret(secret(pii_encryption_key=b64(b"p" * size)))


@pytest.mark.parametrize("name", ["jwt_signing_key", "lookup_hash_key"])
def test_a_short_signing_or_lookup_key_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        keys_from_secret(secret(**{name: b64(b"k" * 16)}))


@pytest.mark.parametrize("name", ["jwt_signing_key", "pii_encryption_key", "lookup_hash_key"])
@pytest.mark.parametrize("value", ["not base64!", "abc", "@" * 44])
def test_a_key_that_is_not_base64_is_a_config_error(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        keys_from_secret(secret(**{name: value}))


@pytest.fixture
def secrets_stage(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A deployed stage's settings naming a Secrets Manager secret (a fresh name: Powertools caches by name)."""
    name = f"anes/unit/keys-{uuid.uuid4().hex}"
    settings = Settings(
        stage="dev",
        table_prefix="anes-unit",
        invitations_stream_arn="arn:aws:dynamodb:cn-north-1:000000000000:table/anes-unit-invitations/stream/x",
        service_name="anes",
        metrics_namespace="Anes",
        schedule_speedup=1.0,
        wechat_mode="live",
        secrets_name=name,
    )
    monkeypatch.setattr(keys, "get_settings", lambda: settings)
    get_keys.cache_clear()
    with mock_aws():
        yield name
    get_keys.cache_clear()


def test_get_keys_reads_the_secrets_manager_secret(secrets_stage: str) -> None:
    # GIVEN the stage's secret in Secrets Manager
    stored = secret(jwt_signing_key=b64(b"s" * 40))
    boto3.client("secretsmanager").create_secret(Name=secrets_stage, SecretString=json.dumps(stored))

    # WHEN the keys are read
    read = get_keys()

    # THEN they are the secret's, not the local stage's inline keys
    assert read.jwt_signing_key == b"s" * 40
    assert read.pii_key == b"p" * 32
    assert read.wechat_secrets == {"oa": "oa-secret", "mp": "mp-secret"}


def test_get_keys_reads_the_secret_once(secrets_stage: str) -> None:
    client = boto3.client("secretsmanager")
    client.create_secret(Name=secrets_stage, SecretString=json.dumps(secret()))
    first = get_keys()

    client.put_secret_value(SecretId=secrets_stage, SecretString=json.dumps(secret(pii_encryption_key=b64(b"q" * 32))))

    assert get_keys() is first


@pytest.mark.parametrize(
    "content",
    [json.dumps(["not", "an", "object"]), json.dumps({"jwt_signing_key": b64(b"j" * 32)})],
    ids=["a-list", "keys-missing"],
)
def test_a_malformed_secret_is_a_config_error(secrets_stage: str, content: str) -> None:
    boto3.client("secretsmanager").create_secret(Name=secrets_stage, SecretString=content)

    with pytest.raises(ConfigError):
        get_keys()


def test_the_unit_stage_uses_its_inline_keys() -> None:
    # the tests above must not leave a Secrets Manager key set behind
    local = get_keys()

    assert len(local.pii_key) == 32
    assert local.wechat_secrets == {}


# --- pagination ------------------------------------------------------------------------------

LAST_KEY = {"pk": {"S": "USER#1"}, "sk": {"S": "PROFILE"}, "rank_key": {"S": "0042#x"}}


def test_a_cursor_decodes_to_its_key() -> None:
    cursor = encode_cursor(LAST_KEY, scope="doctors")

    assert cursor is not None
    assert re.fullmatch(r"[A-Za-z0-9_-]+", cursor)  # safe in a query string
    assert decode_cursor(cursor, scope="doctors") == LAST_KEY


def test_no_key_no_cursor() -> None:
    assert encode_cursor(None, scope="doctors") is None
    assert encode_cursor({}, scope="doctors") is None
    assert decode_cursor(None, scope="doctors") is None
    assert decode_cursor("", scope="doctors") is None


def assert_invalid_cursor(cursor: str, scope: str = "doctors") -> None:
    with pytest.raises(ApiError) as raised:
        decode_cursor(cursor, scope=scope)
    assert (raised.value.status, raised.value.code) == (400, "invalid_cursor")


def test_an_edited_cursor_is_refused() -> None:
    # GIVEN a cursor whose key is rewritten to another user's partition, signature kept
    cursor = encode_cursor(LAST_KEY, scope="doctors")
    assert cursor is not None
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    edited = raw[:16] + raw[16:].replace(b"USER#1", b"USER#2")
    assert edited != raw

    # THEN it is refused
    assert_invalid_cursor(base64.urlsafe_b64encode(edited).decode().rstrip("="))


def test_a_cursor_with_a_changed_character_is_refused() -> None:
    cursor = encode_cursor(LAST_KEY, scope="doctors")
    assert cursor is not None
    middle = len(cursor) // 2
    changed = cursor[:middle] + ("A" if cursor[middle] != "A" else "B") + cursor[middle + 1 :]

    assert_invalid_cursor(changed)


def test_a_cursor_of_another_list_is_refused() -> None:
    cursor = encode_cursor(LAST_KEY, scope="hospital:h-1")
    assert cursor is not None

    assert_invalid_cursor(cursor, scope="hospital:h-2")
    assert_invalid_cursor(cursor, scope="doctors")


def test_a_cursor_signed_with_another_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    real = get_keys()
    monkeypatch.setattr(pagination, "get_keys", lambda: Keys(real.jwt_signing_key, real.pii_key, b"\x05" * 32))
    foreign = encode_cursor(LAST_KEY, scope="doctors")
    monkeypatch.undo()
    assert foreign is not None

    assert_invalid_cursor(foreign)


@pytest.mark.parametrize("cursor", ["x", "!!!!", "A" * 40, "eyJwayI6eyJTIjoiVVNFUiMxIn19", "\u00e9\u00e9\u00e9"])
def test_a_garbage_cursor_is_refused(cursor: str) -> None:
    assert_invalid_cursor(cursor)


def test_a_signed_payload_that_is_not_an_object_is_refused() -> None:
    # even a correctly signed cursor must hold a key object
    payload = b"[1,2,3]"
    cursor = base64.urlsafe_b64encode(pagination._signature("doctors", payload) + payload).decode().rstrip("=")

    assert_invalid_cursor(cursor)


# --- validation ------------------------------------------------------------------------------


class Inner(msgspec.Struct, forbid_unknown_fields=True):
    city: str


class Sample(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    count: int = 0
    where: Inner | None = None


def test_parse_gives_the_struct() -> None:
    parsed = parse({"name": "Li", "count": 2, "where": {"city": "Beijing"}}, Sample)

    assert parsed == Sample("Li", 2, Inner("Beijing"))


def assert_refused(payload: Any, status: int, code: str) -> ApiError:
    with pytest.raises(ApiError) as raised:
        parse(payload, Sample)
    assert (raised.value.status, raised.value.code) == (status, code)
    return raised.value


def test_an_unknown_field_is_refused_and_named() -> None:
    error = assert_refused({"name": "Li", "role": "admin"}, 422, "validation_failed")

    assert error.details["field"] == "role"


def test_an_unknown_nested_field_is_named_with_its_path() -> None:
    error = assert_refused({"name": "Li", "where": {"city": "Beijing", "verified": True}}, 422, "validation_failed")

    assert error.details["field"] == "where.verified"


def test_no_body_is_body_required() -> None:
    assert_refused(None, 400, "body_required")


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": 5}, "name"),
        ({"name": "Li", "count": "2"}, "count"),
        ({"name": "Li", "count": 2.5}, "count"),
        ({"name": "Li", "where": {"city": 1}}, "where.city"),
    ],
)
def test_a_wrong_type_is_refused_and_named(payload: dict[str, Any], field: str) -> None:
    error = assert_refused(payload, 422, "validation_failed")

    assert error.details["field"] == field


def test_a_missing_field_is_refused() -> None:
    error = assert_refused({"count": 1}, 422, "validation_failed")

    assert "name" in error.message


@pytest.mark.parametrize("payload", [[], "text", 5, True])
def test_a_body_that_is_not_an_object_is_refused(payload: Any) -> None:
    assert_refused(payload, 422, "validation_failed")


def test_a_refusal_never_echoes_the_value() -> None:
    error = assert_refused({"name": "Li", "count": "13812345678"}, 422, "validation_failed")

    assert "13812345678" not in error.message
    assert "13812345678" not in json.dumps(error.details)

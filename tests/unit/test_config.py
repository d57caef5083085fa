"""``load_settings``: every setting read and validated from an explicit environment mapping."""

from __future__ import annotations

import pytest

from chalicelib.config import ConfigError, Settings, load_settings, local_stream_arn

BASE_ENV: dict[str, str] = {
    "STAGE": "local",
    "TABLE_PREFIX": "anes-test",
    "POWERTOOLS_SERVICE_NAME": "anes",
    "POWERTOOLS_METRICS_NAMESPACE": "Anes",
}
DEV_STREAM_ARN = "arn:aws-cn:dynamodb:cn-north-1:123456789012:table/anes-dev-invitations/stream/2025-01-01T00:00:00.000"


def env(**overrides: str | None) -> dict[str, str]:
    """BASE_ENV with ``overrides`` applied; an override of None removes the variable."""
    result = dict(BASE_ENV)
    for name, value in overrides.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def test_local_settings_carry_the_prefix_and_derive_the_stream_arn() -> None:
    # GIVEN a complete local environment without a stream ARN
    # WHEN the settings are loaded
    settings = load_settings(env())

    # THEN every table carries the prefix and the stream ARN is the local stand-in
    assert settings == Settings(
        stage="local",
        table_prefix="anes-test",
        invitations_stream_arn=local_stream_arn("anes-test-invitations"),
        service_name="anes",
        metrics_namespace="Anes",
        schedule_speedup=1.0,
    )
    assert settings.users_table == "anes-test-users"
    assert settings.invitations_table == "anes-test-invitations"
    assert settings.ledger_table == "anes-test-ledger"
    assert settings.idempotency_table == "anes-test-idempotency"
    assert settings.is_local is True
    assert settings.invitations_stream_arn == (
        "arn:aws:dynamodb:ddblocal:000000000000:table/anes-test-invitations/stream/latest"
    )


def test_values_are_stripped() -> None:
    settings = load_settings(env(STAGE=" local ", TABLE_PREFIX=" anes-x\n"))

    assert settings.stage == "local"
    assert settings.users_table == "anes-x-users"


def test_an_explicit_stream_arn_is_kept_on_the_local_stage() -> None:
    settings = load_settings(env(INVITATIONS_STREAM_ARN=DEV_STREAM_ARN))

    assert settings.invitations_stream_arn == DEV_STREAM_ARN


def test_deployed_stage_uses_the_given_stream_arn() -> None:
    settings = load_settings(env(STAGE="dev", TABLE_PREFIX="anes-dev", INVITATIONS_STREAM_ARN=DEV_STREAM_ARN))

    assert settings.stage == "dev"
    assert settings.is_local is False
    assert settings.invitations_stream_arn == DEV_STREAM_ARN


@pytest.mark.parametrize("name", ["STAGE", "TABLE_PREFIX", "POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE"])
def test_a_missing_required_variable_is_named(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings(env(**{name: None}))


@pytest.mark.parametrize("name", ["STAGE", "TABLE_PREFIX", "POWERTOOLS_METRICS_NAMESPACE"])
def test_a_blank_required_variable_is_named(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings(env(**{name: "   "}))


def test_an_unknown_stage_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"STAGE must be one of local, dev, prod, got 'staging'"):
        load_settings(env(STAGE="staging"))


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_a_deployed_stage_without_a_stream_arn_is_rejected(stage: str) -> None:
    with pytest.raises(ConfigError, match="INVITATIONS_STREAM_ARN"):
        load_settings(env(STAGE=stage))


@pytest.mark.parametrize(("raw", "expected"), [("4", 4.0), ("0.5", 0.5), (" 60 ", 60.0), ("", 1.0)])
def test_schedule_speedup_is_parsed(raw: str, expected: float) -> None:
    assert load_settings(env(SCHEDULE_SPEEDUP=raw)).schedule_speedup == expected


def test_schedule_speedup_defaults_to_one() -> None:
    assert "SCHEDULE_SPEEDUP" not in BASE_ENV
    assert load_settings(env()).schedule_speedup == 1.0


@pytest.mark.parametrize("raw", ["fast", "1x", "nan-ish"])
def test_schedule_speedup_must_be_a_number(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"SCHEDULE_SPEEDUP must be a number"):
        load_settings(env(SCHEDULE_SPEEDUP=raw))


@pytest.mark.parametrize("raw", ["0", "-2", "0.0", "-inf"])
def test_schedule_speedup_must_be_positive(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"SCHEDULE_SPEEDUP must be a positive finite number"):
        load_settings(env(SCHEDULE_SPEEDUP=raw))


@pytest.mark.parametrize("raw", ["nan", "inf"])
def test_schedule_speedup_must_be_finite(raw: str) -> None:
    # A nan speedup makes every schedule period nan, so the event pump would run each job on every tick.
    with pytest.raises(ConfigError, match="SCHEDULE_SPEEDUP"):
        load_settings(env(SCHEDULE_SPEEDUP=raw))

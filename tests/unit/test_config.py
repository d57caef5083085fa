"""``load_settings``: every setting read and validated from an explicit environment mapping."""

from __future__ import annotations

import pytest

from chalicelib.config import ConfigError, Settings, load_settings, local_stream_arn

KEY = "a2V5LW9mLXRoaXJ0eS10d28tYnl0ZXMtZm9yLXRlc3RzIQ=="  # 32 bytes, base64
BASE_ENV: dict[str, str] = {
    "STAGE": "local",
    "TABLE_PREFIX": "anes-test",
    "POWERTOOLS_SERVICE_NAME": "anes",
    "POWERTOOLS_METRICS_NAMESPACE": "Anes",
    "FRONTEND_URL": "http://127.0.0.1:5173/",
    "JWT_SIGNING_KEY": KEY,
    "PII_ENCRYPTION_KEY": KEY,
    "LOOKUP_HASH_KEY": KEY,
}
DEPLOYED: dict[str, str | None] = {
    "JWT_SIGNING_KEY": None,
    "PII_ENCRYPTION_KEY": None,
    "LOOKUP_HASH_KEY": None,
    "SECRETS_NAME": "anes/dev/keys",
    "FRONTEND_URL": "https://m.example.cn",
    "WECHAT_OA_APPID": "wx-oa",
    "WECHAT_MP_APPID": "wx-mp",
    "WECHAT_NOTICE_TEMPLATE_ID": "tmpl-1",
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
        frontend_url="http://127.0.0.1:5173",
        inline_keys={"JWT_SIGNING_KEY": KEY, "PII_ENCRYPTION_KEY": KEY, "LOOKUP_HASH_KEY": KEY},
        payment_secrets_prefix="anes/local/payments/",
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
    settings = load_settings(
        env(STAGE="dev", TABLE_PREFIX="anes-dev", INVITATIONS_STREAM_ARN=DEV_STREAM_ARN, **DEPLOYED)
    )

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
        load_settings(env(STAGE=stage, **DEPLOYED))


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


# --- identity settings ------------------------------------------------------------------------


def deployed(stage: str = "prod", **overrides: str | None) -> dict[str, str]:
    return env(STAGE=stage, INVITATIONS_STREAM_ARN=DEV_STREAM_ARN, **{**DEPLOYED, **overrides})


def test_a_deployed_stage_reads_keys_from_the_named_secret() -> None:
    settings = load_settings(deployed())

    assert settings.secrets_name == "anes/dev/keys"
    assert settings.inline_keys == {}
    assert settings.wechat_mode == "live"
    assert settings.wechat_app_ids == {"oa": "wx-oa", "mp": "wx-mp"}


@pytest.mark.parametrize("name", ["JWT_SIGNING_KEY", "PII_ENCRYPTION_KEY", "LOOKUP_HASH_KEY"])
def test_inline_keys_are_refused_on_deployed_stages(name: str) -> None:
    with pytest.raises(ConfigError, match=f"{name} is refused on deployed stages"):
        load_settings(deployed(**{name: KEY}))


def test_a_deployed_stage_needs_a_secret_name() -> None:
    with pytest.raises(ConfigError, match="SECRETS_NAME"):
        load_settings(deployed(SECRETS_NAME=None))


def test_the_local_stage_needs_keys_when_no_secret_is_named() -> None:
    with pytest.raises(ConfigError, match="PII_ENCRYPTION_KEY"):
        load_settings(env(PII_ENCRYPTION_KEY=None))


def test_the_sandbox_wechat_is_refused_in_prod() -> None:
    with pytest.raises(ConfigError, match="WECHAT_MODE=sandbox is refused on the prod stage"):
        load_settings(deployed(WECHAT_MODE="sandbox"))


def test_the_sandbox_wechat_is_allowed_on_dev_and_is_the_local_default() -> None:
    assert load_settings(deployed("dev", WECHAT_MODE="sandbox")).wechat_mode == "sandbox"
    assert load_settings(env()).wechat_mode == "sandbox"


def test_live_wechat_needs_both_app_ids() -> None:
    with pytest.raises(ConfigError, match="WECHAT_MP_APPID"):
        load_settings(deployed(WECHAT_MP_APPID=None))


def test_an_unknown_wechat_mode_is_refused() -> None:
    with pytest.raises(ConfigError, match="WECHAT_MODE must be sandbox or live"):
        load_settings(env(WECHAT_MODE="mock"))


def test_a_deployed_frontend_must_be_https() -> None:
    with pytest.raises(ConfigError, match="FRONTEND_URL must start with https://"):
        load_settings(deployed(FRONTEND_URL="http://m.example.cn"))


def test_fee_bounds_are_read_and_checked() -> None:
    settings = load_settings(env(INVITATION_FEE_MIN_FEN="500", INVITATION_FEE_MAX_FEN="900"))
    assert settings.fee_bounds_fen["invitation"] == (500, 900)

    with pytest.raises(ConfigError, match="INVITATION_FEE_MIN_FEN must not exceed"):
        load_settings(env(INVITATION_FEE_MIN_FEN="901", INVITATION_FEE_MAX_FEN="900"))
    with pytest.raises(ConfigError, match="CONSULTATION_FEE_MAX_FEN must be a positive whole number"):
        load_settings(env(CONSULTATION_FEE_MAX_FEN="12.5"))


def test_token_lifetimes_and_login_limits_are_read() -> None:
    settings = load_settings(env(ACCESS_TOKEN_MINUTES="5", REFRESH_TOKEN_DAYS="2", LOGIN_MAX_FAILURES="3"))

    assert settings.access_token_seconds == 300
    assert settings.refresh_token_seconds == 2 * 86400
    assert settings.login_max_failures == 3
    assert settings.login_window_seconds == 900


def test_deployed_stages_notify_through_wechat_and_need_a_template() -> None:
    # GIVEN a deployed stage with no template id WHEN the settings load THEN the variable is named
    with pytest.raises(ConfigError, match="WECHAT_NOTICE_TEMPLATE_ID"):
        load_settings(deployed(WECHAT_NOTICE_TEMPLATE_ID=None))
    assert load_settings(deployed()).notifier == "wechat"
    assert load_settings(env()).notifier == "log"


def test_the_sandbox_payment_provider_is_local_and_never_on_prod() -> None:
    assert load_settings(env()).sandbox_payments is True
    assert load_settings(deployed("dev")).sandbox_payments is False
    with pytest.raises(ConfigError, match="SANDBOX_PAYMENTS"):
        load_settings(deployed(SANDBOX_PAYMENTS="on"))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PLATFORM_FEE_BPS", "5001"),
        ("LATE_CANCEL_REFUND_BPS", "99"),
        ("LEDGER_SHARDS", "0"),
        ("RESPONSE_HOURS", "x"),
        ("TIP_FEE_BPS", "5001"),
        ("WITHDRAWAL_MIN_FEN", "0"),
    ],
)
def test_flow_settings_out_of_range_are_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings(env(**{name: value}))


def test_money_settings_have_defaults_and_are_read() -> None:
    defaults = load_settings(env())
    assert defaults.tip_bounds_fen == (100, 50_000) and defaults.tip_fee_bps == 0
    assert [(plan.plan_id, plan.price_fen, plan.days) for plan in defaults.membership_plans.values()] == [
        ("year", 1_980_000, 365)
    ]
    assert (defaults.withdrawal_min_fen, defaults.withdrawal_daily_limit_fen) == (1_000, 2_000_000)
    settings = load_settings(env(MEMBERSHIP_PLANS="year:100000:365, quarter:30000:90", TIP_MAX_FEN="900"))
    assert {plan_id: (plan.price_fen, plan.days) for plan_id, plan in settings.membership_plans.items()} == {
        "year": (100_000, 365),
        "quarter": (30_000, 90),
    }
    assert settings.tip_bounds_fen == (100, 900)


@pytest.mark.parametrize("plans", ["year", "year:1:0", "Year:1:1", "year:1:1,year:2:2", "year:1:3654", "year:-1:5"])
def test_a_malformed_membership_plan_is_refused(plans: str) -> None:
    with pytest.raises(ConfigError, match="MEMBERSHIP_PLANS"):
        load_settings(env(MEMBERSHIP_PLANS=plans))


def test_the_withdrawal_minimum_fits_the_daily_limit() -> None:
    with pytest.raises(ConfigError, match="WITHDRAWAL_MIN_FEN must not exceed"):
        load_settings(env(WITHDRAWAL_MIN_FEN="5000", WITHDRAWAL_DAILY_LIMIT_FEN="4000"))


# --- reputation: star level, reviews, complaints ------------------------------------------------


def test_reputation_settings_have_the_published_defaults() -> None:
    from chalicelib.config import StarRules

    settings = load_settings(env())
    assert settings.star_rules == StarRules()
    assert settings.star_rules.tiers == ((1, 3.0), (10, 4.0), (30, 4.5), (100, 5.0))
    assert (settings.star_rules.prior_mean, settings.star_rules.prior_weight) == (4.0, 10)
    assert (settings.star_rules.penalty_stars, settings.star_rules.penalty_days) == (1.0, 90)
    assert (settings.review_window_days, settings.complaint_window_days) == (30, 30)


def test_reputation_settings_are_read() -> None:
    settings = load_settings(
        env(
            STAR_PRIOR_MEAN="3.5",
            STAR_PRIOR_WEIGHT="25",
            STAR_TIERS=" 5:2.5, 20:4 ,50:5",
            COMPLAINT_PENALTY_STARS="0.5",
            COMPLAINT_PENALTY_DAYS="30",
            REVIEW_WINDOW_DAYS="14",
            COMPLAINT_WINDOW_DAYS="7",
        )
    )
    rules = settings.star_rules
    assert (rules.prior_mean, rules.prior_weight) == (3.5, 25)
    assert rules.tiers == ((5, 2.5), (20, 4.0), (50, 5.0))
    assert (rules.penalty_stars, rules.penalty_days) == (0.5, 30)
    assert (settings.review_window_days, settings.complaint_window_days) == (14, 7)


def test_blank_reputation_settings_take_the_defaults() -> None:
    from chalicelib.config import StarRules

    settings = load_settings(env(STAR_TIERS="  ", COMPLAINT_PENALTY_STARS="", STAR_PRIOR_MEAN=" "))
    assert settings.star_rules == StarRules()


@pytest.mark.parametrize(
    "tiers",
    [
        "0:3",  # no tier at zero completed: before the first one there is no level
        "1:3,1:4",  # counts must ascend
        "10:3,1:4",
        "1:4,10:3",  # stars must ascend
        "1:3,10:3",
        "1:5.5",  # above five stars
        "1:3.3",  # not a half step
        "1:0",
        "x:3",
        "1-3",
        "1:",
        "1:3,",
        "-1:3",
    ],
)
def test_a_malformed_star_tier_list_is_refused(tiers: str) -> None:
    with pytest.raises(ConfigError, match="STAR_TIERS"):
        load_settings(env(STAR_TIERS=tiers))


@pytest.mark.parametrize("step", ["0", "0.3", "5.5", "-1", "one", "nan"])
def test_the_complaint_penalty_must_be_half_stars_up_to_five(step: str) -> None:
    with pytest.raises(ConfigError, match="COMPLAINT_PENALTY_STARS"):
        load_settings(env(COMPLAINT_PENALTY_STARS=step))


@pytest.mark.parametrize("mean", ["0.5", "5.5", "0", "-4", "four", "inf", "nan"])
def test_the_prior_mean_must_be_from_one_to_five(mean: str) -> None:
    with pytest.raises(ConfigError, match="STAR_PRIOR_MEAN"):
        load_settings(env(STAR_PRIOR_MEAN=mean))


@pytest.mark.parametrize("mean", ["1", "5", "4.25"])
def test_the_prior_mean_bounds_are_inclusive(mean: str) -> None:
    assert load_settings(env(STAR_PRIOR_MEAN=mean)).star_rules.prior_mean == float(mean)


@pytest.mark.parametrize(
    "name", ["STAR_PRIOR_WEIGHT", "COMPLAINT_PENALTY_DAYS", "REVIEW_WINDOW_DAYS", "COMPLAINT_WINDOW_DAYS"]
)
@pytest.mark.parametrize("value", ["0", "-3", "2.5", "ten"])
def test_reputation_counts_must_be_positive_whole_numbers(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings(env(**{name: value}))

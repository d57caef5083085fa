"""Which payment channels a stage offers, where their keys come from, and who pays each payee kind."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import boto3
import pytest
from moto import mock_aws

from chalicelib.config import ConfigError, load_settings
from chalicelib.errors import ApiError
from chalicelib.payments import channels, registry
from tests.unit.test_config import DEPLOYED, DEV_STREAM_ARN, env

if TYPE_CHECKING:
    from pathlib import Path

WECHAT = {
    "WECHATPAY_MCHID": "1900000001",
    "WECHATPAY_MERCHANT_SERIAL": "5157F09EFDC096DE",
    "WECHATPAY_PUBLIC_KEY_ID": "PUB_KEY_ID_01",
}
ALIPAY = {"ALIPAY_APP_ID": "2021000000000001", "ALIPAY_SELLER_ID": "2088000000000001"}
UNIONPAY = {"UNIONPAY_MERCHANT_ID": "777290058110048"}


def dev(**overrides: str | None) -> dict[str, str]:
    return env(
        **{
            **DEPLOYED,
            "STAGE": "dev",
            "TABLE_PREFIX": "anes-dev",
            "INVITATIONS_STREAM_ARN": DEV_STREAM_ARN,
            **overrides,
        }
    )


@pytest.fixture
def stage(monkeypatch: pytest.MonkeyPatch) -> object:
    """Install settings loaded from an environment, for the registry and the channel builder."""

    def install(environment: dict[str, str]) -> None:
        settings = load_settings(environment)
        monkeypatch.setattr("chalicelib.payments.registry.get_settings", lambda: settings)
        monkeypatch.setattr("chalicelib.payments.channels.get_settings", lambda: settings)
        channels.channel_secret.cache_clear()

    yield install
    channels.channel_secret.cache_clear()


def test_a_channel_is_offered_only_once_its_merchant_is_configured(stage) -> None:
    # GIVEN a local stage with WeChat Pay and UnionPay configured, Alipay not
    stage(env(**WECHAT, **UNIONPAY))

    # THEN those two and the sandbox are offered; Alipay is 422 channel_unavailable
    assert registry.available_channels() == ["wechat", "unionpay", "sandbox"]
    with pytest.raises(ApiError) as refused:
        registry.get_provider("alipay")
    assert (refused.value.status, refused.value.code) == (422, "channel_unavailable")
    assert refused.value.details["available"] == ["wechat", "unionpay", "sandbox"]


def test_no_channel_at_all_on_prod_without_merchants() -> None:
    settings = load_settings(dev(STAGE="prod", TABLE_PREFIX="anes-prod"))
    assert (settings.payment_channels, settings.sandbox_payments, settings.payout_channels) == ({}, False, {})


def test_a_channel_missing_a_required_setting_stops_the_function_at_start() -> None:
    with pytest.raises(ConfigError, match="WECHATPAY_PUBLIC_KEY_ID"):
        load_settings(env(**{**WECHAT, "WECHATPAY_PUBLIC_KEY_ID": None}))
    with pytest.raises(ConfigError, match="ALIPAY_SELLER_ID"):
        load_settings(env(ALIPAY_APP_ID="2021000000000001"))


def test_deployed_stages_talk_to_providers_over_https_and_name_their_public_address() -> None:
    with pytest.raises(ConfigError, match="https"):
        load_settings(dev(**UNIONPAY, PUBLIC_API_URL="https://api.example.cn", UNIONPAY_GATEWAY="http://127.0.0.1:9"))
    with pytest.raises(ConfigError, match="PUBLIC_API_URL"):
        load_settings(dev(**UNIONPAY))
    with pytest.raises(ConfigError, match="PAYMENT_KEYS_DIR"):
        load_settings(dev(**UNIONPAY, PUBLIC_API_URL="https://api.example.cn", PAYMENT_KEYS_DIR="/tmp"))
    settings = load_settings(dev(**ALIPAY, PUBLIC_API_URL="https://api.example.cn/api/"))
    assert settings.public_api_url == "https://api.example.cn/api"
    assert settings.payment_secrets_prefix == "anes/dev/payments/"
    assert settings.payment_channels["alipay"]["gateway"] == "https://openapi.alipay.com/gateway.do"


def test_payouts_go_to_the_channel_that_pays_each_kind(stage) -> None:
    # GIVEN WeChat Pay and Alipay configured on a stage without the sandbox
    stage(dev(**WECHAT, **ALIPAY, PUBLIC_API_URL="https://api.example.cn"))

    # THEN WeChat change goes through WeChat Pay, Alipay accounts and bank cards through Alipay
    assert [registry.payout_channel(kind) for kind in ("wechat", "alipay", "bank_card")] == [
        "wechat",
        "alipay",
        "alipay",
    ]


def test_a_kind_no_configured_channel_pays_is_refused(stage) -> None:
    stage(dev(**WECHAT, PUBLIC_API_URL="https://api.example.cn"))
    with pytest.raises(ApiError) as refused:
        registry.payout_channel("bank_card")
    assert (refused.value.status, refused.value.code) == (422, "payout_unavailable")
    with pytest.raises(ConfigError, match="PAYOUT_BANK_CARD_CHANNEL"):
        load_settings(env(PAYOUT_BANK_CARD_CHANNEL="unionpay"))


def test_keys_come_from_a_local_file_and_a_missing_key_is_named_not_shown(stage, tmp_path: Path) -> None:
    # GIVEN a keys file that lacks the APIv3 key
    (tmp_path / "wechat.json").write_text(json.dumps({"merchant_private_key": "SECRET-PEM", "public_key": "PEM"}))
    stage(env(**WECHAT, PAYMENT_KEYS_DIR=str(tmp_path)))

    # WHEN the channel is first used THEN the error names the key, never a value
    with pytest.raises(ConfigError, match="apiv3_key") as missing:
        registry.get_provider("wechat")
    assert "SECRET-PEM" not in str(missing.value)


def test_an_unreadable_keys_file_is_a_config_error(stage, tmp_path: Path) -> None:
    stage(env(**ALIPAY, PAYMENT_KEYS_DIR=str(tmp_path)))
    with pytest.raises(ConfigError, match="alipay keys file"):
        channels.channel_secret("alipay")


@mock_aws
def test_deployed_keys_come_from_secrets_manager_once_per_container(stage) -> None:
    # GIVEN the UnionPay secret in Secrets Manager under the stage's prefix
    secret = {"sign_key": "k", "sign_cert": "c", "root_cert": "r", "middle_cert": "m"}
    client = boto3.client("secretsmanager", region_name="cn-north-1")
    client.create_secret(Name="anes/dev/payments/unionpay", SecretString=json.dumps(secret))
    stage(dev(**UNIONPAY, PUBLIC_API_URL="https://api.example.cn"))

    # WHEN it is read twice THEN it is the secret's object, fetched once
    assert channels.channel_secret("unionpay") == secret
    client.delete_secret(SecretId="anes/dev/payments/unionpay", ForceDeleteWithoutRecovery=True)
    assert channels.channel_secret("unionpay") == secret


def test_notifications_come_back_to_our_callback_route(stage) -> None:
    stage(env(**ALIPAY, PUBLIC_API_URL="http://127.0.0.1:8123"))
    assert channels.notify_url("alipay") == "http://127.0.0.1:8123/v1/payments/callbacks/alipay"


def test_a_live_adapter_takes_one_call_at_a_time() -> None:
    import threading
    import time

    # GIVEN an adapter whose calls record how many run at once
    class Slow:
        channel = "alipay"
        running = peak = 0

        def query_payment(self, out_trade_no: str) -> str:
            Slow.running += 1
            Slow.peak = max(Slow.peak, Slow.running)
            time.sleep(0.01)
            Slow.running -= 1
            return out_trade_no

    guarded = registry._OneCallAtATime(Slow())  # type: ignore[arg-type]

    # WHEN eight threads call it together
    threads = [threading.Thread(target=guarded.query_payment, args=(f"PI{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # THEN the calls took turns, and the adapter answers as itself
    assert (Slow.peak, guarded.channel, guarded.query_payment("PI9")) == (1, "alipay", "PI9")

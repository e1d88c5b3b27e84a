"""TON settings: the network is chosen by configuration; endpoint and keys come from the
environment or from mounted secret files, never from the repository; bad values are refused."""

from __future__ import annotations

import pytest

from cocoon.billing.money import BillingError
from cocoon.billing.ton.config import TonSettings

BASE = {
    "COCOON_TON_NETWORK": "testnet",
    "COCOON_TON_API_URL": "https://testnet.toncenter.com/api/v2",
    "COCOON_TON_DEPOSIT_ADDRESS": "0:" + "ab" * 32,
}


def test_network_endpoint_and_wallet_come_from_the_environment():
    settings = TonSettings.from_env({**BASE, "COCOON_TON_WALLET": "highload-v2"})
    assert settings.testnet and settings.wallet == "highload-v2" and settings.api_key is None
    assert not TonSettings.from_env({**BASE, "COCOON_TON_NETWORK": "mainnet"}).testnet


def test_endpoint_and_key_may_come_from_mounted_files(tmp_path):
    url, key = tmp_path / "url", tmp_path / "key"
    url.write_text("https://toncenter.com/api/v2\n")
    key.write_text("secret-key\n")
    env = {k: v for k, v in BASE.items() if k != "COCOON_TON_API_URL"}
    settings = TonSettings.from_env(
        {**env, "COCOON_TON_API_URL_FILE": str(url), "COCOON_TON_API_KEY_FILE": str(key)}
    )
    assert settings.api_url == "https://toncenter.com/api/v2" and settings.api_key == "secret-key"
    assert "secret-key" not in repr(settings)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"COCOON_TON_NETWORK": "devnet"}, "must be one of"),
        ({"COCOON_TON_NETWORK": ""}, "missing TON settings: COCOON_TON_NETWORK"),
        ({"COCOON_TON_API_URL": ""}, r"COCOON_TON_API_URL \(or _FILE\)"),
        ({"COCOON_TON_API_URL": "ftp://x"}, "must be http"),
        ({"COCOON_TON_API_URL_FILE": "/nonexistent/url"}, "not both"),
        ({"COCOON_TON_API_KEY_FILE": "/nonexistent/key"}, "cannot read /nonexistent/key"),
        ({"COCOON_TON_DEPOSIT_ADDRESS": "EQnot-an-address"}, "malformed TON address"),
        ({"COCOON_TON_WALLET": "v3r2"}, "TON wallet must be one of"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_error(change, message):
    with pytest.raises(BillingError, match=message):
        TonSettings.from_env({**BASE, **change})

"""Kafka over mTLS, the production listener's shape: the bus's clients (aiokafka and
kafka-python) connect with the COCOON_KAFKA_SSL_* files, and a client without a certificate is
refused by the broker."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest
from kafka import KafkaAdminClient
from support.pki import TestCA

from cocoon.core.bus import BusProducer
from cocoon.core.bus.admin import apply_topics
from cocoon.core.bus.broadcast import BroadcastReader
from cocoon.core.bus.security import ENV, KafkaSecurity
from cocoon.core.catalog import default_catalog
from cocoon.core.kafka.pki import ADMIN
from cocoon.core.runtime.settings import ServiceSettings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def no_kafka_settings(monkeypatch):
    """Start each test from no COCOON_KAFKA_* settings (the session sets its admin's)."""
    for name in ENV.values():
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def client_files(kafka_tls, tmp_path):
    # The certificate's CN is the principal (the broker maps CN=admin to User:admin): the admin,
    # since this client creates topics.
    issued = kafka_tls.ca.issue(ADMIN)
    files = {"ca.crt": kafka_tls.ca.cert_pem, "user.crt": issued.cert_pem}
    files["user.key"] = issued.key_pem
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return {name: tmp_path / name for name in files}


@pytest.fixture
def mtls_env(monkeypatch, client_files):
    monkeypatch.setenv("COCOON_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("COCOON_KAFKA_SSL_CAFILE", str(client_files["ca.crt"]))
    monkeypatch.setenv("COCOON_KAFKA_SSL_CERTFILE", str(client_files["user.crt"]))
    monkeypatch.setenv("COCOON_KAFKA_SSL_KEYFILE", str(client_files["user.key"]))


async def test_bus_clients_round_trip_over_mtls(kafka_tls, mtls_env, monkeypatch, unique_name):
    prefix = unique_name("tls") + "."
    monkeypatch.setenv("COCOON_TOPIC_PREFIX", prefix)
    spec = default_catalog()["worker.heartbeats"]
    # kafka-python (the topic admin) over mTLS
    changes = await asyncio.to_thread(apply_topics, kafka_tls.bootstrap, [spec], prefix=prefix)
    assert [c.action for c in changes] == ["created"]
    async with BusProducer(kafka_tls.bootstrap) as producer:  # aiokafka over mTLS
        await producer.send_raw("worker.heartbeats", None, key=b"worker-1")
    received: list = []
    reader = BroadcastReader(
        kafka_tls.bootstrap, ["worker.heartbeats"], received.append, from_beginning=True
    )
    await reader.start()
    try:
        await reader.catch_up(timeout_s=30)
    finally:
        await reader.stop()
    assert [(r.topic, r.key) for r in received] == [("worker.heartbeats", "worker-1")]


def _handshake(bootstrap: str, context: ssl.SSLContext) -> None:
    host, _, port = bootstrap.rpartition(":")
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.recv(1)  # the client certificate is checked in the (TLS 1.2) handshake


def test_a_client_without_a_certificate_is_refused(kafka_tls, client_files):
    anonymous = KafkaSecurity("SSL", client_files["ca.crt"])
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(kafka_tls.bootstrap, anonymous.ssl_context())
    mutual = KafkaSecurity(
        "SSL", client_files["ca.crt"], client_files["user.crt"], client_files["user.key"]
    )
    with pytest.raises(TimeoutError):  # let in: the broker waits for a request
        _handshake(kafka_tls.bootstrap, mutual.ssl_context())
    # and kafka-python (the topic admin) gets in with the same files
    admin = KafkaAdminClient(bootstrap_servers=kafka_tls.bootstrap, **mutual.kafka_python())
    try:
        assert admin.describe_cluster()["brokers"]
    finally:
        admin.close()


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"COCOON_KAFKA_SECURITY_PROTOCOL": "SSL"}, "needs COCOON_KAFKA_SSL_CAFILE"),
        ({"COCOON_KAFKA_SECURITY_PROTOCOL": "TLS"}, "COCOON_KAFKA_SECURITY_PROTOCOL"),
        (
            {"COCOON_KAFKA_SECURITY_PROTOCOL": "SSL", "COCOON_KAFKA_SSL_CAFILE": "/no/ca.crt"},
            "COCOON_KAFKA_SSL_CAFILE=/no/ca.crt: no such readable file",
        ),
        ({"COCOON_KAFKA_SSL_CAFILE": "/etc/hostname"}, "set but COCOON_KAFKA_SECURITY_PROTOCOL"),
        (
            {
                "COCOON_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "COCOON_KAFKA_SSL_CAFILE": "/etc/hostname",
            },
            "SASL_SSL needs COCOON_KAFKA_SASL_USERNAME and COCOON_KAFKA_SASL_PASSWORD",
        ),
        (
            {"COCOON_KAFKA_SASL_USERNAME": "cocoon-gateway"},
            "set but COCOON_KAFKA_SECURITY_PROTOCOL",
        ),
        (
            {
                "COCOON_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "COCOON_KAFKA_SSL_CAFILE": "/etc/hostname",
                "COCOON_KAFKA_SASL_USERNAME": "cocoon-gateway",
                "COCOON_KAFKA_SASL_PASSWORD_FILE": "/no/password",
            },
            "COCOON_KAFKA_SASL_PASSWORD_FILE=/no/password",
        ),
        (
            {
                "COCOON_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "COCOON_KAFKA_SSL_CAFILE": "/etc/hostname",
                "COCOON_KAFKA_SASL_USERNAME": "cocoon-gateway",
                "COCOON_KAFKA_SASL_PASSWORD": "secret",
                "COCOON_KAFKA_SASL_PASSWORD_FILE": "/etc/hostname",
            },
            "not both",
        ),
    ],
)
def test_settings_refuse_incomplete_tls(monkeypatch, env, complaint):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=complaint):
        load_settings(ServiceSettings)


def test_settings_accept_scram_with_a_password_file(monkeypatch, tmp_path):
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    ca = tmp_path / "ca.crt"
    ca.write_bytes(TestCA().cert_pem)
    env = {
        "COCOON_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "COCOON_KAFKA_SSL_CAFILE": str(ca),
        "COCOON_KAFKA_SASL_USERNAME": "cocoon-gateway",
        "COCOON_KAFKA_SASL_PASSWORD_FILE": str(password),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert load_settings(ServiceSettings).kafka_security_protocol == "SASL_SSL"
    kwargs = KafkaSecurity.from_env().aiokafka()
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == (
        "cocoon-gateway",
        "s3cret",
    )
    assert "s3cret" not in repr(KafkaSecurity.from_env())


def test_settings_accept_mtls_files(mtls_env, client_files):
    settings = load_settings(ServiceSettings)
    assert settings.kafka_security_protocol == "SSL"
    assert settings.kafka_ssl_keyfile == client_files["user.key"]

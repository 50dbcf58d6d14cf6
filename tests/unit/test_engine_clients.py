"""How the services reach Kafka, Redis and Elasticsearch outside the local stack."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from agora import config, kafka, pki
from workers.search.wiring import elasticsearch


def test_kafka_is_plaintext_unless_told_otherwise() -> None:
    settings = config.load({"AGORA_KAFKA_BOOTSTRAP": "kafka:9092"})
    assert kafka.connection(settings) == {"bootstrap_servers": "kafka:9092"}


def test_kafka_over_tls_verifies_the_brokers_against_the_configured_ca(tmp_path: Path) -> None:
    pki.create_ca(tmp_path)
    settings = config.load(
        {
            "AGORA_KAFKA_BOOTSTRAP": "agora-kafka-bootstrap:9093",
            "AGORA_KAFKA_SECURITY_PROTOCOL": "ssl",
            "AGORA_KAFKA_CA_FILE": str(tmp_path / "ca.crt"),
        }
    )
    options = kafka.connection(settings)
    assert options["security_protocol"] == "SSL"
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [ca["subject"] for ca in context.get_ca_certs()] == [((("commonName", pki.CA_NAME),),)]


def test_an_unknown_kafka_security_protocol_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="AGORA_KAFKA_SECURITY_PROTOCOL"):
        config.load({"AGORA_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"})


def test_redis_password_comes_from_its_own_variable_not_the_url() -> None:
    settings = config.load(
        {"AGORA_REDIS_URL": "redis://redis:6379/0", "AGORA_REDIS_PASSWORD": "s3"}
    )
    assert settings.redis_url == "redis://redis:6379/0" and settings.redis_password == "s3"


def test_elasticsearch_client_sends_the_api_key_and_trusts_the_configured_ca(
    tmp_path: Path,
) -> None:
    pki.create_ca(tmp_path)
    settings = config.load(
        {
            "AGORA_ELASTICSEARCH_URL": "https://agora-es-http:9200",
            "AGORA_ELASTICSEARCH_CA_FILE": str(tmp_path / "ca.crt"),
            "AGORA_ELASTICSEARCH_API_KEY": "aWQ6a2V5",
        }
    )
    client = elasticsearch(settings)
    assert client._headers["authorization"] == "ApiKey aWQ6a2V5"
    node = client.transport.node_pool.get()
    assert node.config.ca_certs == str(tmp_path / "ca.crt")
    assert node.config.verify_certs

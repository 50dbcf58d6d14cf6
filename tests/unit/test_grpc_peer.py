"""The mTLS peer's name, as the signing-secret check reads it."""

from __future__ import annotations

from agora.grpc import common_name


def test_common_name_is_read_from_the_certificate_subject() -> None:
    cert = {
        "subject": ((("organizationName", "Agora"),), (("commonName", "gateway"),)),
        "issuer": ((("commonName", "Agora platform CA"),),),
    }
    assert common_name(cert) == "gateway"


def test_no_certificate_or_no_cn_gives_an_empty_name() -> None:
    assert common_name(None) == ""
    assert common_name({"subject": ((("organizationName", "Agora"),),)}) == ""

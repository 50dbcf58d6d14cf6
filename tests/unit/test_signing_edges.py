"""The signature header must have the exact shape signature() writes, before any comparison."""

from __future__ import annotations

import pytest

from agora import signing

HEX = "0123456789abcdef" * 4


def _headers(sig: str) -> dict[str, str]:
    return {"X-Agora-Timestamp": "2000", "X-Agora-Nonce": "n" * 16, "X-Agora-Signature": sig}


@pytest.mark.parametrize(
    "sig",
    [
        "v1=\udcff",  # a non-ASCII header byte, as aiohttp decodes it (surrogateescape)
        "v1=" + HEX[:-1] + "\udcff",
        "v1=" + HEX[:-1] + "é",
        "v1=" + HEX.upper(),
        "v1=" + HEX[:-1],
        "v1=" + HEX + "0",
        "v1=" + HEX + "\n",
        "v1=a",
    ],
)
def test_a_signature_header_not_v1_and_64_lowercase_hex_is_invalid(sig: str) -> None:
    with pytest.raises(signing.SignatureError) as raised:
        signing.check_headers(_headers(sig), now=2000)
    assert raised.value.code == "signature-invalid"


def test_a_signature_as_signature_writes_it_passes_the_header_check() -> None:
    headers = signing.sign_headers("s3cret", "GET", "/v1/x", timestamp=2000)
    assert signing.check_headers(headers, now=2000)[2] == headers[signing.SIGNATURE_HEADER]

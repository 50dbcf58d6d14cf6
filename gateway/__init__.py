"""Agora's API gateway: the one public entry point (`python -m gateway`).

Stateless: it authenticates (JWT against identity's JWKS), admits (revocation,
rate limit and nonce in one Redis call), verifies API clients' request
signatures, then routes reads to services over mTLS gRPC and writes to Temporal.
See docs/gateway.md.
"""

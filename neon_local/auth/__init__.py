"""The JWT side of neon-local: signing keys, the built-in OIDC issuer, external JWKS providers, and the verifier.

Import the modules themselves (`neon_local.auth.keys`, ...): this package re-exports nothing, so that a
command needing the keys does not import the issuer's web stack too.
"""

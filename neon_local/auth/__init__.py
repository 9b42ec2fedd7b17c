"""The JWT side of neon-local: signing keys, the built-in OIDC issuer, external JWKS providers, and the verifier."""

from neon_local.auth.issuer import Issuer, IssuerError
from neon_local.auth.keys import KeyRing, KeyRingError
from neon_local.auth.providers import ProviderCache
from neon_local.auth.verifier import JwtError, VerifiedToken, Verifier

__all__ = ["Issuer", "IssuerError", "JwtError", "KeyRing", "KeyRingError", "ProviderCache", "VerifiedToken", "Verifier"]

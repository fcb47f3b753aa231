#!/usr/bin/env python3
"""DPoP proofs (RFC 9449) built with the `cryptography` package, independent
of the server's own code: good ones, and one for each way a proof must be
refused. Prints a JSON object {name: {"proof": jwt, "jkt": thumbprint}}.

Usage: dpop_proofs.py HTU
"""
import base64
import hashlib
import hmac
import json
import sys
import time
import uuid

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ec_key():
    key = ec.generate_private_key(ec.SECP256R1())
    nums = key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": "P-256", "x": b64(nums.x.to_bytes(32, "big")),
           "y": b64(nums.y.to_bytes(32, "big"))}
    d = b64(key.private_numbers().private_value.to_bytes(32, "big"))

    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    return jwk, d, sign


def ed_key():
    key = ed25519.Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}, key.sign


def thumbprint(jwk: dict) -> str:
    """RFC 7638: the required members, sorted, no whitespace."""
    required = {"EC": ["crv", "kty", "x", "y"], "OKP": ["crv", "kty", "x"]}[jwk["kty"]]
    canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return b64(hashlib.sha256(canonical.encode()).digest())


def jws(header: dict, claims: dict, sign) -> str:
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    signature = sign(signing_input.encode()) if sign else b""
    return signing_input + "." + b64(signature)


def main() -> None:
    htu = sys.argv[1]
    now = int(time.time())
    ec_jwk, ec_d, ec_sign = ec_key()
    ed_jwk, ed_sign = ed_key()
    other_jwk, _, other_sign = ec_key()

    def claims(**over):
        c = {"jti": str(uuid.uuid4()), "htm": "POST", "htu": htu, "iat": now}
        c.update(over)
        return {k: v for k, v in c.items() if v is not None}

    def es256(jwk=ec_jwk, sign=ec_sign, **over):
        return jws({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}, claims(**over), sign)

    hs_key = b"a shared secret is not a proof of possession"
    out = {
        "valid_es256": (es256(), thumbprint(ec_jwk)),
        "valid_es256_again": (es256(), thumbprint(ec_jwk)),
        "valid_eddsa": (jws({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": ed_jwk}, claims(), ed_sign),
                        thumbprint(ed_jwk)),
        "replayed": (es256(), thumbprint(ec_jwk)),
        "wrong_htm": (es256(htm="GET"), None),
        "wrong_htu": (es256(htu=htu.rsplit("/", 1)[0] + "/introspect"), None),
        "stale_iat": (es256(iat=now - 3600), None),
        "future_iat": (es256(iat=now + 3600), None),
        "private_jwk": (es256(jwk=dict(ec_jwk, d=ec_d)), None),
        "alg_none": (jws({"typ": "dpop+jwt", "alg": "none", "jwk": ec_jwk}, claims(), None), None),
        "alg_hs256": (jws({"typ": "dpop+jwt", "alg": "HS256",
                           "jwk": {"kty": "oct", "k": b64(hs_key)}}, claims(),
                          lambda m: hmac.new(hs_key, m, hashlib.sha256).digest()), None),
        "other_key": (es256(jwk=ec_jwk, sign=other_sign), None),
        "wrong_typ": (jws({"typ": "JWT", "alg": "ES256", "jwk": ec_jwk}, claims(), ec_sign), None),
        "missing_jti": (es256(jti=None), None),
    }
    assert other_jwk != ec_jwk
    json.dump({k: {"proof": p, "jkt": t} for k, (p, t) in out.items()}, sys.stdout)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""One client_credentials request, checked, for bench/peers.sh.

Asks TOKEN_URL for a token (client_secret_basic, one scope), then checks that
the answer is a 200 with a JWT whose header names ALG and whose signature
verifies with the key of that `kid` in the server's JWKS (fetched from
JWKS_URL), that `exp` lies ahead and that the scope was granted. wrk counts
only error statuses, so this is what shows that a server measured in the
table answers real tokens. Needs PyJWT and cryptography (peers.sh installs
them into its venv in the cache).

Usage: jwt_check.py TOKEN_URL JWKS_URL CLIENT_ID:SECRET SCOPE ALG
Prints one line (alg, kid, issuer, lifetime, token size); exits 1 on failure.
"""

import base64
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import jwt


def fail(msg):
    print(f"jwt check failed: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 6:
        fail("usage: jwt_check.py TOKEN_URL JWKS_URL CLIENT_ID:SECRET SCOPE ALG")
    token_url, jwks_url, credentials, scope, alg = sys.argv[1:]
    client_id, secret = credentials.split(":", 1)
    # RFC 6749 section 2.3.1: both halves are form-encoded before base64.
    basic = base64.b64encode(
        f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(secret)}".encode()).decode()
    request = urllib.request.Request(
        token_url,
        data=urllib.parse.urlencode({"grant_type": "client_credentials", "scope": scope}).encode(),
        headers={"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.load(response)
    except urllib.error.HTTPError as e:
        fail(f"{token_url}: {e.code} {e.read()[:300]!r}")
    token = body.get("access_token") or fail(f"no access_token in {sorted(body)}")
    header = jwt.get_unverified_header(token)
    if header.get("alg") != alg:
        fail(f"token signed with {header.get('alg')}, expected {alg}")
    with urllib.request.urlopen(jwks_url, timeout=30) as response:
        jwks = json.load(response)
    matching = [k for k in jwks.get("keys", []) if k.get("kid") == header.get("kid")]
    if len(matching) != 1:
        fail(f"{len(matching)} keys with kid {header.get('kid')!r} in {jwks_url}")
    key = jwt.PyJWK(matching[0], algorithm=alg)
    try:
        claims = jwt.decode(token, key, algorithms=[alg],
                            options={"verify_aud": False, "require": ["exp", "iat"]})
    except jwt.PyJWTError as e:
        fail(f"signature or claims: {e}")
    if claims["exp"] <= time.time():
        fail("token already expired")
    granted = claims.get("scope", claims.get("scp", ""))
    granted = granted.split() if isinstance(granted, str) else granted
    if scope not in granted:
        fail(f"scope {scope!r} not in the token's {granted!r}")
    print(f"valid JWT: alg {alg}, kid {header.get('kid')}, iss {claims.get('iss')}, "
          f"lifetime {claims['exp'] - claims['iat']} s, {len(token)} bytes")


if __name__ == "__main__":
    main()

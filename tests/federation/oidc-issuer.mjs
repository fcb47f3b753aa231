// A generic OpenID Connect provider for tests/federation.rs: the npm
// `oidc-provider` package (not our code), configured to issue JWT access
// tokens shaped like GitHub Actions' OIDC tokens. Each client's id is the
// token's `sub` (`repo:<owner>/<repo>:ref:<ref>`, as GitHub writes it), and
// its claims (`repository`, `repository_owner`, `ref`, …) are added with
// `extraTokenClaims`. A token is requested with the client-credentials grant
// and a `resource` (RFC 8707), which becomes its `aud`; without `resource`
// the provider issues an opaque token (the "missing aud" case).
//
// Usage: OIDC_PROVIDER_DIR=<dir> node oidc-issuer.mjs <port> <cert.pem> <key.pem>
//   env CLIENTS='[{"sub": "repo:acme/app:ref:refs/heads/main", "claims": {...}}]'
// Prints "listening <issuer>" once it serves over HTTPS on 127.0.0.1.
import https from 'node:https';
import fs from 'node:fs';
import crypto from 'node:crypto';

// ES modules ignore NODE_PATH: the package is imported from where
// tests/cluster/install.sh put it (OIDC_PROVIDER_DIR, its node_modules).
const { default: Provider } = await import(
  `${process.env.OIDC_PROVIDER_DIR}/node_modules/oidc-provider/lib/index.js`
);
const [port, certFile, keyFile] = process.argv.slice(2);
const issuer = `https://127.0.0.1:${port}`;
const clients = JSON.parse(process.env.CLIENTS || '[]');
const claimsBySub = Object.fromEntries(clients.map((c) => [c.sub, c.claims || {}]));
const alg = process.env.SIGNING_ALG || 'ES256';
const keyPair = alg === 'RS256'
  ? crypto.generateKeyPairSync('rsa', { modulusLength: 2048 })
  : crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...keyPair.privateKey.export({ format: 'jwk' }), kid: `test-${alg.toLowerCase()}-1`, alg, use: 'sig' };

const provider = new Provider(issuer, {
  clients: clients.map((c) => ({
    client_id: c.sub,
    client_secret: 'not-a-secret-of-the-operator',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_post',
    id_token_signed_response_alg: alg,
  })),
  jwks: { keys: [jwk] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resource) => ({
        scope: '',
        audience: resource,
        accessTokenTTL: Number(process.env.TOKEN_TTL || 300),
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg } },
      }),
    },
  },
  extraTokenClaims: (_ctx, token) => claimsBySub[token.clientId] || {},
});

const server = https.createServer(
  { cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile) },
  provider.callback(),
);
server.listen(Number(port), '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});

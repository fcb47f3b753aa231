// A DPoP client built on the third-party oauth4webapi library (npm,
// installed by tests/cluster/install.sh): discovery, then the
// client-credentials grant with a DPoP proof of a fresh key, retrying once
// when the server asks for a nonce (RFC 9449 §8), as the library documents.
// Prints one JSON line: the token response and the RFC 7638 thumbprint of
// the key, computed here from the exported public JWK.
//
// Environment: M2M_NODE_MODULES (where oauth4webapi is installed), ISSUER,
// CLIENT_ID, CLIENT_SECRET, ALG (ES256 or EdDSA), SCOPE (optional).
import { createRequire } from 'node:module'
import { createHash } from 'node:crypto'
import { pathToFileURL } from 'node:url'

const require = createRequire(process.env.M2M_NODE_MODULES.replace(/\/?$/, '/'))
const oauth = await import(pathToFileURL(require.resolve('oauth4webapi')).href)

const issuer = new URL(process.env.ISSUER)
const insecure = { [oauth.allowInsecureRequests]: issuer.protocol === 'http:' }
const as = await oauth.processDiscoveryResponse(
  issuer,
  await oauth.discoveryRequest(issuer, { algorithm: 'oauth2', ...insecure }),
)
const client = { client_id: process.env.CLIENT_ID }
const auth = oauth.ClientSecretBasic(process.env.CLIENT_SECRET)
const keyPair = await oauth.generateKeyPair(process.env.ALG)
const DPoP = oauth.DPoP(client, keyPair)
const params = new URLSearchParams()
if (process.env.SCOPE) params.set('scope', process.env.SCOPE)

let nonceRetries = 0
async function grant() {
  const response = await oauth.clientCredentialsGrantRequest(as, client, auth, params, { DPoP, ...insecure })
  try {
    return await oauth.processClientCredentialsResponse(as, client, response)
  } catch (err) {
    if (oauth.isDPoPNonceError(err) && nonceRetries++ === 0) return grant()
    throw err
  }
}
const token = await grant()

const jwk = await crypto.subtle.exportKey('jwk', keyPair.publicKey)
const members = jwk.kty === 'EC' ? ['crv', 'kty', 'x', 'y'] : ['crv', 'kty', 'x']
const canonical = JSON.stringify(Object.fromEntries(members.map((m) => [m, jwk[m]])))
const jkt = createHash('sha256').update(canonical).digest('base64url')
console.log(JSON.stringify({
  token_type: token.token_type,
  access_token: token.access_token,
  dpop_signing_alg_values_supported: as.dpop_signing_alg_values_supported,
  jkt,
  nonce_retries: nonceRetries,
}))

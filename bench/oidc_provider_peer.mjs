// The peer for bench/ceilings.sh: node oidc-provider 9 issuing client_credentials access
// tokens as ES256 JWTs (RFC 9068 `at+jwt`), one process, in-memory adapter, started with
// NODE_ENV=production by the script. Usage: node oidc_provider_peer.mjs PORT CLIENT_ID SECRET
// It prints "ready" once it listens.
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const [port, clientId, clientSecret] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'peer-es256', alg: 'ES256', use: 'sig' };
const resource = 'urn:ponte:bench-api';

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'ES256',
      scope: 'ponte.admin',
    },
  ],
  jwks: { keys: [jwk] },
  scopes: ['ponte.admin'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => resource,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'ponte.admin',
        audience: 'ponte-api',
        accessTokenTTL: 600,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
});
provider.proxy = false;
provider.listen(Number(port), '127.0.0.1', () => console.log('ready'));

// provision.mjs drives a Qlik tenant (in tests: the qliktest fake) with
// Qlik's own JavaScript client, @qlik/api, the way a provisioning script
// would: authenticate as an admin OAuth client (client credentials, scope
// admin_classic), create an M2M impersonation client through the
// oauth-clients API, trust it, rotate a secret, delete a scratch client, then
// mint an impersonation token for a user with the new client and ask
// /api/v1/users/me who it acts for. It prints one JSON object on stdout.
//
// Environment:
//   QLIK_HOST                 tenant URL, e.g. http://127.0.0.1:40123 (http is fine: @qlik/api keeps an explicit scheme)
//   QLIK_ADMIN_CLIENT_ID      admin client id
//   QLIK_ADMIN_CLIENT_SECRET  admin client secret
//   QLIK_USER_ID              Qlik user id to impersonate
//   QLIK_CLIENT_NAME          name of the client to create (default qlik-token-broker-js)
//   QLIK_ORIGIN               browser origin to allow (default https://app.example.com)
import { readFileSync } from "node:fs";
import auth from "@qlik/api/auth";
import oauthClients from "@qlik/api/oauth-clients";
import users from "@qlik/api/users";

function env(name, fallback) {
  const v = process.env[name] ?? fallback;
  if (v === undefined || v === "") throw new Error(`${name} is not set`);
  return v;
}

const host = env("QLIK_HOST");
const userId = env("QLIK_USER_ID");
const clientName = env("QLIK_CLIENT_NAME", "qlik-token-broker-js");
const origin = env("QLIK_ORIGIN", "https://app.example.com");
const impersonation = "urn:qlik:oauth:user-impersonation";

// GET answers are cached by @qlik/api; this script wants the tenant's word every time.
const fresh = { noCache: true };

const admin = {
  authType: "oauth2",
  host,
  clientId: env("QLIK_ADMIN_CLIENT_ID"),
  clientSecret: env("QLIK_ADMIN_CLIENT_SECRET"),
  scope: "admin_classic",
};
const as = (hostConfig, extra = {}) => ({ hostConfig, ...fresh, ...extra });

// Expect fn to fail with status; return what the tenant said.
async function expectStatus(status, fn) {
  try {
    await fn();
  } catch (e) {
    if (e.status === status) return { status: e.status, code: e.data?.errors?.[0]?.code };
    throw e;
  }
  throw new Error(`expected HTTP ${status}, got success`);
}

async function main() {
  const out = {
    qlikApiVersion: JSON.parse(readFileSync(new URL("./node_modules/@qlik/api/package.json", import.meta.url))).version,
  };

  // (a) Authenticate as the admin client.
  const adminToken = await auth.getAccessToken({ hostConfig: admin });
  out.adminTokenIsJWT = adminToken.split(".").length === 3;
  const { data: bot } = await users.getMyUser(as(admin));
  out.adminUser = { id: bot.id, subject: bot.subject };

  // (b) Create the M2M impersonation client, then trust it.
  const { status: createStatus, data: created } = await oauthClients.createOAuthClient(
    {
      appType: "web",
      clientName,
      description: "created by @qlik/api",
      allowedGrantTypes: ["client_credentials", impersonation],
      allowedScopes: ["user_default"],
      allowedOrigins: [origin],
    },
    as(admin),
  );
  const id = created.clientId;
  const consentBefore = (await oauthClients.getOAuthClientConnectionConfig(id, as(admin))).data.consentMethod;
  const patchConsent = await oauthClients.patchOAuthClientConnectionConfig(
    id,
    [{ op: "replace", path: "/consentMethod", value: "trusted" }],
    as(admin),
  );
  const consentAfter = (await oauthClients.getOAuthClientConnectionConfig(id, as(admin))).data.consentMethod;
  const patch = await oauthClients.patchOAuthClient(
    id,
    [{ op: "add", path: "/allowedOrigins", value: "https://other.example.com" }],
    as(admin),
  );
  const { data: got } = await oauthClients.getOAuthClient(id, as(admin));
  out.created = {
    status: createStatus,
    clientId: id,
    ownerId: created.ownerId,
    secretShown: typeof created.clientSecret === "string" && created.clientSecret.length > 0,
    secretHiddenOnGet: got.clientSecret === undefined,
    consentBefore,
    patchConsentStatus: patchConsent.status,
    consentAfter,
    patchStatus: patch.status,
    allowedOrigins: got.allowedOrigins,
  };

  // Secrets: add one, delete it by hint.
  const { status: secretStatus, data: secret } = await oauthClients.createOAuthClientSecret(id, as(admin));
  const delSecret = await oauthClients.deleteOAuthClientSecret(id, secret.hint, as(admin));
  out.secret = { status: secretStatus, hasHint: !!secret.hint, deleteStatus: delSecret.status };

  // List one client per page and follow links.next (absolute hrefs) to the end.
  const filter = `clientName eq "${clientName.replaceAll("\\", "\\\\").replaceAll('"', '\\"')}" or clientName co "scratch"`;
  const { data: scratch } = await oauthClients.createOAuthClient(
    { appType: "spa", clientName: `${clientName} scratch`, redirectUris: [`${origin}/callback`] },
    as(admin),
  );
  let page = await oauthClients.getOAuthClients({ filter, limit: 1, sort: "+clientName" }, as(admin));
  const listed = [];
  for (;;) {
    listed.push(...page.data.data.map((c) => c.clientName));
    if (!page.next) break;
    page = await page.next(as(admin));
  }
  out.listed = listed;

  // Delete the scratch client: @qlik/api's deleteOAuthClient does not send
  // qlik-confirm-delete by itself, so pass it as a header.
  out.deleteWithoutHeader = await expectStatus(400, () => oauthClients.deleteOAuthClient(scratch.clientId, as(admin)));
  const del = await oauthClients.deleteOAuthClient(
    scratch.clientId,
    as(admin, { headers: { "qlik-confirm-delete": scratch.clientId } }),
  );
  out.deleteStatus = del.status;

  // Find the user through the users API.
  const { data: found } = await users.getUsers({ filter: `id eq "${userId}"` }, as(admin));
  out.user = found.data.map((u) => ({ id: u.id, subject: u.subject, email: u.email }));

  // (c) Impersonate the user with the new client, as a backend does for its
  // frontend: auth.getAccessToken with userId in an oauth2 host config.
  const asUser = {
    authType: "oauth2",
    host,
    clientId: id,
    clientSecret: created.clientSecret,
    userId,
    scope: "user_default",
  };
  const accessToken = await auth.getAccessToken({ hostConfig: asUser });
  const { data: me } = await users.getMyUser(as(asUser));
  out.impersonation = { accessToken, me: { id: me.id, subject: me.subject } };

  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((e) => {
  const detail = e?.data?.errors ?? e?.errors ?? "";
  process.stderr.write(`provision.mjs: ${e?.status ?? ""} ${e?.message ?? e} ${JSON.stringify(detail)}\n`);
  process.exit(1);
});

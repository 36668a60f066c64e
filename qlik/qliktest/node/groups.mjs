// groups.mjs drives a Qlik tenant's groups API and user membership patches
// (in tests: the qliktest fake) with Qlik's own JavaScript client, @qlik/api,
// the way a group sync would: authenticate as an admin OAuth client, create
// custom groups (and meet a 409), find them with a filter one page at a
// time, add and remove a user's memberships with JSON Patch, meet the 400s
// and a 207, and read the user's groups back. It prints one JSON object on
// stdout.
//
// Environment:
//   QLIK_HOST                 tenant URL
//   QLIK_ADMIN_CLIENT_ID      admin client id (scope admin_classic)
//   QLIK_ADMIN_CLIENT_SECRET  admin client secret
//   QLIK_USER_ID              the user whose groups change; it is in one IdP group, QLIK_IDP_GROUP_ID
//   QLIK_IDP_GROUP_ID         that IdP group's id
//   QLIK_PARTIAL_GROUP        name of the group the tenant will fail in the 207 step
import auth from "@qlik/api/auth";
import groups from "@qlik/api/groups";
import users from "@qlik/api/users";

function env(name) {
  const v = process.env[name];
  if (v === undefined || v === "") throw new Error(`${name} is not set`);
  return v;
}

const host = env("QLIK_HOST");
const userId = env("QLIK_USER_ID");
const idpGroupId = env("QLIK_IDP_GROUP_ID");
const partialGroup = env("QLIK_PARTIAL_GROUP");
const admin = {
  authType: "oauth2",
  host,
  clientId: env("QLIK_ADMIN_CLIENT_ID"),
  clientSecret: env("QLIK_ADMIN_CLIENT_SECRET"),
  scope: "admin_classic",
};
const as = { hostConfig: admin, noCache: true };

// Run fn; return the status and first error code whether it succeeds or fails.
async function outcome(fn) {
  try {
    const r = await fn();
    return { status: r.status, codes: (r.data?.errors ?? []).map((e) => e.code), pointers: (r.data?.errors ?? []).map((e) => e.source?.pointer) };
  } catch (e) {
    return { status: e.status, codes: (e.data?.errors ?? []).map((e) => e.code) };
  }
}

const add = (id) => ({ op: "add", path: "/assignedGroups/-", value: id });
const removeValue = (id) => ({ op: "remove-value", path: "/assignedGroups", value: id });

async function customGroupsNamed(prefix) {
  let page = await groups.getGroups({ filter: `providerType eq "custom" and name sw "${prefix}"`, limit: 2 }, as);
  const names = [];
  let pages = 0;
  for (;;) {
    pages++;
    names.push(...page.data.data.map((g) => g.name));
    if (!page.next) break;
    page = await page.next(as);
  }
  return { names, pages };
}

async function main() {
  await auth.getAccessToken({ hostConfig: admin });
  const out = {};

  const created = [];
  for (const name of ["js-a", "js-b", "js-c", partialGroup]) {
    const r = await groups.createGroup({ name, providerType: "custom", status: "active" }, as);
    created.push({ status: r.status, id: r.data.id, name: r.data.name, providerType: r.data.providerType });
  }
  out.created = created;
  out.duplicate = await outcome(() => groups.createGroup({ name: "js-a", providerType: "custom" }, as));
  out.listed = await customGroupsNamed("js-");
  const [a, b, c, p] = created.map((g) => g.id);
  out.get = (await groups.getGroup(a, as)).data.name;
  out.getMissing = await outcome(() => groups.getGroup("ffffffffffffffffffffffff", as));

  out.addTwo = await outcome(() => users.patchUser(userId, [add(a), add(b)], as));
  out.addPresent = await outcome(() => users.patchUser(userId, [add(c), add(a)], as));
  out.removeIdP = await outcome(() => users.patchUser(userId, [removeValue(idpGroupId)], as));
  out.partial = await outcome(() => users.patchUser(userId, [removeValue(a), add(p), add(c)], as));
  const { data: user } = await users.getUser(userId, {}, as);
  out.groups = user.assignedGroups.map((g) => `${g.providerType}:${g.name}`);
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((e) => {
  const detail = e?.data?.errors ?? e?.errors ?? "";
  process.stderr.write(`groups.mjs: ${e?.status ?? ""} ${e?.message ?? e} ${JSON.stringify(detail)}\n`);
  process.exit(1);
});

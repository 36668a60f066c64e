// The stand-in runtime's "embed-vanilla@v1": what <qlik-embed> mounts. It
// does what the real UI does before it draws anything, with @qlik/api's own
// code and the hostConfig qlik-embed built from the page (authType Oauth2,
// clientId, getAccessToken):
//
//   * a REST call, GET /api/v1/apps/{appId} (@qlik/api apps.getAppInfo):
//     Authorization: Bearer <the getAccessToken token>, credentials "omit";
//     on a 401 @qlik/api clears its token, calls getAccessToken once more
//     and retries;
//   * the engine websocket: @qlik/api's getWebSocketAuthParams exchanges the
//     token at /oauth/token (purpose "websocket"; on a failed exchange it
//     re-asks getAccessToken once and retries), and the socket opens
//     /app/{appId}?accessToken=<temporary>. The stand-in sends one message
//     and reads the engine's answer (qliktest's EngineReply).
//
// It runs both on mount and exposes them through the element's
// getRefApi(), so a test can run them again after changing the tenant.
// Results are written to the element as text and to data-qliktest-*.
import apps from "./qlik-api/apps.js";

// describe names an error for the test's log: @qlik/api's errors carry
// status and data rather than a message.
function describe(e) {
  if (!e) return String(e);
  const parts = [e.name, e.message, e.status, e.title];
  try {
    parts.push(JSON.stringify(e.data || e.errors));
  } catch {}
  return parts.filter((p) => p !== undefined && p !== "").join(" ") || String(e);
}

async function restCall(hostConfig, appId) {
  try {
    const r = await apps.getAppInfo(appId, { hostConfig, noCache: true });
    return { status: r.status, data: r.data };
  } catch (e) {
    return { status: (e && e.status) || 0, error: describe(e) };
  }
}

async function engineCall(hostConfig, appId, message) {
  const auth = await window.QlikMain.import("auth@v1");
  let params;
  try {
    params = await auth.getWebSocketAuthParams({ hostConfig });
  } catch (e) {
    return { opened: false, error: "exchange: " + describe(e) };
  }
  const query = new URLSearchParams(params.queryParams || {}).toString();
  const url = auth.toValidWebsocketLocationUrl(hostConfig) + "/app/" + encodeURIComponent(appId) + (query ? "?" + query : "");
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    let opened = false;
    ws.onopen = () => {
      opened = true;
      ws.send(message);
    };
    ws.onmessage = (ev) => {
      resolve({ opened: true, reply: JSON.parse(ev.data), queryParams: Object.keys(params.queryParams || {}) });
      ws.close();
    };
    ws.onerror = () => resolve({ opened, error: "websocket error" });
    ws.onclose = (ev) => resolve({ opened, error: "closed " + ev.code });
  });
}

export function mountVanillaEmbedComponent({ target, props }) {
  const hostConfig = props.hostConfig;
  const appId = props.appId;
  const api = {
    rest: () => restCall(hostConfig, appId),
    engine: (message) => engineCall(hostConfig, appId, message || "hello"),
  };
  const out = document.createElement("pre");
  target.appendChild(out);
  const mounted = (async () => {
    const rest = await api.rest();
    const engine = await api.engine("mount");
    out.textContent = JSON.stringify({ rest, engine }, null, 2);
    target.setAttribute("data-qliktest-rest", String(rest.status));
    target.setAttribute("data-qliktest-engine", engine.reply ? "ok" : String(engine.error));
    return { rest, engine };
  })();
  api.mounted = () => mounted;
  if (typeof props.exposeRefApi === "function") {
    props.exposeRefApi(api);
  }
  return {
    $set() {},
    $destroy() {
      out.remove();
    },
  };
}

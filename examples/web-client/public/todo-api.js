import { createAuthClient } from "better-auth/client";
import { jwtClient } from "better-auth/client/plugins";

// The JWT plugin's client side, as Better Auth documents it: types authClient.token() (GET
// /api/auth/token, the signed-in user's JWT) and adds authClient.jwks().
export const authClient = createAuthClient({ plugins: [jwtClient()] });

export class SignedOut extends Error {}

/** A refusal from the API, in its own words; a 5xx quotes the request id to report. */
export class ApiError extends Error {
  constructor(status, code, detail, requestId) {
    super(status >= 500 && requestId ? `${detail} (request id ${requestId})` : detail);
    Object.assign(this, { status, code, requestId });
  }
}

let current = null; // { token, userId, expiresAt }: the JWT in use, in memory only

export function forgetToken() {
  current = null;
}

async function token() {
  // Better Auth's JWTs live 15 minutes: take a new one a little before this one expires.
  if (current && Date.now() < current.expiresAt - 30_000) return current;
  const { data, error } = await authClient.token();
  if (error || !data?.token) throw new SignedOut("Your session has ended: sign in again.");
  const claims = JSON.parse(atob(data.token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
  return (current = { token: data.token, userId: claims.sub, expiresAt: claims.exp * 1000 });
}

// One call as the signed-in user. A 401 (expired early, keys rotated) gets one retry with a new
// token. Creates and toggles carry an Idempotency-Key, so resending them after a network error,
// a 503 or a 409 cannot apply them twice.
export async function api(apiUrl, method, path, { body, idempotent = false } = {}) {
  const key = idempotent ? crypto.randomUUID() : null;
  for (let attempt = 1; ; attempt++) {
    const { token: jwt, userId } = await token();
    const headers = { Authorization: `Bearer ${jwt}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (key) headers["Idempotency-Key"] = key;
    const url = `${apiUrl}/api/${encodeURIComponent(userId)}${path}`;
    const init = { method, headers, body: body === undefined ? undefined : JSON.stringify(body) };
    const response = await fetch(url, init).catch(() => null);
    const retriable = key && attempt < 3 && (!response || [409, 503].includes(response.status));
    if (retriable) {
      const seconds = Number(response?.headers.get("Retry-After") ?? 1);
      await new Promise((resolve) => setTimeout(resolve, Math.min(seconds, 5) * 1000));
      continue;
    }
    if (!response) throw new ApiError(0, "network_error", "The task service cannot be reached.");
    if (response.status === 401 && attempt === 1) {
      forgetToken();
      continue;
    }
    if (!response.ok) {
      const error = await response.json().catch(() => ({}));
      const detail = error.detail ?? `The task service answered ${response.status}.`;
      const requestId = response.headers.get("X-Request-ID");
      throw new ApiError(response.status, error.code ?? "http_error", detail, requestId);
    }
    return response.status === 204 ? null : response.json();
  }
}

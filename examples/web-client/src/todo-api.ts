import { createAuthClient } from "better-auth/client";
import { jwtClient } from "better-auth/client/plugins";
import createClient, { type Client, type Middleware } from "openapi-fetch";
import type { components, paths } from "./api/schema"; // generated: make contract

// The JWT plugin's client side, as Better Auth documents it: types authClient.token() (GET
// /api/auth/token, the signed-in user's JWT) and adds authClient.jwks().
export const authClient = createAuthClient({ plugins: [jwtClient()] });

export class SignedOut extends Error {}

/** A refusal from the API, in its own words; a 5xx quotes the request id to report. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    detail: string,
    readonly requestId: string | null = null,
  ) {
    super(status >= 500 && requestId ? `${detail} (request id ${requestId})` : detail);
  }
}

let current: { token: string; expiresAt: number } | null = null; // the JWT, in memory only

export function forgetToken(): void {
  current = null;
}

async function token(): Promise<string> {
  // Better Auth's JWTs live 15 minutes: take a new one a little before this one expires.
  if (current && Date.now() < current.expiresAt - 30_000) return current.token;
  const { data, error } = await authClient.token();
  if (error || !data?.token) throw new SignedOut("Your session has ended: sign in again.");
  const payload = (data.token.split(".")[1] ?? "").replace(/-/g, "+").replace(/_/g, "/");
  const { exp } = JSON.parse(atob(payload)) as { exp: number };
  current = { token: data.token, expiresAt: exp * 1000 };
  return current.token;
}

/** For a create or a toggle: a write with a key can be sent again and still happen once. */
export const idempotencyKey = () => ({ "Idempotency-Key": crypto.randomUUID() });

const MAX_SENDS = 3; // a request, and at most two retries of it (a new token's retry aside)
const MAX_WAIT_SECONDS = 5; // a server asking for a longer wait gets its refusal shown instead
const JITTER_SECONDS = 1; // clients refused together do not all come back at the same instant
const RETRIABLE = new Set([409, 429, 503]); // in flight, rate limited, unavailable: "retry later"

/** Seconds to wait before sending `request` again, or null: don't. Only what cannot do harm
 * twice is sent again (a GET, a write with an Idempotency-Key), never sooner than Retry-After. */
function retryDelay(request: Request, response: Response | null, sends: number): number | null {
  const resendable = request.method === "GET" || request.headers.has("Idempotency-Key");
  if (!resendable || sends >= MAX_SENDS) return null;
  if (response && !RETRIABLE.has(response.status)) return null;
  const seconds = Number(response?.headers.get("Retry-After") ?? 1); // no response: 1 s
  if (!(seconds >= 0 && seconds <= MAX_WAIT_SECONDS)) return null;
  return seconds + Math.random() * JITTER_SECONDS;
}

const unsent = new Map<string, Request>(); // by openapi-fetch's call id: a copy to send again

/** The rest of a call after its first answer (`null`: the network failed): one new token after
 * a 401 (it expired early, or the keys rotated), then the retries retryDelay allows. */
async function settle(id: string, answer: Response | null, fetch: typeof globalThis.fetch) {
  const original = unsent.get(id);
  unsent.delete(id);
  if (!original) return answer;
  let response = answer;
  let refreshed = false;
  for (let sends = 1; ; sends++) {
    if (response?.status === 401 && !refreshed) {
      forgetToken();
      refreshed = true;
    } else {
      const wait = retryDelay(original, response, sends);
      if (wait === null) return response;
      await new Promise((resolve) => setTimeout(resolve, wait * 1000));
    }
    const again = original.clone();
    again.headers.set("Authorization", `Bearer ${await token()}`);
    response = await fetch(again).catch(() => null);
  }
}

const signedInWithRetries: Middleware = {
  async onRequest({ request, id }) {
    request.headers.set("Authorization", `Bearer ${await token()}`);
    unsent.set(id, request.clone());
    return request;
  },
  async onResponse({ response, id, options }) {
    return (await settle(id, response, options.fetch)) ?? undefined; // no network: first answer
  },
  async onError({ id, options }) {
    const response = await settle(id, null, options.fetch);
    return response ?? new ApiError(0, "network_error", "The task service cannot be reached.");
  },
};

/** The API's generated client, signed in: paths, parameters and bodies checked by TypeScript. */
export function todoApi(baseUrl: string): Client<paths> {
  const client = createClient<paths>({ baseUrl });
  client.use(signedInWithRetries);
  return client;
}

/** A call's data, or its refusal thrown as an ApiError. */
export async function ok<T>(call: Promise<{ data?: T; error?: unknown; response: Response }>) {
  const { data, error, response } = await call;
  if (response.ok) return data as T;
  const body: Partial<components["schemas"]["ErrorOut"]> =
    typeof error === "object" && error !== null ? error : {}; // a proxy's page is no JSON
  const detail = body.detail ?? `The task service answered ${response.status}.`;
  const requestId = response.headers.get("X-Request-ID");
  throw new ApiError(response.status, body.code ?? "http_error", detail, requestId);
}

// The web app's own server, as small as a real one gets: Better Auth (email + password, and the
// JWT plugin with its defaults: EdDSA keys, 15-minute tokens, a JWKS at /api/auth/jwks) on
// PostgreSQL through the pure-JS `pg` driver, and the todo page, on one origin. The Todo API,
// on another origin, verifies the page's JWTs against that JWKS.
//
// Environment: BETTER_AUTH_SECRET (required: 32+ random characters), DATABASE_URL (Better
// Auth's database), BETTER_AUTH_URL (this server's public URL: https, unless it is loopback;
// default http://HOST:PORT), TRUSTED_PROXIES (comma-separated addresses of the proxies in front
// of it, if any), API_URL (the Todo API's origin), HOST and PORT (where this listens).
import { readFile } from "node:fs/promises";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { betterAuth } from "better-auth";
import { getMigrations } from "better-auth/db/migration";
import { toNodeHandler } from "better-auth/node";
import { jwt } from "better-auth/plugins";
import * as esbuild from "esbuild";
import pg from "pg";

const here = path.dirname(fileURLToPath(import.meta.url));
const host = process.env.HOST ?? "127.0.0.1";
const port = Number(process.env.PORT ?? 3000);
const apiUrl = process.env.API_URL ?? "http://127.0.0.1:8000";
const baseURL = process.env.BETTER_AUTH_URL ?? `http://${host}:${port}`;
const trustedProxies = (process.env.TRUSTED_PROXIES ?? "")
  .split(",")
  .map((address) => address.trim())
  .filter(Boolean);

function refuse(message) {
  console.error(`refusing to start: ${message}`);
  process.exit(2);
}

// Without a secret Better Auth signs with one printed in its own source (refused only under
// NODE_ENV=production), and whoever knows it can forge its tokens and cookies.
const PUBLIC_DEFAULT_SECRET = "better-auth-secret-12345678901234567890"; // better-auth 1.7's
const secret = process.env.BETTER_AUTH_SECRET ?? "";
if (secret.length < 32 || secret === PUBLIC_DEFAULT_SECRET) {
  refuse("BETTER_AUTH_SECRET must be 32+ random characters (openssl rand -base64 32)");
}
// Better Auth marks its cookies Secure exactly when its URL is https.
const { protocol, hostname } = new URL(baseURL);
if (protocol !== "https:" && !["127.0.0.1", "localhost", "[::1]"].includes(hostname)) {
  refuse(`BETTER_AUTH_URL must be https:// outside loopback (got ${baseURL})`);
}

const auth = betterAuth({
  baseURL,
  secret,
  database: new pg.Pool({ connectionString: process.env.DATABASE_URL }),
  emailAndPassword: { enabled: true },
  plugins: [jwt()],
  // Better Auth's own limits, which it turns on by itself only under NODE_ENV=production: 3
  // sign-in (and sign-up) attempts per 10 s per client address, 100 requests per 10 s elsewhere.
  // In this process's memory: several instances would share them with storage: "database".
  rateLimit: { enabled: true, storage: "memory" },
  advanced: { ipAddress: { trustedProxies } },
  telemetry: { enabled: false },
});

// Better Auth knows a client by X-Forwarded-For. This server faces its clients itself unless
// TRUSTED_PROXIES names the proxies in front of it: the header it passes on ends with the
// connection's own address, so a client that writes its own X-Forwarded-For gains nothing.
function forwardedFor(request) {
  const peer = request.socket.remoteAddress ?? "";
  const forwarded = request.headers["x-forwarded-for"];
  return trustedProxies.length > 0 && forwarded ? `${forwarded}, ${peer}` : peer;
}

// Better Auth's tables (user, session, account, verification, jwks), created on first start.
const { runMigrations } = await getMigrations(auth.options);
await runMigrations();

// The page's TypeScript imports Better Auth's client and openapi-fetch like any app does; esbuild
// bundles it for the browser once, at start-up (a real app's bundler, Vite or Next.js, does the
// same). esbuild only strips the types: `make lint` is where they are checked.
const bundle = await esbuild.build({
  entryPoints: [path.join(here, "src", "app.ts")],
  bundle: true,
  format: "esm",
  target: "es2022",
  write: false,
});
const page = (await readFile(path.join(here, "public", "index.html"), "utf8")).replace(
  "%API_URL%",
  apiUrl,
);
const files = new Map([
  ["/", ["text/html; charset=utf-8", page]],
  ["/app.js", ["text/javascript; charset=utf-8", bundle.outputFiles[0].contents]],
  ["/style.css", ["text/css; charset=utf-8", await readFile(path.join(here, "public", "style.css"))]],
]);

const authHandler = toNodeHandler(auth);
const server = http.createServer((request, response) => {
  const { pathname } = new URL(request.url, "http://placeholder");
  if (pathname.startsWith("/api/auth/")) {
    request.headers["x-forwarded-for"] = forwardedFor(request);
    return authHandler(request, response);
  }
  const file = files.get(pathname);
  if (request.method !== "GET" || !file) {
    response.writeHead(404, { "Content-Type": "text/plain" }).end("not found\n");
    return;
  }
  response.writeHead(200, { "Content-Type": file[0], "Cache-Control": "no-cache" }).end(file[1]);
});
server.listen(port, host, () => console.log(`web client on http://${host}:${port}`));
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => process.exit(0));

// The web app's own server, as small as a real one gets: Better Auth (email + password, and the
// JWT plugin with its defaults: EdDSA keys, 15-minute tokens, a JWKS at /api/auth/jwks) on
// PostgreSQL through the pure-JS `pg` driver, and the todo page, on one origin. The Todo API,
// on another origin, verifies the page's JWTs against that JWKS.
//
// Environment: DATABASE_URL (Better Auth's database), BETTER_AUTH_SECRET, API_URL (the Todo
// API's origin), HOST and PORT (where this listens; the page's origin is http://HOST:PORT).
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

const auth = betterAuth({
  baseURL: `http://${host}:${port}`,
  secret: process.env.BETTER_AUTH_SECRET,
  database: new pg.Pool({ connectionString: process.env.DATABASE_URL }),
  emailAndPassword: { enabled: true },
  plugins: [jwt()],
  telemetry: { enabled: false },
});

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
  if (pathname.startsWith("/api/auth/")) return authHandler(request, response);
  const file = files.get(pathname);
  if (request.method !== "GET" || !file) {
    response.writeHead(404, { "Content-Type": "text/plain" }).end("not found\n");
    return;
  }
  response.writeHead(200, { "Content-Type": file[0], "Cache-Control": "no-cache" }).end(file[1]);
});
server.listen(port, host, () => console.log(`web client on http://${host}:${port}`));
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => process.exit(0));

// A stock Better Auth server (memory adapter, email + password, JWT plugin) on loopback, for
// tests/test_better_auth_interop.py. Configured by environment; prints "READY <port>" when listening.
import http from "node:http";
import { betterAuth } from "better-auth";
import { memoryAdapter } from "better-auth/adapters/memory";
import { toNodeHandler } from "better-auth/node";
import { jwt } from "better-auth/plugins";

const port = Number(process.env.PORT ?? 0);
const alg = process.env.JWT_ALG ?? "EdDSA";
const rotationInterval = process.env.JWT_ROTATION_SECONDS
  ? Number(process.env.JWT_ROTATION_SECONDS)
  : undefined;

const keyPairConfig = { EdDSA: { alg: "EdDSA", crv: "Ed25519" }, ES256: { alg: "ES256" },
  RS256: { alg: "RS256", modulusLength: 2048 }, PS256: { alg: "PS256", modulusLength: 2048 } }[alg];
if (!keyPairConfig) throw new Error(`unsupported JWT_ALG ${alg}`);

const server = http.createServer();
server.listen(port, "127.0.0.1", () => {
  const actualPort = server.address().port;
  const auth = betterAuth({
    baseURL: `http://127.0.0.1:${actualPort}`,
    secret: process.env.BETTER_AUTH_SECRET,
    database: memoryAdapter({ user: [], session: [], account: [], verification: [], jwks: [] }),
    emailAndPassword: { enabled: true },
    plugins: [jwt({ jwks: { keyPairConfig, rotationInterval, gracePeriod: 3600 } })],
    telemetry: { enabled: false },
  });
  server.on("request", toNodeHandler(auth));
  console.log(`READY ${actualPort}`);
});

// The test runner closes our stdin when it is done with us; never outlive it.
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();

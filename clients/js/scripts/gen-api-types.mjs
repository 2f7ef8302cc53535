// `npm run gen`: starts target/debug/syncgate, reads its /openapi.json and writes the
// server API types to src/generated/openapi.ts.
import { mkdirSync, writeFileSync } from "node:fs";
import { Server } from "../test/helpers.mjs";
import { renderTypes } from "./openapi-types.mjs";

const server = await Server.start();
try {
  const spec = await (await fetch(`${server.base}/openapi.json`)).json();
  mkdirSync("src/generated", { recursive: true });
  writeFileSync("src/generated/openapi.ts", await renderTypes(spec));
  console.log("wrote src/generated/openapi.ts");
} finally {
  await server.stop();
}

// Builds dist/: the ESM package (index.js), the browser bundle (syncgate.umd.js, exposing
// globalThis.Syncgate, no runtime dependency) and the type declarations (tsc). Prints the
// bundle's gzip size, which is kept under 10 KB.
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import { gzipSync } from "node:zlib";

const LIMIT = 10 * 1024;
rmSync("dist", { recursive: true, force: true });
await build({
  entryPoints: ["src/index.ts"],
  outfile: "dist/index.js",
  bundle: true,
  format: "esm",
  platform: "neutral",
  target: "es2020",
  external: ["ws"],
  sourcemap: true,
  logLevel: "warning",
});
await build({
  entryPoints: ["src/browser.ts"],
  outfile: "dist/syncgate.umd.js",
  bundle: true,
  format: "iife",
  globalName: "Syncgate",
  footer: { js: 'if(typeof module==="object"&&module.exports)module.exports=Syncgate;' },
  platform: "browser",
  target: "es2019",
  external: ["ws"],
  minify: true,
  logLevel: "warning",
});
execFileSync(process.execPath, ["node_modules/typescript/bin/tsc", "-p", "tsconfig.json"], { stdio: "inherit" });
const umd = readFileSync("dist/syncgate.umd.js");
const gz = gzipSync(umd, { level: 9 }).length;
console.log(`dist/syncgate.umd.js: ${umd.length} bytes, ${gz} bytes gzip (${(gz / 1024).toFixed(1)} KB; limit 10 KB)`);
if (gz > LIMIT) {
  console.error("the browser bundle is over 10 KB gzip");
  process.exit(1);
}

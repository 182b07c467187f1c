// Bundle the console's terminal (our src/terminal.js with xterm.js) into one script and
// one stylesheet that sandport serves itself: no CDN.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "src", "sandport", "console", "static", "build");
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [join(here, "src", "terminal.js")],
  bundle: true,
  minify: true,
  format: "iife",
  target: "es2020",
  outfile: join(out, "terminal.js"),
  logLevel: "warning",
});
copyFileSync(join(here, "node_modules", "@xterm", "xterm", "css", "xterm.css"),
             join(out, "xterm.css"));

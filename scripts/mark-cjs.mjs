// dist/cjs sits inside a "type": "module" package, so Node needs to be told its files are CommonJS.
import { writeFileSync } from "node:fs"
writeFileSync(new URL("../dist/cjs/package.json", import.meta.url), JSON.stringify({ type: "commonjs" }) + "\n")

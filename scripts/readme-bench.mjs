// Copies the latest benchmark tables from bench/results/ into README.md, between the markers
// <!-- bench:NAME --> and <!-- /bench:NAME -->, so the README shows what the last run measured.
import { readFileSync, writeFileSync } from "node:fs"

const readme = new URL("../README.md", import.meta.url)
let text = readFileSync(readme, "utf8")
// `node scripts/readme-bench.mjs soak` copies only the tables named (npm run soak does).
const names = process.argv.length > 2 ? process.argv.slice(2) : ["idle", "fanout", "latency", "ceiling", "churn", "pool", "cluster"]
for (const name of names) {
  const results = readFileSync(new URL(`../bench/results/${name}.md`, import.meta.url), "utf8").trim()
  const pattern = new RegExp(`(<!-- bench:${name} -->\\n)[\\s\\S]*?(\\n<!-- /bench:${name} -->)`)
  if (!pattern.test(text)) throw new Error(`README.md has no <!-- bench:${name} --> block`)
  text = text.replace(pattern, `$1${results}$2`)
}
writeFileSync(readme, text)

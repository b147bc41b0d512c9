// Per-file mutation scores from Stryker's JSON report, as a markdown table:
//   node scripts/mutation-table.mjs reports/mutation/mutation.json
import { readFileSync } from "node:fs"
const report = JSON.parse(readFileSync(process.argv[2], "utf8"))
const rows = []
const total = { killed: 0, timeout: 0, survived: 0, noCoverage: 0 }
for (const [file, { mutants }] of Object.entries(report.files)) {
  const c = { killed: 0, timeout: 0, survived: 0, noCoverage: 0 }
  for (const m of mutants) {
    if (m.status === "Killed") c.killed++
    else if (m.status === "Timeout") c.timeout++
    else if (m.status === "Survived") c.survived++
    else if (m.status === "NoCoverage") c.noCoverage++
  }
  for (const k in c) total[k] += c[k]
  rows.push([file.replace(/^src\//, ""), c])
}
const line = (name, c) => {
  const detected = c.killed + c.timeout
  const all = detected + c.survived + c.noCoverage
  return `| ${name} | ${all} | ${c.killed} | ${c.timeout} | ${c.survived} | ${c.noCoverage} | ${(100 * detected / all).toFixed(1)}% | ${(100 * detected / (detected + c.survived)).toFixed(1)}% |`
}
console.log("| file | mutants | killed | timed out | survived | no coverage | score | score of covered |")
console.log("| --- | --- | --- | --- | --- | --- | --- | --- |")
for (const [f, c] of rows.sort()) console.log(line(`\`${f}\``, c))
console.log(line("**all**", total))

// Validate an AsyncAPI document with the AsyncAPI parser and its Avro schema parser.
// Usage: node deploy/asyncapi/validate.mjs docs/asyncapi.yaml   (prints the channels; exit 1 on any error)
import { readFileSync } from "node:fs";
import { Parser } from "@asyncapi/parser";
import { AvroSchemaParser } from "@asyncapi/avro-schema-parser";

const path = process.argv[2];
if (!path) {
  console.error("usage: node validate.mjs <asyncapi.yaml>");
  process.exit(2);
}
const parser = new Parser();
parser.registerSchemaParser(AvroSchemaParser());
const { document, diagnostics } = await parser.parse(readFileSync(path, "utf8"));
// severity 0 = error, 1 = warning, 2 = info, 3 = hint
const errors = diagnostics.filter((d) => d.severity === 0);
const warnings = diagnostics.filter((d) => d.severity === 1);
for (const d of [...errors, ...warnings]) {
  console.error(`${d.severity === 0 ? "error" : "warning"} ${d.code} at ${d.path.join(".")}: ${d.message}`);
}
if (!document || errors.length) {
  console.error(`${path}: INVALID (${errors.length} errors)`);
  process.exit(1);
}
const channels = document.channels().all().map((c) => c.address());
console.log(JSON.stringify({ valid: true, version: document.version(), channels, warnings: warnings.length }));

// The TypeScript SDK's MCP client for the node TLS test (tests/kernel/test_spy_node_tls.py): calls
// a streamable HTTP server and writes its own view of the exchange as JSON: its pid and the calls
// in the shape spy_client.py writes. Trusts a self-signed server through NODE_EXTRA_CA_CERTS.
//
//     node sdk_client.mjs REF.json URL N BIG_BYTES
import { writeFileSync } from "node:fs";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [out, url, n, big] = process.argv.slice(2);
const calls = [];
for (let i = 0; i < Number(n) - 1; i++) calls.push(["add", { a: i, b: 1 }]);
calls.push(["size", { blob: "x".repeat(Number(big)) }]);

const client = new Client({ name: "node-sdk-test-client", version: "1.0.0" });
await client.connect(new StreamableHTTPClientTransport(new URL(url)));
const ref = [{ method: "tools/list", tools: (await client.listTools()).tools.map((t) => t.name).sort() }];
for (const [name, args] of calls) {
  const r = await client.callTool({ name, arguments: args });
  ref.push({ method: "tools/call", tool: name, is_error: Boolean(r.isError), result: r.structuredContent ?? null });
}
await client.close();
writeFileSync(out, JSON.stringify({ pid: process.pid, exchange: ref }));

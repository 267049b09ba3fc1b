// Forwards every request to the daemon with a bearer token added.
//
// The conformance suite's client sends no credentials, and every plugind MCP
// server requires a token; this proxy stands in for a client configured with
// one. Host and Origin pass through untouched, so the daemon's own checks
// (DNS rebinding, Origin) still see what the suite sent.
//
// Usage: node auth-proxy.mjs TARGET_BASE_URL TOKEN
// Prints the port it listens on (127.0.0.1, chosen by the system).
import http from "node:http";

const [target, token] = process.argv.slice(2);
const upstream = new URL(target);

const server = http.createServer((req, res) => {
  const headers = { ...req.headers, authorization: `Bearer ${token}` };
  const forward = http.request(
    { host: upstream.hostname, port: upstream.port, path: req.url, method: req.method, headers },
    (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    },
  );
  forward.on("error", (e) => {
    if (!res.headersSent) res.writeHead(502, { "content-type": "text/plain" });
    res.end(String(e));
  });
  // A client that goes away ends the daemon's request too (cancellation).
  res.on("close", () => forward.destroy());
  req.pipe(forward);
});
server.listen(0, "127.0.0.1", () => console.log(server.address().port));

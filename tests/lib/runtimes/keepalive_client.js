// A pooled HTTP/1.1 client: Node.js's http.Agent({keepAlive: true}), one socket, reused.
//   node keepalive_client.js HOST PORT SPACINGS_JSON [METHOD] [pooled|fresh|tls]
// "fresh": a new connection per request (Connection: close), e.g. toward a proxy whose own
// upstream pool is under test. "tls": pooled over https.Agent (the certificate is not verified:
// the test's own self-signed one); when the server closes an idle connection (close_notify,
// FIN), Node's TLS socket answers with its own close_notify: a write after FIN, no request.
// Sends one request, then one after each spacing (seconds, measured from the previous
// response), and prints one JSON line per request: {"i", "status"|"error", "code", "local_port"}
// and a final {"done": true}. Node's own keepalive timeout is not involved: the socket is
// reused as long as Node has not seen the server close it.
"use strict";
const http = require("http");
const https = require("https");

const [host, port, spacingsJson, method = "GET", mode = "pooled"] = process.argv.slice(2);
const spacings = JSON.parse(spacingsJson);
const fresh = mode === "fresh";
const tls = mode === "tls";
const proto = tls ? https : http;
const agent = new proto.Agent({ keepAlive: !fresh, maxSockets: 1, keepAliveMsecs: 1000,
                                rejectUnauthorized: false });

function request(i) {
  return new Promise((resolve) => {
    const req = proto.request({ host, port: Number(port), method, path: "/", agent,
                               headers: Object.assign(method === "POST" ? { "Content-Length": 8 } : {},
                                                      fresh ? { Connection: "close" } : {}) }, (res) => {
      res.resume();
      res.on("end", () => resolve({ i, status: res.statusCode, local_port: req.socket && req.socket.localPort }));
    });
    req.on("error", (err) => resolve({ i, error: err.message, code: err.code,
                                       local_port: req.socket && req.socket.localPort }));
    req.setTimeout(10000, () => req.destroy(new Error("timeout")));
    if (method === "POST") req.write("rstwatch");
    req.end();
  });
}

(async () => {
  const sleep = (s) => new Promise((r) => setTimeout(r, s * 1000));
  console.log(JSON.stringify(await request(0)));
  for (let i = 0; i < spacings.length; i++) {
    await sleep(spacings[i]);
    console.log(JSON.stringify(await request(i + 1)));
  }
  console.log(JSON.stringify({ done: true }));
  agent.destroy();
})();

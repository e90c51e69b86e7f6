// A pooled HTTPS client: Node.js's https.Agent({keepAlive: true}), one socket, reused.
//   node tls_keepalive_client.js HOST PORT SPACINGS_JSON
// Like keepalive_client.js over TLS (certificate not verified: the test's own self-signed one).
// When the server closes an idle connection (close_notify, FIN), Node's TLS socket answers with
// its own close_notify: a write after the peer's FIN that carries no request.
"use strict";
const https = require("https");

const [host, port, spacingsJson] = process.argv.slice(2);
const spacings = JSON.parse(spacingsJson);
const agent = new https.Agent({ keepAlive: true, maxSockets: 1, rejectUnauthorized: false });

function request(i) {
  return new Promise((resolve) => {
    const req = https.request({ host, port: Number(port), method: "GET", path: "/", agent }, (res) => {
      res.resume();
      res.on("end", () => resolve({ i, status: res.statusCode, local_port: req.socket && req.socket.localPort }));
    });
    req.on("error", (err) => resolve({ i, error: err.message, code: err.code,
                                       local_port: req.socket && req.socket.localPort }));
    req.setTimeout(10000, () => req.destroy(new Error("timeout")));
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

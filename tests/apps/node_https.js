// Node.js HTTPS server and client (Node's TLS runs OpenSSL on memory BIOs:
// the ciphertext reaches the socket from libuv, outside any OpenSSL call).
//
//   node node_https.js serve CERT KEY PORT
//       GET /items/N -> 200 JSON, /missing -> 404, /fail -> 500;
//       prints "listening" once bound.
//   node node_https.js get N URL
//       N GETs of URL on one keep-alive connection (certificate not
//       verified); prints one JSON line: statuses and wall time per request.
'use strict';
const https = require('https');
const fs = require('fs');

const [mode, ...args] = process.argv.slice(2);

if (mode === 'serve') {
  const [cert, key, port] = args;
  const server = https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      if (req.url.startsWith('/items/')) {
        const out = JSON.stringify({ item: req.url.slice(7), got: body.length });
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(out) });
        res.end(out);
      } else if (req.url === '/fail') {
        res.writeHead(500);
        res.end('fail');
      } else {
        res.writeHead(404);
        res.end('missing');
      }
    });
  });
  server.keepAliveTimeout = 30000;
  server.listen(Number(port), '127.0.0.1', () => console.log('listening'));
} else if (mode === 'get') {
  const [n, url] = args;
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
  const out = [];
  const one = (i) => {
    if (i >= Number(n)) {
      agent.destroy();
      console.log(JSON.stringify(out));
      return;
    }
    const t0 = process.hrtime.bigint();
    https.get(url, { agent, rejectUnauthorized: false }, (res) => {
      res.resume();
      res.on('end', () => {
        out.push({ status: res.statusCode, ns: Number(process.hrtime.bigint() - t0) });
        one(i + 1);
      });
    }).on('error', (e) => { console.error(e); process.exit(1); });
  };
  one(0);
} else {
  console.error('usage: node_https.js serve CERT KEY PORT | get N URL');
  process.exit(2);
}

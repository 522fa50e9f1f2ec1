// Uploads from a real browser: headless Chromium opens a page on http://127.0.0.1:PAGE_PORT that
// uses tus-js-client (its browser build) to upload to ENDPOINT, another origin, so every request
// is a CORS request and PATCH/HEAD/DELETE go through preflights. For tests/interop.rs.
//
//   node browser_upload.mjs --page-port N ENDPOINT SIZE [--token T] [--chunk-size N]
//                           [--timeout SECONDS]
//
// The page builds SIZE bytes where byte i is (31 i + floor(i / 1024)) mod 251, uploads them as
// "from-browser.bin" in chunks, aborts after the first acknowledged chunk, then resumes the same
// upload URL (a HEAD, which needs Upload-Offset exposed) and finishes it.
//
// Prints exactly one JSON line on stdout and exits 0:
//   {"ok": true, "url": URL, "resumed_from": OFFSET}   or   {"ok": false, "error": TEXT}
// Exits 3 when the page reports nothing within --timeout (default 60 s), 2 on bad arguments.

import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import http from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    'page-port': { type: 'string' },
    token: { type: 'string' },
    'chunk-size': { type: 'string', default: '65536' },
    timeout: { type: 'string', default: '60' },
  },
})
const pagePort = Number(values['page-port'])
const size = Number(positionals[1])
const chunkSize = Number(values['chunk-size'])
if (positionals.length !== 2 || !Number.isSafeInteger(pagePort) || !Number.isSafeInteger(size)) {
  console.error('usage: node browser_upload.mjs --page-port N ENDPOINT SIZE [--token T] [--chunk-size N] [--timeout S]')
  process.exit(2)
}
const endpoint = positionals[0]

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>upload from a browser</title>
<script src="/tus.min.js"></script>
<script>
const p = new URLSearchParams(location.search)
const size = Number(p.get('size'))
const data = new Uint8Array(size)
for (let i = 0; i < size; i++) data[i] = (31 * i + Math.floor(i / 1024)) % 251
const blob = new Blob([data])
const report = (r) => fetch('/result', { method: 'POST', body: JSON.stringify(r) })

// One pass of tus-js-client: the first (no uploadUrl) stops after one acknowledged chunk.
function pass(uploadUrl) {
  return new Promise((resolve, reject) => {
    let stopped = false
    const upload = new tus.Upload(blob, {
      endpoint: p.get('endpoint'),
      uploadUrl,
      chunkSize: Number(p.get('chunk')),
      retryDelays: [],
      storeFingerprintForResuming: false,
      metadata: { filename: 'from-browser.bin' },
      headers: p.get('token') ? { Authorization: 'Bearer ' + p.get('token') } : {},
      onChunkComplete(_chunk, acked) {
        if (uploadUrl === null && !stopped) {
          stopped = true
          upload.abort().then(() => resolve({ url: upload.url, acked }))
        }
      },
      onSuccess: () => resolve({ url: upload.url, done: true }),
      onError: reject,
    })
    upload.start()
  })
}

pass(null)
  .then((first) => pass(first.url).then((second) =>
    report({ ok: second.done === true && second.url === first.url, url: second.url,
             resumed_from: first.acked })))
  .catch((e) => report({ ok: false, error: String(e) }))
</script>`

const tusBundle = readFileSync(new URL('./node_modules/tus-js-client/dist/tus.min.js', import.meta.url))
let browser = null
let profile = null

function finish(result, code) {
  if (result) console.log(JSON.stringify(result))
  const cleanUp = () => {
    try {
      if (profile) rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 })
    } catch (e) {
      console.error(`leaving ${profile}: ${e.message}`)
    }
    process.exit(code)
  }
  if (!browser) return cleanUp()
  // Chromium is a group of processes (browser, renderer, GPU, ...): kill the group and wait,
  // or they are still writing into the profile while it is removed.
  browser.removeAllListeners('exit')
  browser.on('exit', cleanUp)
  try {
    process.kill(-browser.pid, 'SIGKILL')
  } catch {
    cleanUp()
  }
}

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url.startsWith('/?')) {
    res.writeHead(200, { 'content-type': 'text/html' }).end(PAGE)
  } else if (req.method === 'GET' && req.url === '/tus.min.js') {
    res.writeHead(200, { 'content-type': 'text/javascript' }).end(tusBundle)
  } else if (req.method === 'POST' && req.url === '/result') {
    let body = ''
    req.on('data', (d) => { body += d })
    req.on('end', () => {
      res.writeHead(204).end()
      finish(JSON.parse(body), 0)
    })
  } else {
    res.writeHead(404).end()
  }
})

server.listen(pagePort, '127.0.0.1', () => {
  const query = new URLSearchParams({ endpoint, size, chunk: chunkSize, token: values.token ?? '' })
  profile = mkdtempSync(join(tmpdir(), 'upload-chromium-'))
  // The flags a root, offline, display-less machine needs; background networking off, or
  // Chromium keeps dialing Google's hosts.
  browser = spawn(process.env.CHROMIUM ?? 'chromium', [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    `--user-data-dir=${profile}`, `http://127.0.0.1:${pagePort}/?${query}`,
  ], { stdio: ['ignore', 'ignore', 'pipe'], detached: true })
  let stderr = ''
  browser.stderr.on('data', (d) => { stderr += d })
  browser.on('error', (e) => {
    console.error(`cannot start Chromium (apt-get install chromium): ${e.message}`)
    finish(null, 1)
  })
  browser.on('exit', (code) => {
    browser = null
    console.error(`Chromium exited (${code}) before the page reported:\n${stderr}`)
    finish(null, 1)
  })
})

setTimeout(() => {
  console.error(`the page reported nothing within ${values.timeout} s`)
  finish(null, 3)
}, Number(values.timeout) * 1000)

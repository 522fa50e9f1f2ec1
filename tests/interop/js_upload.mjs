// Uploads a file with the official tus client, tus-js-client (Node), for tests/interop.rs.
//
//   node js_upload.mjs ENDPOINT FILE [--chunk-size N] [--abort-after BYTES] [--resume-url URL]
//                      [--timeout SECONDS]
//
// Prints exactly one JSON line on stdout and exits 0:
//   done:     {"url": URL, "bytes": N, "resumed_from": OFFSET|null}
//             (resumed_from: the Upload-Offset of the HEAD answer when --resume-url was given)
//   aborted:  {"url": URL, "offset": BYTES_ACKNOWLEDGED, "aborted": true}
// On an error it prints the error on stderr and exits 1; past --timeout (default 45 s) it exits 3.
//
// Input: a fs.ReadStream that has a path. tus-js-client's Node FileReader then uses its
// FileSource, which opens a fresh read stream at [start, end) for every PATCH, so it can seek:
// resuming from any offset the server reports, and retrying a chunk, both read the right bytes.
// (A plain Readable without a path would go through StreamSource, which can only move forwards
// and only buffers one chunk; a Buffer would also work but holds the whole file in memory.)
//
// --abort-after BYTES: with --chunk-size, aborts in onChunkComplete once the server has
// acknowledged at least BYTES (so "offset" is the server's offset). Without --chunk-size the whole
// file goes in one PATCH and the abort happens in onProgress once BYTES were sent, cutting that
// PATCH in the middle; "offset" is then only the number of bytes sent, not acknowledged.

import { createReadStream } from 'node:fs'
import { basename } from 'node:path'
import { parseArgs } from 'node:util'
import * as tus from 'tus-js-client'

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    'chunk-size': { type: 'string' },
    'abort-after': { type: 'string' },
    'resume-url': { type: 'string' },
    timeout: { type: 'string', default: '45' },
  },
})
if (positionals.length !== 2) {
  console.error(
    'usage: node js_upload.mjs ENDPOINT FILE [--chunk-size N] [--abort-after BYTES] [--resume-url URL] [--timeout SECONDS]',
  )
  process.exit(2)
}
const [endpoint, file] = positionals

function integer(name) {
  const text = values[name]
  if (text === undefined) return undefined
  const n = Number(text)
  if (!Number.isSafeInteger(n) || n <= 0) {
    console.error(`--${name}: expected a positive integer, got ${JSON.stringify(text)}`)
    process.exit(2)
  }
  return n
}
const chunkSize = integer('chunk-size')
const abortAfter = integer('abort-after')
const timeoutSecs = integer('timeout')
const resumeUrl = values['resume-url']

const timer = setTimeout(() => {
  console.error(`js_upload: gave up after ${timeoutSecs} s`)
  process.exit(3)
}, timeoutSecs * 1000)

let resumedFrom = null
let aborted = false

const upload = new tus.Upload(createReadStream(file), {
  endpoint,
  uploadUrl: resumeUrl ?? null,
  metadata: { filename: basename(file) },
  ...(chunkSize !== undefined ? { chunkSize } : {}),
  // Short delays only: a test must neither hang nor wait long for a retry.
  retryDelays: [0, 250, 1000],
  storeFingerprintForResuming: false,
  onAfterResponse(req, res) {
    if (resumeUrl && resumedFrom === null && req.getMethod() === 'HEAD') {
      const offset = Number.parseInt(res.getHeader('Upload-Offset'), 10)
      if (!Number.isNaN(offset)) resumedFrom = offset
    }
  },
  onChunkComplete(_chunk, accepted) {
    if (abortAfter !== undefined && chunkSize !== undefined && accepted >= abortAfter) {
      stop(accepted)
    }
  },
  onProgress(sent) {
    if (abortAfter !== undefined && chunkSize === undefined && sent >= abortAfter) {
      stop(sent)
    }
  },
  onError(err) {
    clearTimeout(timer)
    console.error(`js_upload: ${err}`)
    process.exit(1)
  },
  onSuccess() {
    if (aborted) return
    clearTimeout(timer)
    const bytes = upload._size
    console.log(JSON.stringify({ url: upload.url, bytes, resumed_from: resumedFrom }))
    process.exit(0)
  },
})

function stop(offset) {
  if (aborted) return
  aborted = true
  upload.abort(false).then(() => {
    clearTimeout(timer)
    console.log(JSON.stringify({ url: upload.url, offset, aborted: true }))
    process.exit(0)
  })
}

upload.start()

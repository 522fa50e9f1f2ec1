// The official Node.js tus server (@tus/server with @tus/file-store), for tests/interop.rs.
//
//   node tus_server.mjs DIR
//
// Listens on 127.0.0.1 on a free port, serves tus at /files/, stores uploads in DIR (each upload
// as a file named by its id plus an `ID.json` sidecar), prints one line
// `listening on http://127.0.0.1:PORT/files/` once ready and runs until killed.

import { mkdirSync } from 'node:fs'
import { FileStore } from '@tus/file-store'
import { Server } from '@tus/server'

const dir = process.argv[2]
if (!dir) {
  console.error('usage: node tus_server.mjs DIR')
  process.exit(2)
}
mkdirSync(dir, { recursive: true })

const server = new Server({
  path: '/files',
  datastore: new FileStore({ directory: dir }),
})
server.on('POST_FINISH', (req, _res, upload) => {
  console.error(`tus_server: created ${upload.id} (${upload.size ?? 'deferred'} bytes)`)
})
server.on('POST_TERMINATE', (_req, _res, id) => {
  console.error(`tus_server: terminated ${id}`)
})

const http = server.listen({ host: '127.0.0.1', port: 0 }, () => {
  const { port } = http.address()
  console.log(`listening on http://127.0.0.1:${port}/files/`)
})
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0))
}

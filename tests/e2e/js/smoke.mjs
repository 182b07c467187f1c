// The official e2b JS SDK against sandport, pointed at it by the environment only
// (E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY). Prints what it saw as one JSON line;
// tests/e2e/test_e2b_js.py judges it.
import { Sandbox, CommandExitError } from 'e2b'

const seen = {}
const sb = await Sandbox.create('python', { timeoutMs: 120_000, metadata: { run: process.env.RUN } })
try {
  seen.info = await sb.getInfo()
  const chunks = []
  const done = await sb.commands.run('echo out; echo err >&2; printf %s "$GREETING"', {
    envs: { GREETING: 'hé' }, onStdout: (d) => chunks.push(d) })
  seen.run = { exitCode: done.exitCode, stdout: done.stdout, stderr: done.stderr,
               streamed: chunks.join('') }
  try {
    await sb.commands.run('echo before; exit 3')
    seen.exit = 'no error'
  } catch (err) {
    seen.exit = { isCommandExit: err instanceof CommandExitError, exitCode: err.exitCode,
                  stdout: err.stdout }
  }
  const bg = await sb.commands.run('sleep 600', { background: true })
  seen.listed = (await sb.commands.list()).map((p) => p.pid).includes(bg.pid)
  seen.killed = await sb.commands.kill(bg.pid)
  seen.killedAgain = await sb.commands.kill(bg.pid)
  const cat = await sb.commands.run('cat', { background: true, stdin: true })
  await sb.commands.sendStdin(cat.pid, 'to stdin\n')
  await sb.commands.closeStdin(cat.pid)
  seen.stdin = (await cat.wait()).stdout
  await sb.files.write('/tmp/js/a.txt', 'from js')
  seen.read = await sb.files.read('/tmp/js/a.txt')
  const bytes = new Uint8Array(1 << 20).map((_, i) => i % 251)
  await sb.files.write('/tmp/js/blob.bin', bytes.buffer)
  const back = await sb.files.read('/tmp/js/blob.bin', { format: 'bytes' })
  seen.blob = back.length === bytes.length && back.every((v, i) => v === bytes[i])
  seen.list = (await sb.files.list('/tmp/js')).map((e) => [e.name, e.type]).sort()
  seen.exists = [await sb.files.exists('/tmp/js/a.txt'), await sb.files.exists('/tmp/js/no')]
  seen.madeDir = [await sb.files.makeDir('/tmp/js/d'), await sb.files.makeDir('/tmp/js/d')]
  seen.renamed = (await sb.files.rename('/tmp/js/a.txt', '/tmp/js/d/b.txt')).path
  await sb.files.remove('/tmp/js/d')
  seen.removed = !(await sb.files.exists('/tmp/js/d'))
  const events = []
  const watcher = await sb.files.watchDir('/tmp/js', (e) => events.push([e.name, e.type]))
  await sb.files.write('/tmp/js/w.txt', 'w')
  for (let i = 0; i < 100 && !events.some(([n]) => n === 'w.txt'); i++) {
    await new Promise((r) => setTimeout(r, 100))
  }
  await watcher.stop()
  seen.watched = events.some(([n, t]) => n === 'w.txt' && t === 'create')
  const terminal = await sb.pty.create({ cols: 100, rows: 30, onData: () => {} })
  await sb.pty.resize(terminal.pid, { cols: 120, rows: 40 })
  seen.ptyKilled = await sb.pty.kill(terminal.pid)
  seen.host = sb.getHost(3000)
} finally {
  seen.kill = await sb.kill()
}
console.log(JSON.stringify(seen))

// Runs Python code under the MicroPython WebAssembly interpreter (a fresh instance per
// call: only the newest instance works). Input on stdin, JSON:
//   {"files": {"/path/name.py": "source", ...}, "path": ["/dir", ...], "code": "..."}
// Output on stdout, JSON: {"ok": bool, "stdout": "...", "error": "traceback or null"}.
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const job = JSON.parse(input);

let stdout = "";
const mp = await loadMicroPython({
  stdout: (line) => { stdout += line + "\n"; },
  stderr: (line) => { stdout += line + "\n"; },
});

function makeDirs(path) {
  let dir = "";
  for (const part of path.split("/").slice(1, -1)) {
    dir += "/" + part;
    try { mp.FS.mkdir(dir); } catch { /* exists */ }
  }
}

for (const [path, source] of Object.entries(job.files)) {
  makeDirs(path);
  mp.FS.writeFile(path, source);
}

let error = null;
try {
  mp.runPython(
    "import sys\n" +
    job.path.map((p) => `sys.path.insert(0, ${JSON.stringify(p)})\n`).reverse().join("") +
    job.code
  );
} catch (e) {
  error = e && e.message ? e.message : String(e);
}
process.stdout.write(JSON.stringify({ ok: error === null, stdout, error }));

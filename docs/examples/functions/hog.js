// hog.js: keeps every block it allocates; past the memory limit the call fails,
// and the next call starts again with a fresh context.
const kept = [];

(subject, payload) => {
  const mib = Number(new TextDecoder().decode(payload));
  for (let i = 0; i < mib; i++) kept.push(new Uint8Array(1024 * 1024));
  return `holding ${kept.length} MiB`;
}

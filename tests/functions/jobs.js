// The async example of docs/functions.md: one job a message, {"id": ..., "fail": n}.
// Counts its runs per job in the KV bucket "runs" and fails on purpose while the
// count is at most "fail", or while the key "broken" of the bucket "switches" is set.
// An async trigger runs it at least once, retries a failure with backoff and
// dead-letters it after max_attempts; the reply goes to the Nex-Reply-To subject.
async (subject, payload) => {
  const job = JSON.parse(new TextDecoder().decode(payload));
  const runs = nex.kv("runs");
  const count = ((await runs.get(job.id, "json")) ?? 0) + 1;
  await runs.put(job.id, count);
  if (count <= (job.fail ?? 0)) {
    throw new Error(`job ${job.id}: run ${count} fails on purpose`);
  }
  if (await nex.kv("switches").get("broken")) {
    throw new Error(`job ${job.id}: the function is switched to broken`);
  }
  return { id: job.id, runs: count };
}

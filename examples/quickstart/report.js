// A scheduled function: `--schedule 'reports.daily=0 6 * * *'` runs it at 06:00 UTC, once
// for the whole fleet, on the subject reports.daily.
(subject, payload) => {
  const at = new Date().toISOString();
  console.log(`daily report at ${at}`);
  return {report: "daily", at};
}

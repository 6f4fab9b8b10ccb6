// The schedule example of docs/functions.md: a scheduled trigger's payload is
// {"schedule": "<cron>", "time": "<fire time>"}; this announces each fire time
// on nex.default.ticks (the namespace's own subjects).
async (subject, payload) => {
  const fire = JSON.parse(new TextDecoder().decode(payload));
  nex.publish("nex.default.ticks", fire.time);
  return fire.time;
}

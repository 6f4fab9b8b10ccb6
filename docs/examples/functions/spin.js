// spin.js: never returns; the time limit stops it and the next call runs again.
(subject, payload) => {
  if (new TextDecoder().decode(payload) === "forever") for (;;) {}
  return "done";
}

// double.js: a thrown error is an error reply; the function stays deployed.
(subject, payload) => {
  const n = Number(new TextDecoder().decode(payload));
  if (n > 100) throw new RangeError(`too big: ${n}`);
  return String(n * 2);
}

// hello.js: greets whoever the payload names, with a word from the deploy's env.
(subject, payload) => {
  const name = new TextDecoder().decode(payload) || "world";
  console.log("called on", subject);                    // a line on the stdout log feed
  return { hello: name, from: env.WHO ?? "nobody" };    // an object is sent as JSON
}

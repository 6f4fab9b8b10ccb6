// hello.js: the function the Python examples deploy; greets whoever the payload names.
(subject, payload) => {
  const name = new TextDecoder().decode(payload) || "world";
  console.log("hello", name);                 // a line on the function's stdout log feed
  return { hello: name, on: subject };
}

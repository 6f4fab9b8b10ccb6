// broken.js: a syntax error is refused at deploy, with the line; nothing is deployed.
(subject, payload) => {
  return "hello " + subject;

(subject, payload) => {
  const name = new TextDecoder().decode(payload);
  console.log(`said hello to ${name}`);
  return {hello: name, on: subject};
}

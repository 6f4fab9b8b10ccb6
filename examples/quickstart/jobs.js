// An async function: `nex invoke --async orders.new '{"id": 42}' --key 42` puts the order in
// JetStream; the node runs this once per key, retries a failure and dead-letters the last.
(subject, payload) => {
  const order = JSON.parse(new TextDecoder().decode(payload));
  console.log(`order ${order.id} received on ${subject}`);
  return {accepted: order.id};
}

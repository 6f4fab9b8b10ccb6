// The example of docs/functions.md: a shopping cart per user in the namespace's KV
// bucket "carts". The payload is {"user": ..., "add": ...}; the reply is the cart.
// Every change is announced on nex.shop.cart.changed (the namespace's own subjects).
async (subject, payload) => {
  const { user, add } = JSON.parse(new TextDecoder().decode(payload));
  const carts = nex.kv("carts");
  const cart = (await carts.get(user, "json")) ?? [];
  if (add !== undefined) {
    cart.push(add);
    await carts.put(user, cart);
    nex.publish("nex.shop.cart.changed", { user, items: cart.length });  // sent even when not awaited
  }
  return cart;
}

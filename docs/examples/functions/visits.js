// visits.js: a declaration that ends with the function's name; the closure's state
// survives from one call to the next (until a call runs out of time or memory).
let visits = 0;

function handle(subject, payload) {
  visits += 1;
  return `visit ${visits}`;
}

handle

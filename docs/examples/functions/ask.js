// ask.js: asks another function, and says so when nobody answers in time.
async (subject, payload) => {
  try {
    const reply = await nex.request("nex.default.oracle", payload, { timeout: 300 });
    return `the oracle says: ${reply.text()}`;
  } catch (error) {
    if (error.code === "timeout" || error.code === "unavailable") return `no answer (${error.code})`;
    throw error;                                        // anything else is the call's error
  }
}

// A request nobody answers, not caught: the function's reply is the timeout error.
async (subject, payload) => (await nex.request("nex.a.silent", "anyone?", { timeout: 300 })).text()

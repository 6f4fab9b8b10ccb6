"""The fleet: desired state in JetStream KV, the app files users apply, and views of what runs."""

"""The controller's durable state: desired state, history, audit log."""

"""One worker: the event loop, chains, state, error policy, and the wallaroo-run launcher."""

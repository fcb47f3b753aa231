//! Handler tests (`oneshot`, no socket, no cluster).

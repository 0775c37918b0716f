//! The tokio driver for RainStorm nodes: UDP and TCP sockets, the OS clock, file-backed storage.

//! Hooks: the seam between the server and the application backend.

//! rota-updater (placeholder until its issue lands).

//! rota-bundle (placeholder until its issue lands).

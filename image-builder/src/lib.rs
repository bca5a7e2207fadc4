//! rota-image (placeholder until its issue lands).

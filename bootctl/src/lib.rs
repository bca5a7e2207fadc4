//! rota-bootctl (placeholder until its issue lands).

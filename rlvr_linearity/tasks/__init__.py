"""The demo's synthetic verifiable tasks (exact answers, seeded splits)."""

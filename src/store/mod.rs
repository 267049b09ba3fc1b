//! The store: sqlx models and queries over SQLite or PostgreSQL, with
//! migrations run at start-up.

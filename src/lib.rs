//! Owns the black-box tests in `tests/`.

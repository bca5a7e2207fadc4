-- A robot whose enrollment answer was lost (power cut before it stored the token) repeats the
-- request with the same secret nonce and gets a fresh token instead of a conflict.
ALTER TABLE robots ADD COLUMN enroll_nonce_hash TEXT;

"""Privacy guard: detectors for personal data and secrets, redaction, and the policy that applies them."""

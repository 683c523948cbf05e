"""``rules``: ordered, first-match-wins routing rules with a privacy guard (docs/rules-and-privacy.md)."""

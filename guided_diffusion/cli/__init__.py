"""Around every script: one-line errors, parsers, flag ranges, settings resolved once, atomic files."""

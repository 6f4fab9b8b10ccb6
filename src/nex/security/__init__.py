"""Trust: issuer keys and claim checks, xkeys and sealed environments, key files."""
